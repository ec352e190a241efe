"""vLLM's POST /start_profile and /stop_profile (what `vllm bench serve --profile` calls): a served
run's steps recorded by the torch profiler on the engine thread, between steps; without a
profiler configured, a 400 that names the flag."""

from __future__ import annotations

import httpx
import pytest

from octavo.bench import profile
from server_testing import MAX_MODEL_LEN, MODEL_NAME, NUM_BLOCKS


def recorded_steps(path) -> int:
    """The trace's octavo::step ranges, as `octavo bench`'s profile summary counts them."""
    return profile.summarize_trace(profile.load_events(path))["num_steps"]


async def test_without_a_profiler_the_routes_say_how(client):
    for route in ("/start_profile", "/stop_profile"):
        response = await client.post(route)
        assert response.status_code == 400
        error = response.json()["error"]
        assert "--profiler-config" in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.fixture
def profiled_engine(model_dir, tmp_path):
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=NUM_BLOCKS,
        profiler_config={"profiler": "torch", "torch_profiler_dir": str(tmp_path / "traces")}))
    yield engine
    engine.shutdown()


async def test_a_served_request_between_start_and_stop_is_in_the_trace(profiled_engine, settings, tmp_path):
    from octavo.runtime.server.app import build_app

    app = build_app(profiled_engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://octavo.test",
                                 timeout=60) as client:
        assert (await client.post("/start_profile")).status_code == 200
        completion = await client.post("/v1/completions", json={
            "model": MODEL_NAME, "prompt": "a b c", "max_tokens": 6, "temperature": 0, "ignore_eos": True})
        assert completion.status_code == 200
        assert profiled_engine.engine.profiler.traces == []  # unlimited: still recording until stopped
        assert (await client.post("/stop_profile")).status_code == 200
    (trace,) = profiled_engine.engine.profiler.traces
    assert trace.parent == tmp_path / "traces"
    # One prefill step with the first token, five decode steps, and (asynchronous scheduling) a
    # last step that reads the sixth token back.
    assert recorded_steps(trace) == 7
