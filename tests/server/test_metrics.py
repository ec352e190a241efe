"""/metrics: vLLM-like names under `octavo:`, engine gauges and counters, per-request latency
histograms, success by finish reason, a registry per app, speculative counters with a draft."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server_testing import MODEL_NAME, wait_until


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model_name"))
            found[(sample.name, labels)] = sample.value
    return found


async def test_metrics_after_requests(client, engine):
    body = {"model": MODEL_NAME, "prompt": "Count my tokens please", "max_tokens": 5, "ignore_eos": True}
    assert (await client.post("/v1/completions", json=body)).status_code == 200
    assert (await client.post("/v1/completions", json={**body, "stream": True})).status_code == 200
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    for name in ("octavo:num_requests_running", "octavo:num_requests_waiting", "octavo:kv_cache_usage_perc",
                 "octavo:prefix_cache_queries_total", "octavo:prefix_cache_hits_total",
                 "octavo:prefix_cache_hit_rate", "octavo:prompt_tokens_total", "octavo:generation_tokens_total",
                 "octavo:num_preemptions_total", "octavo:server_ready"):
        assert (name, ()) in values, name
    assert values[("octavo:server_ready", ())] == 1.0
    assert values[("octavo:kv_cache_usage_perc", ())] == 0.0
    assert values[("octavo:generation_tokens_total", ())] >= 10
    for histogram in ("time_to_first_token_seconds", "time_per_output_token_seconds",
                      "e2e_request_latency_seconds", "request_queue_time_seconds", "request_prompt_tokens",
                      "request_generation_tokens"):
        assert values[(f"octavo:{histogram}_count", ())] == 2, histogram
    assert values[("octavo:request_generation_tokens_sum", ())] == 10
    assert values[("octavo:request_success_total", (("finished_reason", "length"),))] == 2
    assert not any(name.startswith("octavo:spec_decode") for name, _ in values)  # no draft configured


async def test_prefix_cache_hits_are_counted(client, engine):
    prompt = " ".join(["Paged attention stores keys and values in fixed-size blocks"] * 4)
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 2}
    before = samples((await client.get("/metrics")).text)[("octavo:prefix_cache_hits_total", ())]
    for _ in range(2):
        assert (await client.post("/v1/completions", json=body)).status_code == 200
    values = samples((await client.get("/metrics")).text)
    assert values[("octavo:prefix_cache_hits_total", ())] - before >= engine.engine.kv_cache.block_size
    assert 0.0 < values[("octavo:prefix_cache_hit_rate", ())] <= 1.0


async def test_each_app_has_its_own_registry(engine, settings):
    from octavo.runtime.server.app import build_app

    first, second = build_app(engine, settings), build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://a") as a, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://b") as b:
        assert (await a.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})).status_code == 200
        assert samples((await a.get("/metrics")).text)[("octavo:e2e_request_latency_seconds_count", ())] == 1
        assert samples((await b.get("/metrics")).text)[("octavo:e2e_request_latency_seconds_count", ())] == 0


async def test_speculative_counters_with_a_draft(model_dir, settings):
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs
    from octavo.runtime.server.app import build_app

    # The checkpoint is its own draft: same vocabulary, no second build.
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=128, num_gpu_blocks_override=64,
        speculative_model=str(model_dir), num_speculative_tokens=2))
    try:
        app = build_app(engine, settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s", timeout=60) as c:
            body = {"model": MODEL_NAME, "prompt": "Draft and verify", "max_tokens": 6, "temperature": 0.0}
            assert (await c.post("/v1/completions", json=body)).status_code == 200
            values = samples((await c.get("/metrics")).text)
        for name in ("spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total",
                     "spec_decode_num_emitted_tokens_total", "spec_decode_draft_acceptance_rate"):
            assert (f"octavo:{name}", ()) in values, name
        stats = engine.stats
        assert values[("octavo:spec_decode_num_draft_tokens_total", ())] == stats.spec_draft_tokens
        assert values[("octavo:spec_decode_num_accepted_tokens_total", ())] == stats.spec_accepted_tokens
    finally:
        engine.shutdown()
        wait_until(lambda: engine.is_stopped, timeout=10, message="the draft engine to stop")
