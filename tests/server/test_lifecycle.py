"""Client disconnects abort requests and free their KV blocks; a drain (SIGTERM) refuses new work,
finishes what is in flight, and exits 0; the command line starts, serves and drains for real."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

import httpx
import pytest

from server_testing import MODEL_NAME, LiveServer, ServerProcess, engine_is_idle, parse_sse, wait_until


def metric_value(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def read_events(lines, count: int) -> list[str]:
    """Read SSE lines until `count` data events arrived."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            events.append(line)
            if len(events) == count:
                break
    return events


LONG = {"model": MODEL_NAME, "prompt": "Tell a long story", "max_tokens": 200, "ignore_eos": True}


def test_stream_disconnect_aborts_and_frees_blocks(engine, live_server, engine_gate):
    with httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(30, connect=10)) as http:
        with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            assert response.status_code == 200
            assert len(read_events(response.iter_lines(), 2)) == 2
            engine_gate.clear()  # it cannot finish now: only the disconnect can end it
        # Leaving the block closed the connection mid-stream.
        wait_until(lambda: engine.num_unfinished_requests == 0, timeout=20, message="the server to see the disconnect")
        engine_gate.set()
        wait_until(lambda: engine_is_idle(engine), timeout=20, message="the aborted request's blocks to be freed")
        assert engine.engine.kv_cache.num_free_blocks == engine.engine.kv_cache.num_blocks
        metrics = http.get("/metrics").text
    assert metric_value(metrics, "octavo:kv_cache_usage_perc") == 0.0
    assert metric_value(metrics, "octavo:num_requests_running") == 0.0
    assert metric_value(metrics, "octavo:request_success_total", finished_reason="abort") == 1.0
    assert metric_value(metrics, "octavo:request_success_total", finished_reason="length") is None


def test_non_streaming_disconnect_aborts_and_frees_blocks(engine, live_server, engine_gate):
    host, port = live_server.url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: engine.engine.has_unfinished_requests(), timeout=30, message="the request to be running")
        engine_gate.clear()
    wait_until(lambda: engine.num_unfinished_requests == 0, timeout=20, message="the server to see the disconnect")
    engine_gate.set()
    wait_until(lambda: engine_is_idle(engine), timeout=20, message="the aborted request's blocks to be freed")
    metrics = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    assert metric_value(metrics, "octavo:request_success_total", finished_reason="abort") == 1.0


def test_drain_finishes_in_flight_request_then_exits(engine, app, engine_gate):
    server = LiveServer(app, grace_period=60).start()
    body = {**LONG, "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, connect=10)) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            first = read_events(lines, 1)
            engine_gate.clear()  # the request stays in flight while we look
            server.server.request_drain()
            with httpx.Client(base_url=server.url, timeout=10) as other:  # a new connection
                assert other.get("/health").status_code == 503
                refused = other.post("/v1/completions", json={**LONG, "max_tokens": 2})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
            assert server.thread.is_alive(), "the server must wait for the request in flight"
            engine_gate.set()
            rest = [line for line in lines if line]
    events = parse_sse("".join(line + "\n\n" for line in first + rest))
    assert events[-2]["usage"]["completion_tokens"] == 24  # it ran to the end
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    server.thread.join(30)
    assert not server.thread.is_alive(), "the server should exit once drained"


def test_drain_grace_period_aborts_stragglers(engine, app, engine_gate):
    server = LiveServer(app, grace_period=0.2).start()
    body = {**LONG, "stream": True}
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, connect=10)) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            first = read_events(lines, 1)
            engine_gate.clear()  # it cannot finish within the grace period
            server.server.request_drain()
            rest = [line for line in lines if line]
            engine_gate.set()
    events = parse_sse("".join(line + "\n\n" for line in first + rest))
    assert events[-2]["error"]["code"] == "aborted"
    server.thread.join(30)
    assert not server.thread.is_alive()


