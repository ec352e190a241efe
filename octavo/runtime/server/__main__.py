"""`python -m octavo.runtime.server [MODEL] ...`: the same as `octavo serve` (where a chart ran
`python3 -m vllm.entrypoints.openai.api_server ...`, only the module name changes)."""

from __future__ import annotations

import sys

from octavo.cli import OneLineErrorParser
from octavo.runtime.server import cli


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m octavo.runtime.server",
                                description="serve a model behind an OpenAI-compatible HTTP API")
    cli.add_arguments(parser)
    args, unknown = parser.parse_known_args(cli.expand_argv(sys.argv[1:] if argv is None else list(argv)))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
