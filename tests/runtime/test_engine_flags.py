"""Engine flags generated from EngineArgs: spellings, types, help, JSON, and the round trip
through `to_cli_args`."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from octavo.runtime.config import DEFAULT_NUM_SPECULATIVE_TOKENS, AsyncEngineArgs, EngineArgs
from octavo.runtime.engine_flags import add_engine_args, engine_args_from_namespace

REPO = Path(__file__).resolve().parents[2]


def parser_for(cls=EngineArgs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_engine_args(parser, cls)
    return parser


def parse(argv, cls=EngineArgs):
    return engine_args_from_namespace(parser_for(cls).parse_args(argv), cls)


def other_value(flag):
    """A value of the flag's type that is not its default."""
    if flag.type is bool:
        return not flag.default
    if flag.choices:
        return next(choice for choice in flag.choices if choice != flag.default)
    if flag.type is int:
        return (flag.default or 0) + 3
    return {float: 0.5, str: "some/value", dict: {"method": "ngram", "num_speculative_tokens": 3}}[flag.type]


FLAGS = AsyncEngineArgs.cli_flags()


def test_every_public_field_is_a_flag_but_the_declared_exceptions():
    fields = {f.name: f for f in dataclasses.fields(AsyncEngineArgs)}
    not_flags = set(fields) - {flag.name for flag in FLAGS}
    assert not_flags == {"served_model_name", "extra"}
    assert all(fields[name].metadata["cli"] is False for name in not_flags)
    assert {"trust_remote_code", "enable_chunked_prefill", "speculative_config", "ngram_prompt_lookup_max",
            "ngram_prompt_lookup_min", "disable_log_requests"} <= {flag.name for flag in FLAGS}


def test_defaults_are_the_dataclass_defaults():
    assert parse([]) == EngineArgs()
    assert parse([], AsyncEngineArgs) == AsyncEngineArgs()
    assert EngineArgs().to_cli_args() == [] and AsyncEngineArgs().to_cli_args() == []


@pytest.mark.parametrize("flag", FLAGS, ids=lambda flag: flag.name)
def test_each_flag_round_trips_in_both_spellings(flag):
    args = AsyncEngineArgs(**{flag.name: other_value(flag)})
    argv = args.to_cli_args()
    assert argv[0] in (flag.option, "--no-" + flag.option[2:])
    assert parse(argv, AsyncEngineArgs) == args
    # vLLM's underscore spelling (--gpu_memory_utilization, --no_enable_prefix_caching) means the same.
    snake = [argv[0].replace("-", "_").replace("__", "--", 1)] + argv[1:]
    assert parse(snake, AsyncEngineArgs) == args


def test_all_flags_at_once_round_trip():
    args = AsyncEngineArgs(**{flag.name: other_value(flag) for flag in FLAGS})
    assert parse(args.to_cli_args(), AsyncEngineArgs) == args


def test_vllm_spellings():
    args = parse(["--model", "m", "-tp", "2", "--enforce-eager", "--no-enable-prefix-caching",
                  "--gpu_memory_utilization", "0.8", "--max_num_seqs=8", "--trust-remote-code",
                  "--no-enable-chunked-prefill", "--ngram-prompt-lookup-max", "3", "--ngram-prompt-lookup-min", "2"])
    assert (args.model, args.tensor_parallel_size, args.enforce_eager, args.enable_prefix_caching) == ("m", 2, True, False)
    assert (args.gpu_memory_utilization, args.max_num_seqs, args.trust_remote_code) == (0.8, 8, True)
    assert (args.enable_chunked_prefill, args.ngram_prompt_lookup_max, args.ngram_prompt_lookup_min) == (False, 3, 2)
    assert parse(["--enable_prefix_caching"]).enable_prefix_caching is True
    assert parse(["--no_enable_prefix_caching"]).enable_prefix_caching is False
    assert parse(["--tensor-parallel-size", "4"]).tensor_parallel_size == 4


def test_speculative_config_takes_json():
    args = parse(["--speculative-config", '{"model": "draft", "num_speculative_tokens": 4}'])
    assert args.speculative_config == {"model": "draft", "num_speculative_tokens": 4}
    assert args.speculative_settings()["model"] == "draft"
    assert parse(["--speculative_config", '{"method": "ngram"}']).speculative_settings()["method"] == "ngram"


@pytest.mark.parametrize("text, message", [
    ("{model: draft}", "not valid JSON (Expecting property name enclosed in double quotes, column 2)"),
    ("{'model': 'draft'}", "not valid JSON"),
    ("[1, 2]", "must be a JSON object ({...}), got list"),
])
def test_bad_json_is_a_clear_usage_error(capsys, text, message):
    with pytest.raises(SystemExit) as exc:
        parse(["--speculative-config", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --speculative-config: " in err and message in err


@pytest.mark.parametrize("argv", [["--dtype", "fp8"], ["--block-size", "7"], ["--load-format", "pt"],
                                  ["--max-num-seqs", "many"], ["--gpu-memory-utilization", "most"]])
def test_types_and_choices_are_enforced(argv):
    with pytest.raises(SystemExit):
        parse(argv)


def test_help_lists_every_flag_with_its_default():
    text = " ".join(parser_for(AsyncEngineArgs).format_help().split())  # unwrapped
    for flag in FLAGS:
        assert flag.option in text
        # A default of None is no answer: such a flag's help says what unset means.
        assert f"(default: {flag.default})" in text if flag.default is not None else "unset: " in flag.help
    assert "--no-enable-prefix-caching" in text and "-tp TENSOR_PARALLEL_SIZE" in text
    assert "--gpu_memory_utilization" not in text  # the underscore spellings work but are not listed
    assert f"unset: {DEFAULT_NUM_SPECULATIVE_TOKENS}" in text


def test_a_field_is_a_flag_only_with_help_and_a_flag_type():
    @dataclasses.dataclass
    class NoHelp(EngineArgs):
        new_setting: int = 3

    with pytest.raises(TypeError, match="new_setting has no help text"):
        add_engine_args(argparse.ArgumentParser(), NoHelp)

    @dataclasses.dataclass
    class SetField(EngineArgs):
        names: set = dataclasses.field(default_factory=set, metadata={"help": "names"})

    with pytest.raises(TypeError, match="names: a flag holds one of"):
        SetField.cli_flags()


def test_a_non_flag_field_set_is_an_error_not_a_silent_loss():
    with pytest.raises(ValueError, match="served_model_name is no flag .*--served-model-name"):
        EngineArgs(served_model_name="x").to_cli_args()
    with pytest.raises(ValueError, match="cannot be written as a flag"):
        dataclasses.replace(EngineArgs(), tensor_parallel_size=None).to_cli_args()


def test_importing_the_flags_imports_no_torch():
    code = ("import argparse, sys\n"
            "from octavo.runtime.engine_flags import add_engine_args\n"
            "from octavo import EngineArgs, AsyncEngineArgs\n"
            "add_engine_args(argparse.ArgumentParser(), AsyncEngineArgs)\n"
            "AsyncEngineArgs(model='m', max_num_seqs=8).to_cli_args()\n"
            "from octavo.runtime.server import cli\n"  # `octavo serve`'s parser
            "cli.add_arguments(argparse.ArgumentParser())\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, cwd=REPO)
    assert out.stdout.strip() == "False"
