"""`python -m octavo.runtime.server [MODEL] ...`: the same as `octavo serve`."""

from __future__ import annotations

import argparse
import sys

from octavo.runtime.server import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m octavo.runtime.server",
                                     description="serve a model behind an OpenAI-compatible HTTP API")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
