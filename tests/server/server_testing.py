"""Helpers shared by the server tests (constants, polling with deadlines, strict SSE parsing)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

MODEL_NAME = "tiny-llama"
MAX_MODEL_LEN = 256
NUM_BLOCKS = 256


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
               message: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
                           message: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def engine_is_idle(engine) -> bool:
    core = engine.engine
    return (not core.has_unfinished_requests() and engine.num_unfinished_requests == 0
            and core.kv_cache.num_free_blocks == core.kv_cache.num_blocks)


def parse_sse(raw: str) -> list[dict | str]:
    """Parse an SSE body strictly in OpenAI's framing: `data: <json>` events separated by blank
    lines, the last one `[DONE]`. Returns the decoded events ([DONE] as the string)."""
    assert raw.endswith("\n\n"), "the stream must end with a blank line"
    events: list[dict | str] = []
    for block in raw[:-2].split("\n\n"):
        assert block.startswith("data: "), f"not an SSE data event: {block!r}"
        assert "\n" not in block, f"an event must be one line: {block!r}"
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events and events[-1] == "[DONE]", "the stream must end with data: [DONE]"
    assert "[DONE]" not in events[:-1]
    return events


class LiveServer:
    """A DrainingServer (uvicorn) running an app in a thread, on a free loopback port."""

    def __init__(self, app, grace_period: float = 30.0) -> None:
        import uvicorn

        from octavo.runtime.server.shutdown import DrainingServer

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = DrainingServer(config, app.state.serving, grace_period)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30, message="uvicorn to start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "uvicorn did not stop"


class ServerProcess:
    """`octavo serve` (or any command) as a subprocess: stderr collected by a thread (so its pipe
    never fills), the port it bound read from uvicorn's log line, SIGTERM to stop."""

    BOUND = r"Uvicorn running on (https?)://([^:\s]+|\[[^\]]+\]):(\d+)"

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        import os
        import subprocess

        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, cwd=cwd)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def find(self, pattern: str):
        import re

        for line in list(self.lines):
            match = re.search(pattern, line)
            if match:
                return match
        return None

    def log(self) -> str:
        return "".join(self.lines[-40:])

    def wait_bound(self, timeout: float = 120) -> str:
        """The base URL once uvicorn listens (127.0.0.1 when it bound every interface)."""
        match = wait_until(lambda: self.find(self.BOUND) or self.proc.poll() is not None, timeout=timeout,
                           message="the server to bind")
        assert self.proc.poll() is None, f"the server exited {self.proc.returncode}:\n{self.log()}"
        scheme, host, port = match.groups()
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        return f"{scheme}://{host}:{port}"

    def wait_exit(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
