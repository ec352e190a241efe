"""Flags from one source: the fields of EngineArgs (and of the server's ServerArgs) become
argparse arguments.

Every command that takes engine settings (`octavo serve`, the bench launcher) calls
`add_engine_args`, and `EngineArgs.to_cli_args()` writes the same flags back, so a field added to
EngineArgs is a flag everywhere and no command can emit a flag the server lacks. Spellings
follow vLLM: `--max-num-seqs`, also `--max_num_seqs` (production-stack's chart passes those);
a bool is `--name` / `--no-name` (and `--name=true|false`, which KubeAI's manifests write: see
`bool_assignments`); a dict is one JSON argument; a list is one or more strings, or one JSON list
(vLLM's `--allowed-origins '["https://a"]'`).

Imports no torch: the operator builds its command lines with it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

from octavo.runtime.config import CliArgs, EngineArgs, EngineFlag

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def add_engine_args(parser: argparse.ArgumentParser, cls: type[CliArgs] = EngineArgs, title: str = "engine",
                    description: str = "the engine's settings (EngineArgs); each flag also takes its underscore "
                                       "spelling, e.g. --max_num_seqs") -> None:
    """One flag per `cls.cli_flags()`: type, default and choices from the dataclass, help from
    the field's metadata, the default shown in --help. Underscore spellings are accepted but
    not listed."""
    group = parser.add_argument_group(title, description)
    for flag in cls.cli_flags():
        kwargs = _argument(flag)
        action = group.add_argument(flag.option, *flag.aliases, dest=flag.name, default=flag.default, **kwargs)
        # Set after construction: argparse versions differ in what BooleanOptionalAction adds to help.
        # A flag whose default is None says in its help what unset means.
        shown = flag.default if not isinstance(flag.default, list) else " ".join(flag.default) or "none"
        action.help = flag.help.replace("%", "%%") + ("" if flag.default is None else f" (default: {shown})")
        if "_" in flag.name:
            _add_underscore_spelling(group, flag, kwargs)


def engine_args_from_namespace(ns: argparse.Namespace, cls: type[CliArgs] = EngineArgs) -> CliArgs:
    """The `cls` that parsed flags describe; a flag missing from `ns` keeps its default."""
    return cls(**{flag.name: getattr(ns, flag.name) for flag in cls.cli_flags() if hasattr(ns, flag.name)})


def bool_assignments(argv: list[str], names: Iterable[str]) -> list[str]:
    """`--name=false` -> `--no-name`, `--name=true` -> `--name` for the boolean flags `names`
    (either spelling). A separate value (`--name false`) stays as it is: it could be a positional."""
    negations = {}
    for name in names:
        kebab = name.replace("_", "-")
        negations[f"--{kebab}"] = f"--no-{kebab}"
        negations[f"--{name}"] = f"--no_{name}" if "_" in name else f"--no-{name}"
    out = []
    for arg in argv:
        option, eq, value = arg.partition("=")
        if eq and option in negations:
            if value.lower() in _TRUE:
                arg = option
            elif value.lower() in _FALSE:
                arg = negations[option]
        out.append(arg)
    return out


def _argument(flag: EngineFlag) -> dict:
    kwargs: dict = {"metavar": flag.metavar} if flag.metavar else {}
    if flag.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    if flag.type is dict:
        return {"type": _json_object(flag.option, flag.int_key), "metavar": flag.metavar or "JSON"}
    if flag.type is list:
        return {**kwargs, "nargs": "+", "action": _ListAction}
    if flag.choices:
        # A value outside the choices names what is supported, in one line (argparse's own
        # message prints the choices as a Python list).
        return {**kwargs, "type": _choice(flag), "metavar": flag.metavar or "{" + ",".join(map(str, flag.choices)) + "}"}
    return {**kwargs, "type": flag.type}


class _ListAction(argparse.Action):
    """Strings, or one JSON list of strings (vLLM's form for --allowed-origins and friends)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lstrip().startswith("["):
            try:
                parsed = json.loads(values[0])
            except json.JSONDecodeError as exc:
                parser.error(f"argument {option_string}: not a JSON list ({exc.msg}): {values[0]!r}")
            if not isinstance(parsed, list):
                parser.error(f"argument {option_string}: must be strings or a JSON list, got {values[0]!r}")
            values = [str(v) for v in parsed]
        setattr(namespace, self.dest, list(values))


def _choice(flag: EngineFlag):
    def parse(text: str):
        for choice in flag.choices:
            if text == str(choice):
                return choice
        raise argparse.ArgumentTypeError(f"{text!r} is not supported; choose one of "
                                         f"{', '.join(map(str, flag.choices))}")

    parse.__name__ = flag.option
    return parse


def _add_underscore_spelling(group: argparse._ArgumentGroup, flag: EngineFlag, kwargs: dict) -> None:
    # default=SUPPRESS: only the listed flag sets the default, so the two spellings never fight.
    hidden = {"dest": flag.name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    if flag.type is bool:
        group.add_argument(f"--{flag.name}", action="store_const", const=True, **hidden)
        group.add_argument(f"--no_{flag.name}", action="store_const", const=False, **hidden)
    else:
        group.add_argument(f"--{flag.name}", **kwargs, **hidden)


def _json_object(option: str, int_key: str | None = None):
    def parse(text: str) -> dict:
        if int_key and text.strip().isdigit():
            return {int_key: int(text)}
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
