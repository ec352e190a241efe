"""`octavo serve --enable-multiprocessing`: the engine core in its own process behind the real
server: completions and chat stream, /metrics reads the core's stats, SIGTERM drains to exit 0
and takes the core along; a core that crashes ends the process with exit code 1; structured outputs
and the tool calls they force are enforced in the core (invalid specs stay 400s)."""

from __future__ import annotations

import json
import re
import signal
import sys
import time

import httpx

from server_testing import ServerProcess, parse_sse, wait_until

from test_lifecycle import metric_value, read_events

from octavo.runtime.engine_core import CORE_FAULT_AFTER_STEPS_ENV


def serve(model_dir, env: dict[str, str] | None = None, flags: tuple[str, ...] = ()) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "octavo.runtime.server", str(model_dir), "--port", "0",
                          "--device", "cpu", "--max-model-len", "512", "--num-gpu-blocks-override", "64",
                          "--served-model-name", "m", "--shutdown-timeout", "60", "--enable-multiprocessing",
                          *flags], env=env)


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


# The tool's city is an enum so a forced call ends within max_tokens (the tiny model never closes a
# free string); the template is compact (the tiny model's context is short).
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}]
COMPACT_TEMPLATE = ("{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}"
                    "{{ m.role[0] }}:{{ m.content or '' }};{% endfor %}{% if add_generation_prompt %}a:{% endif %}")


def test_structured_outputs_and_forced_tool_calls_are_enforced_in_the_core(model_dir):
    process = serve(model_dir, flags=("--chat-template", COMPACT_TEMPLATE))
    try:
        url = process.wait_bound()
        with httpx.Client(base_url=url, timeout=httpx.Timeout(120, connect=10)) as http:
            wait_until(lambda: http.get("/health").status_code == 200, timeout=120, message="the model to load")
            regex = r"[a-e]{2,5}-[0-9]{1,3}"
            for stream in (False, True):
                response = http.post("/v1/completions", json={"model": "m", "prompt": "Code:", "max_tokens": 40,
                                                              "temperature": 1.0, "seed": 3, "guided_regex": regex,
                                                              "stream": stream})
                assert response.status_code == 200, response.text
                if stream:
                    events = parse_sse(response.text)
                    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
                else:
                    text = response.json()["choices"][0]["text"]
                assert re.fullmatch(regex, text), text
            chat = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 100,
                    "temperature": 0, "tools": TOOLS,
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
            answer = http.post("/v1/chat/completions", json=chat).json()
            [call] = answer["choices"][0]["message"]["tool_calls"]
            assert call["function"]["name"] == "get_weather"
            assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Rome")
            # invalid specs are answered in the front, before the core sees them
            bad = http.post("/v1/completions", json={"model": "m", "prompt": "x", "guided_regex": "a(b"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "guided_regex", bad.text
            bad = http.post("/v1/chat/completions", json={**chat, "tools": [{"type": "function", "function": {
                "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}}],
                "tool_choice": "required"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools", bad.text
            compiled = metric_value(http.get("/metrics").text, "octavo:structured_output_grammars_compiled_total")
            assert compiled == 2, compiled  # the regex and the tool's schema, compiled in the core
    finally:
        process.stop()
