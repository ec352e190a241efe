"""Engine death is fatal and visible (#24): the step loop's death turns readiness and
server_ready to 0, tells every request in flight, and ends the process with exit code 1 after a
short grace; a fault confined to one request fails that request alone."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import httpx
import pytest

from server_testing import MAX_MODEL_LEN, MODEL_NAME, NUM_BLOCKS, LiveServer, ServerProcess, parse_sse, wait_until

from test_errors import assert_error


@pytest.fixture
def doomed_engine(model_dir):
    """An engine of its own (these tests kill it)."""
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=NUM_BLOCKS, seed=0))
    yield engine
    engine.shutdown()


def test_engine_death_drops_readiness_and_exits_1(doomed_engine, monkeypatch):
    from octavo.runtime.server.app import build_app
    from octavo.runtime.server.state import ServerSettings

    grace = 3.0
    app = build_app(doomed_engine, ServerSettings(served_model_names=[MODEL_NAME], engine_death_grace=grace))
    fault = threading.Event()
    step = doomed_engine.engine.step

    def faulty_step():
        if fault.is_set():
            raise RuntimeError("injected step fault")
        return step()

    monkeypatch.setattr(doomed_engine.engine, "step", faulty_step)
    server = LiveServer(app, grace_period=30).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health").status_code == 200
            assert f'octavo:server_ready{{model_name="{MODEL_NAME}"}} 1.0' in http.get("/metrics").text
            body = {"model": MODEL_NAME, "prompt": "doomed", "max_tokens": 200, "ignore_eos": True, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                first = next(line for line in lines if line)  # the stream is running
                fault.set()
                rest = [line for line in lines if line]
            died = time.monotonic()
            events = parse_sse("".join(line + "\n\n" for line in [first, *rest]))
            assert events[-2]["error"]["code"] == "engine_dead", events[-2]
            assert_error(http.get("/health"), 503, code="engine_dead")
            assert http.get("/live").status_code == 503
            assert f'octavo:server_ready{{model_name="{MODEL_NAME}"}} 0.0' in http.get("/metrics").text
            assert_error(http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "x"}), 503,
                         code="engine_dead")
        server.thread.join(grace + 10)
        assert not server.thread.is_alive(), "the server did not exit after the engine died"
        assert time.monotonic() - died <= grace + 10
        assert server.server.exit_code == 1
    finally:
        if server.thread.is_alive():
            server.stop()


def test_served_process_exits_1_when_the_engine_dies(model_dir):
    """`octavo serve` with a test-only fault after a few steps: the streaming request gets an
    error event and the process exits 1 on its own."""
    from octavo.runtime.async_engine import FAULT_AFTER_STEPS_ENV

    process = ServerProcess([sys.executable, "-m", "octavo.runtime.server", str(model_dir), "--port", "0",
                             "--device", "cpu", "--max-model-len", "256", "--num-gpu-blocks-override", "64",
                             "--served-model-name", "m"], env={FAULT_AFTER_STEPS_ENV: "3"})
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
        assert process.find("the engine loop died: exiting 1"), process.log()
    finally:
        process.stop()


async def test_a_fault_in_one_request_fails_it_alone(engine, client, monkeypatch):
    """An error in one request's own processing (here: appending its sampled token) fails that
    request with a 500; a request in the same steps finishes, and the engine keeps serving."""
    core = engine.engine
    append = core._append_token

    def faulty_append(request, row, now):
        if request.sampling_params.max_tokens == 7:
            raise RuntimeError("injected row fault")
        return append(request, row, now)

    monkeypatch.setattr(core, "_append_token", faulty_append)
    doomed = {"model": MODEL_NAME, "prompt": "doomed", "max_tokens": 7, "ignore_eos": True}
    healthy = {"model": MODEL_NAME, "prompt": "healthy", "max_tokens": 12, "ignore_eos": True}
    failed, served, streamed = await asyncio.gather(
        client.post("/v1/completions", json=doomed), client.post("/v1/completions", json=healthy),
        client.post("/v1/completions", json={**doomed, "n": 2, "stream": True}))
    error = assert_error(failed, 500, code="request_failed")
    assert "injected" not in error["message"]
    assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 12
    events = parse_sse(streamed.text)
    assert events[-2]["error"]["code"] == "request_failed", events[-2]
    assert engine.is_running
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/v1/completions", json=healthy)).status_code == 200
