"""`octavo serve`'s command line as a drop-in for `vllm serve`: every flag from one generator with
help and its default, vLLM's spellings (dashes, underscores, --flag=false, -tp), --config YAML
under the command line, vLLM flags octavo takes without effect (logged) or refuses in one line,
unknown flags in one line, the API key from VLLM_API_KEY, the runtime image's entrypoint."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    from octavo.cli import build_parser, expand_argv

    return build_parser().parse_args(expand_argv(["serve", *argv]))


def serve_exit(capsys, *argv: str) -> tuple[int, str]:
    """octavo serve's exit code and stderr, for command lines that stop before serving."""
    from octavo.cli import main

    try:
        code = main(["serve", *argv, "--log-level", "critical"])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_every_listed_flag_has_help_and_its_default():
    from octavo.runtime.server import cli

    parser = argparse.ArgumentParser(prog="octavo serve")
    cli.add_arguments(parser)
    listed = [action for action in parser._actions if action.help != argparse.SUPPRESS
              and not isinstance(action, argparse._HelpAction)]
    assert len(listed) > 50
    for action in listed:
        assert action.help, action.option_strings
        help_text = action.help
        assert "(default:" in help_text or "unset" in help_text, (action.option_strings, help_text)
    text = " ".join(parser.format_help().split())
    for shown in ("--port PORT TCP port (default: 8000)", "--served-model-name NAME [NAME ...]",
                  "--api-key KEY [KEY ...]", "--generation-config GENERATION_CONFIG", "(default: auto)",
                  "--metrics-prefix METRICS_PREFIX", "--swap-space SWAP_SPACE vLLM's; accepted"):
        assert shown in text, shown


def test_the_first_seeds_command_line_parses():
    """`python -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --port 8888 --model X`,
    the module renamed, and the flags it failed on."""
    from octavo.runtime.server.__main__ import main  # noqa: F401 (the module the command runs)
    from octavo.runtime.server.cli import _check, engine_args

    args = parse("--host", "127.0.0.1", "--port", "8888", "--model", "m", "--trust-remote-code",
                 "--speculative-config", '{"model": "d", "num_speculative_tokens": 3}', "--chat-template",
                 "{{ messages }}", "--generation-config", "vllm", "--enable-chunked-prefill", "--disable-log-requests",
                 "--uvicorn-log-level", "warning", "--gpu_memory_utilization", "0.8")
    assert _check(args) is None
    ea = engine_args(args)
    assert (ea.model, ea.trust_remote_code, ea.speculative_config["num_speculative_tokens"]) == ("m", True, 3)
    assert (ea.enable_chunked_prefill, ea.disable_log_requests, ea.gpu_memory_utilization) == (True, True, 0.8)
    assert (args.port, args.uvicorn_log_level, args.generation_config) == (8888, "warning", "vllm")


def test_bool_assignments_as_kubeai_writes_them():
    from octavo.runtime.server.cli import engine_args

    assert engine_args(parse("m", "--enable-chunked-prefill=false")).enable_chunked_prefill is False
    assert engine_args(parse("m", "--enable_prefix_caching=False")).enable_prefix_caching is False
    assert engine_args(parse("m", "--enforce-eager=true")).enforce_eager is True
    assert parse("m", "--allow-credentials=yes").allow_credentials is True


def test_config_file_sits_under_the_command_line(tmp_path):
    from octavo.runtime.server.cli import _check, api_keys, engine_args

    config = tmp_path / "serve.yaml"
    config.write_text("model: some/model\nport: 6379\nuvicorn-log-level: warning\nmax_num_seqs: 4\n"
                      "enable-prefix-caching: false\napi-key: [a, b]\nspeculative-config: {method: ngram}\n")
    args = parse("--config", str(config), "--port", "9000")
    assert _check(args) is None
    ea = engine_args(args)
    assert (ea.model, ea.max_num_seqs, ea.enable_prefix_caching) == ("some/model", 4, False)
    assert (args.port, args.uvicorn_log_level, api_keys(args)) == (9000, "warning", ["a", "b"])  # the flag wins
    assert ea.speculative_config == {"method": "ngram"}
    assert parse(f"--config={config}").port == 6379


