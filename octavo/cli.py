"""The `octavo` command. Each subcommand lives in its own module, imported only when chosen,
so `octavo check-pair` or `octavo operator` start without loading the model runtime.

A subcommand module exposes `add_arguments(parser)` (must import nothing heavy) and
`run(args) -> int` (the exit code), and may expose `expand_argv(argv) -> argv`, applied to its
arguments before parsing (`octavo serve` inlines --config files there).

Usage errors are one line on stderr, naming the fix, and exit 2: never a usage dump.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("octavo.runtime.server.cli", "serve a model behind an OpenAI-compatible HTTP API"),
    "check-pair": ("octavo.operator.check_pair", "check that a draft model's vocabulary matches a target's"),
    "fetch-model": ("octavo.operator.fetch_model", "fetch hf:// models into a directory (the model cache)"),
    "bench": ("octavo.bench.cli", "latency, throughput and serving benchmarks"),
    "operator": ("octavo.operator.cli", "run the Kubernetes operator (kopf)"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with its errors as one line that points at --help instead of a usage dump."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            flags = message.removeprefix("unrecognized arguments: ")
            message = f"unrecognized argument(s) {flags}: not a flag octavo knows (neither its own nor vLLM's)"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="octavo", description="LLM serving on Kubernetes.")
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
        sub.set_defaults(_module=module, _parser=sub)
    return parser


def expand_argv(argv: list[str]) -> list[str]:
    """The subcommand's own argument rewriting (`expand_argv` in its module), if it has one."""
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        if hasattr(module, "expand_argv"):
            return [argv[0], *module.expand_argv(argv[1:])]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(expand_argv(sys.argv[1:] if argv is None else list(argv)))
    if unknown:  # the subcommand's parser says it, pointing at its own --help
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
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
