"""`octavo serve --enable-multiprocessing`: the engine core in its own process behind the real
server: completions and chat stream, /metrics reads the core's stats, SIGTERM drains to exit 0
and takes the core along; a core that crashes ends the process with exit code 1."""

from __future__ import annotations

import signal
import sys
import time

import httpx

from server_testing import ServerProcess, parse_sse, wait_until

from test_lifecycle import metric_value, read_events

from octavo.runtime.engine_core import CORE_FAULT_AFTER_STEPS_ENV


def serve(model_dir, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "octavo.runtime.server", str(model_dir), "--port", "0",
                          "--device", "cpu", "--max-model-len", "512", "--num-gpu-blocks-override", "64",
                          "--served-model-name", "m", "--shutdown-timeout", "60", "--enable-multiprocessing"],
                         env=env)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_serves_completions_and_chat_streams_then_drains_with_its_core(model_dir):
    process = serve(model_dir)
    proc = process.proc
    try:
        url = process.wait_bound()
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10)) as http:
            wait_until(lambda: http.get("/health").status_code == 200, timeout=120, message="the model to load")
            cores = children(proc.pid)
            assert cores, "the server runs an engine core process"
            completion = http.post("/v1/completions", json={"model": "m", "prompt": "Hello", "max_tokens": 16,
                                                            "temperature": 0, "ignore_eos": True}).json()
            assert completion["usage"]["completion_tokens"] == 16
            assert completion["choices"][0]["finish_reason"] == "length"
            chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12,
                    "temperature": 0, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            events = parse_sse(http.post("/v1/chat/completions", json=chat).text)
            assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 12
            streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
            whole = http.post("/v1/chat/completions", json={**chat, "stream": False,
                                                                  "stream_options": None}).json()
            assert streamed == whole["choices"][0]["message"]["content"]
            generated = metric_value(http.get("/metrics").text, "octavo:generation_tokens_total")
            assert generated == 16 + 12 + 12, generated
            body = {"model": "m", "prompt": "Drain me", "max_tokens": 300, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            with http.stream("POST", "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                first = read_events(lines, 1)
                proc.send_signal(signal.SIGTERM)
                rest = [line for line in lines if line]
        events = parse_sse("".join(line + "\n\n" for line in first + rest))
        assert events[-2]["usage"]["completion_tokens"] == 300
        assert proc.wait(timeout=60) == 0, process.log()
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in cores):  # multiprocessing's helpers included
            assert time.monotonic() < deadline, "the engine core outlived the server by 15 s"
            time.sleep(0.1)
    finally:
        process.stop()


def test_a_crashing_core_ends_the_served_process_with_exit_1(model_dir):
    process = serve(model_dir, env={CORE_FAULT_AFTER_STEPS_ENV: "3"})
    try:
        url = process.wait_bound()
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10)) as http:
            wait_until(lambda: http.get("/health").status_code == 200, timeout=120, message="the model to load")
            body = {"model": "m", "prompt": "doomed", "max_tokens": 50, "ignore_eos": True, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                raw = "".join(line + "\n\n" for line in response.iter_lines() if line)
        died = time.monotonic()
        events = parse_sse(raw)
        assert events[-2]["error"]["code"] == "engine_dead", events[-2]
        assert process.wait_exit(timeout=30) == 1, process.log()
        assert time.monotonic() - died < 30
        assert process.find("injected engine core fault"), process.log()
    finally:
        process.stop()