def test_config_file_errors_are_one_line(capsys, tmp_path):
    for text, message in (("- a\n- b\n", "must be a mapping"), ("a: [", "not valid YAML")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        code, err = serve_exit(capsys, "--config", str(bad))
        assert code != 0 and message in str(code) + err
    code, err = serve_exit(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert "cannot read it" in str(code) + err


@pytest.mark.parametrize("argv, message", [
    (["--kv-cache-dtype", "fp8"], "--kv-cache-dtype fp8 is not supported: octavo's KV cache holds the model's dtype"),
    (["--quantization=awq"], "--quantization awq is not supported"),
    (["-q", "fp8"], "--quantization fp8 is not supported"),
    (["--enable-lora"], "--enable-lora is not supported: octavo serves no LoRA adapters"),
    (["--max_loras", "4"], "--max-loras 4 is not supported"),
    (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size 2 is not supported"),
    (["--num-scheduler-steps=10"], "--num-scheduler-steps 10 is not supported"),
    (["--tool-parser-plugin", "my_parser.py"], "--tool-parser-plugin my_parser.py is not supported"),
    (["--tool-call-parser", "mistral"], "--tool-call-parser mistral is not supported: octavo has hermes, llama3_json"),
    (["--tool-call-parser", "nonsense"], "--tool-call-parser nonsense is not a tool call parser"),
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice requires --tool-call-parser"),
    (["--attention-backend", "FLASH_ATTN"], "--attention-backend FLASH_ATTN is not supported"),
])
def test_a_vllm_flag_for_a_missing_feature_stops_in_one_line(capsys, argv, message):
    code, err = serve_exit(capsys, "some/model", *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("octavo serve: ") and message in err, err
    assert "usage:" not in err


def test_neutral_values_of_missing_features_pass():
    from octavo.runtime.server.cli import _check

    args = parse("m", "--kv-cache-dtype", "auto", "-pp", "1", "--num-scheduler-steps", "1", "--no-enable-lora",
                 "--distributed-executor-backend", "mp", "--tokenizer-mode", "auto", "--task", "generate")
    assert _check(args) is None


@pytest.mark.parametrize("argv, message", [
    (["--frobnicate", "3"], "unrecognized argument(s) --frobnicate 3: not a flag octavo knows"),
    (["--load-format", "pt"], "argument --load-format: 'pt' is not supported; choose one of auto, safetensors, dummy"),
    (["--max-num-seqs", "many"], "argument --max-num-seqs: invalid int value: 'many'"),
    (["--metrics-prefix", "not a name"], "--metrics-prefix must be a Prometheus name"),
    (["--chat-template", "templates/missing.jinja"], "looks like a file path, but there is no such file"),
    (["--generation-config", "/nowhere"], "no generation_config.json there"),
    (["--ssl-keyfile", "k.pem"], "TLS needs both --ssl-keyfile and --ssl-certfile"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    code, err = serve_exit(capsys, "some/model", *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert "usage:" not in err


def test_accepted_vllm_flags_change_nothing_and_are_logged(caplog):
    from octavo.runtime.server import vllm_flags
    from octavo.runtime.server.cli import _check, engine_args

    args = parse("m", "--swap-space", "8", "--max-seq-len-to-capture", "8192", "--disable-custom-all-reduce",
                 "--enable-tokenizer-info-endpoint", "--disable-log-requests", "--use-v2-block-manager")
    assert _check(args) is None
    assert engine_args(args) == engine_args(parse("m", "--disable-log-requests"))
    notes = vllm_flags.accepted_notes(args)
    assert len(notes) == 4 and any(note.startswith("--swap-space accepted without effect") for note in notes)
    # -O (compilation_config) is an engine flag: a level is kept and ignored, cudagraph_mode is read.
    assert engine_args(parse("m", "-O", "3")).compilation_config == {"level": 3}


def test_python_m_entry_point_exits_2_in_one_line():
    out = subprocess.run([sys.executable, "-m", "octavo.runtime.server", "m", "--kv-cache-dtype", "fp8"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "octavo serve: --kv-cache-dtype fp8 is not supported: octavo's KV cache holds the model's dtype; "
        "pass auto or drop the flag"]


def test_explicit_float16_on_a_cpu_is_logged(caplog):
    import torch

    from octavo.runtime.config import resolve_dtype

    with caplog.at_level(logging.WARNING, logger="octavo"):
        assert resolve_dtype("half", "float32", torch.device("cpu")) == torch.float16
    assert any("running float16 on a CPU" in r.getMessage() and "float32" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="octavo"):
        resolve_dtype("bfloat16", "float32", torch.device("cpu"))
    assert not caplog.records


def test_runtime_image_serves_on_all_interfaces_and_takes_vllm_arguments():
    """`docker run IMAGE MODEL --flags` replaces CMD: nothing the server needs may live there."""
    text = (REPO / "docker" / "Dockerfile.runtime").read_text()
    assert re.search(r'^ENTRYPOINT \["octavo", "serve"\]$', text, re.M)
    assert not re.search(r"^CMD ", text, re.M)
    assert re.search(r"^\s+OCTAVO_HOST=0\.0\.0\.0 \\$", text, re.M)


def test_the_readmes_vllm_command_lines_parse_and_check():
    """README's drop-in section shows these running; each parses and passes every pre-start check."""
    import shlex

    from octavo.cli import build_parser, expand_argv
    from octavo.runtime.server import __main__ as module_entry
    from octavo.runtime.server.cli import _check

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The server: a drop-in for `vllm serve`"):]
    block = section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]
    lines = [line for line in block.splitlines() if line.startswith(("octavo serve", "python -m octavo"))]
    assert len(lines) >= 7
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "octavo":
            args = build_parser().parse_args(expand_argv(argv[1:]))
        else:
            parser = argparse.ArgumentParser(prog="python -m octavo.runtime.server")
            module_entry.cli.add_arguments(parser)
            args = parser.parse_args(module_entry.cli.expand_argv(argv[3:]))
        if "--chat-template" in line:  # a file the example assumes
            args.chat_template = "{{ messages }}"
        assert _check(args) is None, line


def test_server_flags_reach_uvicorn(tmp_path):
    from octavo.runtime.server.cli import _check, uvicorn_config

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    args = parse("m", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--root-path", "/llm",
                 "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log", "--host", "::", "--port", "9001")
    assert _check(args) is None
    config = uvicorn_config(object(), args)
    assert (config.ssl_keyfile, config.ssl_certfile) == (str(key), str(cert))
    assert (config.root_path, config.access_log, config.host, config.port) == ("/llm", False, "::", 9001)
    assert config.log_level == "warning"
    assert uvicorn_config(object(), parse("m", "--uds", "/tmp/octavo.sock")).uds == "/tmp/octavo.sock"


def test_the_event_loop_and_http_parser_follow_uvicorns_choices(monkeypatch):
    """auto takes uvloop and httptools when installed (both are dependencies on Linux), asyncio
    and h11 when asked; asking for a missing uvloop fails instead of quietly taking asyncio."""
    import asyncio

    from octavo.runtime.server.cli import event_loop_factory, uvicorn_config

    assert event_loop_factory("asyncio") is None
    uvloop = pytest.importorskip("uvloop")
    assert event_loop_factory("auto") is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop_factory("auto") is None
    with pytest.raises(ImportError):
        event_loop_factory("uvloop")
    assert uvicorn_config(object(), parse("m")).http == "auto"
    assert uvicorn_config(object(), parse("m", "--uvicorn-http", "h11")).http == "h11"


def test_tool_calling_flags_reach_the_server_settings():
    from octavo.runtime.server.cli import _check, server_settings

    args = parse("m", "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    assert _check(args) is None
    settings = server_settings(args)
    assert settings.enable_auto_tool_choice is True and settings.tool_call_parser == "hermes"
    assert server_settings(parse("m")).tool_call_parser is None
