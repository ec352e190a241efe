"""Engine flags from one source: EngineArgs' fields become argparse arguments.

Every command that takes engine settings (`octavo serve`, the bench launcher) calls
`add_engine_args`, and `EngineArgs.to_cli_args()` writes the same flags back, so a field added to
EngineArgs is a flag everywhere and no command can emit a flag the server lacks. Spellings
follow vLLM: `--max-num-seqs`, also `--max_num_seqs` (production-stack's chart passes those);
a bool is `--name` / `--no-name`; a dict is one JSON argument.

Imports no torch: the operator builds its command lines with it.
"""

from __future__ import annotations

import argparse
import json

from octavo.runtime.config import EngineArgs, EngineFlag


def add_engine_args(parser: argparse.ArgumentParser, cls: type[EngineArgs] = EngineArgs) -> None:
    """One flag per `cls.cli_flags()`: type, default and choices from the dataclass, help from
    the field's metadata, the default shown in --help. Underscore spellings are accepted but
    not listed."""
    group = parser.add_argument_group(
        "engine", "the engine's settings (EngineArgs); each flag also takes its underscore spelling, "
                  "e.g. --max_num_seqs")
    for flag in cls.cli_flags():
        kwargs = _argument(flag)
        action = group.add_argument(flag.option, *flag.aliases, dest=flag.name, default=flag.default, **kwargs)
        # Set after construction: argparse versions differ in what BooleanOptionalAction adds to help.
        # A flag whose default is None says in its help what unset means.
        action.help = flag.help.replace("%", "%%") + ("" if flag.default is None else " (default: %(default)s)")
        if "_" in flag.name:
            _add_underscore_spelling(group, flag, kwargs)


def engine_args_from_namespace(ns: argparse.Namespace, cls: type[EngineArgs] = EngineArgs) -> EngineArgs:
    """The `cls` that parsed flags describe; a flag missing from `ns` keeps its default."""
    return cls(**{flag.name: getattr(ns, flag.name) for flag in cls.cli_flags() if hasattr(ns, flag.name)})


def _argument(flag: EngineFlag) -> dict:
    if flag.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    if flag.type is dict:
        return {"type": _json_object(flag.option), "metavar": "JSON"}
    kwargs: dict = {"type": flag.type}
    if flag.choices:
        kwargs["choices"] = flag.choices
    return kwargs


def _add_underscore_spelling(group: argparse._ArgumentGroup, flag: EngineFlag, kwargs: dict) -> None:
    # default=SUPPRESS: only the listed flag sets the default, so the two spellings never fight.
    hidden = {"dest": flag.name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    if flag.type is bool:
        group.add_argument(f"--{flag.name}", action="store_const", const=True, **hidden)
        group.add_argument(f"--no_{flag.name}", action="store_const", const=False, **hidden)
    else:
        group.add_argument(f"--{flag.name}", **kwargs, **hidden)


def _json_object(option: str):
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(
                f"not valid JSON ({exc.msg}, column {exc.colno}): {text!r}; write a JSON object with double-quoted "
                f"keys and strings, quoted for the shell: {option} '{{\"key\": \"value\"}}'") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {type(value).__name__}: {text!r}")
        return value

    parse.__name__ = "JSON object"  # what argparse names in its own errors
    return parse
