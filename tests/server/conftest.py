"""Fixtures for the server tests: one tiny Llama checkpoint and one engine for the session, a fresh
app per test (apps are cheap: each has its own metrics registry), in-process clients over ASGI,
and real uvicorn servers on loopback for what needs sockets (disconnects, drain, concurrency).

Every test that uses the engine must leave it idle with every KV block free: the `engine`
fixture checks that after each test, so a leaked request or block fails the test that leaked it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tiny_models import build_checkpoint

from server_testing import (MAX_MODEL_LEN, MODEL_NAME, NUM_BLOCKS, LiveServer,
                            engine_is_idle, wait_until)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("server-models"), "llama")


@pytest.fixture(scope="session")
def session_engine(model_dir):
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=NUM_BLOCKS,
        max_num_seqs=64, seed=0))
    yield engine
    engine.shutdown()


@pytest.fixture
def engine(session_engine):
    """The shared engine, checked idle with no allocated block after the test."""
    yield session_engine
    assert session_engine.is_running, f"the engine died: {session_engine.errored!r}"
    wait_until(lambda: engine_is_idle(session_engine), timeout=30, message="the engine to be idle, all blocks free")


@pytest.fixture
def engine_gate(engine, monkeypatch) -> threading.Event:
    """Clear it to hold the engine before its next step (so a request stays in flight), set it to go on."""
    gate = threading.Event()
    gate.set()
    step = engine.engine.step

    def gated_step():
        assert gate.wait(30), "the test never reopened the engine gate"
        return step()

    monkeypatch.setattr(engine.engine, "step", gated_step)
    yield gate
    gate.set()


@pytest.fixture
def settings():
    from octavo.runtime.server.state import ServerSettings

    return ServerSettings(served_model_names=[MODEL_NAME])


@pytest.fixture
def app(engine, settings):
    from octavo.runtime.server.app import build_app

    return build_app(engine, settings)


@pytest.fixture
async def client(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://octavo.test",
                                 timeout=60) as c:
        yield c


@pytest.fixture
async def openai_client(app):
    import openai

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://octavo.test", timeout=60)
    async with openai.AsyncOpenAI(base_url="http://octavo.test/v1", api_key="unused", http_client=http,
                                  max_retries=0) as c:
        yield c


@pytest.fixture
def live_server(app) -> Iterator[LiveServer]:
    server = LiveServer(app).start()
    yield server
    with contextlib.suppress(AssertionError):
        server.stop()
