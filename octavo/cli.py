"""The `octavo` command. Each subcommand lives in its own module, imported only when chosen,
so `octavo check-pair` or `octavo operator` start without loading the model runtime.

A subcommand module exposes `add_arguments(parser)` (must import nothing heavy) and
`run(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("octavo.runtime.server.cli", "serve a model behind an OpenAI-compatible HTTP API"),
    "check-pair": ("octavo.operator.check_pair", "check that a draft model's vocabulary matches a target's"),
    "bench": ("octavo.bench.cli", "latency, throughput and serving benchmarks"),
    "operator": ("octavo.operator.cli", "run the Kubernetes operator (kopf)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="octavo", description="LLM serving on Kubernetes.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # subcommand not built yet
            raise
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from octavo import __version__

        print(__version__)
        return 0
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