@pytest.mark.slow
def test_cli_serves_and_sigterm_drains_to_exit_0(model_dir):
    process = ServerProcess([sys.executable, "-m", "octavo.runtime.server", str(model_dir), "--port", "0",
                             "--device", "cpu", "--max-model-len", "512", "--num-gpu-blocks-override", "64",
                             "--served-model-name", "cli-model", "--shutdown-timeout", "60"])
    proc = process.proc
    try:
        url = process.wait_bound()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10)) as http:
            wait_until(lambda: http.get("/health").status_code == 200, timeout=120, message="the model to load")
            assert process.find(r"curl -s http://127\.0\.0\.1:\d+/v1/completions"), "the log shows a curl line"
            assert http.get("/v1/models").json()["data"][0]["id"] == "cli-model"
            # Long enough (hundreds of steps) to still be running while readiness is checked.
            body = {"model": "cli-model", "prompt": "Drain me", "max_tokens": 480, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            with http.stream("POST", "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                first = read_events(lines, 1)
                proc.send_signal(signal.SIGTERM)
                with httpx.Client(base_url=url, timeout=10) as other:
                    wait_until(lambda: other.get("/health").status_code == 503, timeout=10,
                               message="readiness to fail")
                    refused = other.post("/v1/completions", json={"model": "cli-model", "prompt": "x"})
                    assert refused.status_code == 503
                rest = [line for line in lines if line]
        events = parse_sse("".join(line + "\n\n" for line in first + rest))
        assert events[-2]["usage"]["completion_tokens"] == 480
        assert proc.wait(timeout=60) == 0, process.log()
    finally:
        process.stop()


def test_cli_exits_1_when_the_model_cannot_load(tmp_path):
    from octavo.cli import build_parser

    args = build_parser().parse_args(["serve", str(tmp_path / "missing"), "--port", "0", "--device", "cpu",
                                      "--log-level", "critical"])
    started = time.monotonic()
    assert args._module.run(args) == 1
    assert time.monotonic() - started < 60


def test_cli_flags_map_to_engine_arguments(monkeypatch):
    from octavo.cli import build_parser
    from octavo.runtime.server.cli import _check, engine_args, host_arg, served_names, server_settings

    monkeypatch.delenv("OCTAVO_HOST", raising=False)
    for env in ("VLLM_API_KEY", "OCTAVO_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    args = build_parser().parse_args([
        "serve", "some/model", "--dtype", "bfloat16", "--max-model-len", "4096", "--max-num-seqs", "8",
        "--max-num-batched-tokens", "2048", "--gpu-memory-utilization", "0.5", "--no-enable-prefix-caching",
        "--load-format", "dummy", "--tensor-parallel-size", "2", "--speculative-model", "draft",
        "--num-speculative-tokens", "4", "--seed", "7", "--block-size", "32", "--num-gpu-blocks-override", "100",
        "--enforce-eager", "--device", "cpu", "--download-dir", "/tmp/dl", "--max-queue-len", "5",
        "--shutdown-timeout", "12", "--api-key", "k"])
    assert _check(args) is None
    assert host_arg(args) == "127.0.0.1" and args.port == 8000  # loopback by default outside the image
    monkeypatch.setenv("OCTAVO_HOST", "0.0.0.0")  # what the runtime image sets
    assert host_arg(args) == "0.0.0.0"
    assert host_arg(build_parser().parse_args(["serve", "--host", "::1"])) == "::1"
    assert served_names(args) == ["some/model"]
    ea = engine_args(args)
    assert (ea.model, ea.dtype, ea.max_model_len, ea.max_num_seqs, ea.max_num_batched_tokens) == (
        "some/model", "bfloat16", 4096, 8, 2048)
    assert (ea.gpu_memory_utilization, ea.enable_prefix_caching, ea.load_format, ea.tensor_parallel_size) == (
        0.5, False, "dummy", 2)
    assert (ea.speculative_model, ea.num_speculative_tokens, ea.seed, ea.block_size) == ("draft", 4, 7, 32)
    assert (ea.num_gpu_blocks_override, ea.enforce_eager, ea.device, ea.download_dir) == (100, True, "cpu", "/tmp/dl")

    settings = server_settings(args)
    assert (settings.api_keys, settings.max_queue_len, settings.shutdown_timeout) == (["k"], 5, 12.0)

    demo = build_parser().parse_args(["serve"])
    assert demo.model is None and served_names(demo) == ["octavo-demo"]
    assert server_settings(demo).api_keys == []
    monkeypatch.setenv("OCTAVO_API_KEY", "from-env")
    assert server_settings(demo).api_keys == ["from-env"]
    monkeypatch.setenv("VLLM_API_KEY", "vllm-env")  # vLLM's variable (production-stack sets it) works too
    assert server_settings(demo).api_keys == ["vllm-env", "from-env"]
    assert server_settings(build_parser().parse_args(["serve", "--api-key", "a", "b"])).api_keys == ["a", "b"]
    named = build_parser().parse_args(["serve", "m", "--served-model-name", "a", "b"])
    assert served_names(named) == ["a", "b"] and engine_args(named).served_model_name == "a"


def test_cli_engine_flags_come_from_engine_args():
    """Flags the hand-written parser lacked exist because EngineArgs has them; vLLM's spellings
    (--model, underscores) work; k defaults to the engine's cap instead of being required."""
    from octavo.cli import build_parser
    from octavo.runtime.config import DEFAULT_NUM_SPECULATIVE_TOKENS
    from octavo.runtime.server.cli import _check, engine_args, served_names

    args = build_parser().parse_args([
        "serve", "--model", "some/model", "--trust-remote-code", "--no-enable-chunked-prefill",
        "--speculative-config", '{"method": "ngram"}', "--ngram-prompt-lookup-max", "3",
        "--ngram-prompt-lookup-min", "2", "--gpu_memory_utilization", "0.7", "--max_num_seqs=4"])
    assert _check(args) is None
    ea = engine_args(args)
    assert (ea.model, ea.trust_remote_code, ea.enable_chunked_prefill) == ("some/model", True, False)
    assert (ea.speculative_config, ea.ngram_prompt_lookup_max, ea.ngram_prompt_lookup_min) == ({"method": "ngram"}, 3, 2)
    assert (ea.gpu_memory_utilization, ea.max_num_seqs) == (0.7, 4)
    assert served_names(args) == ["some/model"] and ea.served_model_name == "some/model"

    # --speculative-model alone is accepted: the engine caps k at its default.
    draft_only = build_parser().parse_args(["serve", "--speculative-model", "d"])
    assert _check(draft_only) is None
    assert engine_args(draft_only).speculative_settings()["num_speculative_tokens"] == DEFAULT_NUM_SPECULATIVE_TOKENS
    # What the engine would refuse after the port opened is a usage error before it.
    assert "not supported" in _check(build_parser().parse_args(["serve", "--speculative-config", '{"k": 4}']))
    assert "two models" in _check(build_parser().parse_args(["serve", "a", "--model", "b"]))
    assert _check(build_parser().parse_args(["serve", "a", "--model", "a"])) is None


def test_cli_help_shows_server_and_engine_flags_with_defaults():
    import argparse

    from octavo.runtime.server import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for shown in ("--port PORT", "--served-model-name", "--trust-remote-code, --no-trust-remote-code",
                  "--enable-chunked-prefill, --no-enable-chunked-prefill", "--speculative-config JSON",
                  "most sequences in one step's batch; unset: 256", "(default: auto)"):
        assert shown in text


def test_cli_bad_engine_flag_exits_2(capsys):
    from octavo.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--speculative-config", "{model: d}"])
    assert exc.value.code == 2
    assert "--speculative-config: not valid JSON" in capsys.readouterr().err
    assert main(["serve", "--speculative-config", '{"method": "beam"}', "--log-level", "critical"]) == 2
    assert "speculative method must be one of" in capsys.readouterr().err
