"""/metrics: vLLM's names and meanings under `octavo:` (or `vllm:` with --metrics-prefix vllm),
engine gauges and counters, per-request latency histograms (TTFT, inter-token latency, time per
output token, prefill / decode / queue / inference time), tokens per step, requests (not
sequences) running and waiting, speculative counters by draft position, the process collector,
no `_created` series, a registry per app."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_testing import MODEL_NAME, wait_until


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model_name"))
            found[(sample.name, labels)] = sample.value
    return found


HISTOGRAMS_PER_REQUEST = ("time_to_first_token_seconds", "request_time_per_output_token_seconds",
                          "e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
                          "request_decode_time_seconds", "request_inference_time_seconds", "request_prompt_tokens",
                          "request_generation_tokens", "request_max_num_generation_tokens", "request_params_n",
                          "request_params_max_tokens")


async def test_metrics_after_requests(client, engine):
    body = {"model": MODEL_NAME, "prompt": "Count my tokens please", "max_tokens": 5, "ignore_eos": True}
    before, hits_before = engine.stats.iteration_tokens_sum, engine.stats.prefix_cache_hits
    assert (await client.post("/v1/completions", json=body)).status_code == 200
    assert (await client.post("/v1/completions", json={**body, "stream": True})).status_code == 200
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    for name in ("octavo:num_requests_running", "octavo:num_requests_waiting", "octavo:kv_cache_usage_perc",
                 "octavo:gpu_cache_usage_perc", "octavo:prefix_cache_queries_total", "octavo:prefix_cache_hits_total",
                 "octavo:prefix_cache_hit_rate", "octavo:prompt_tokens_total", "octavo:generation_tokens_total",
                 "octavo:num_preemptions_total", "octavo:server_ready", "octavo:num_requests_swapped"):
        assert (name, ()) in values, name
    assert values[("octavo:server_ready", ())] == 1.0
    assert values[("octavo:kv_cache_usage_perc", ())] == 0.0
    assert values[("octavo:generation_tokens_total", ())] >= 10
    for histogram in HISTOGRAMS_PER_REQUEST:
        assert values[(f"octavo:{histogram}_count", ())] == 2, histogram
    # One inter-token interval per step after the first token: 4 per 5-token request (no draft here).
    assert values[("octavo:inter_token_latency_seconds_count", ())] == 8
    assert values[("octavo:time_per_output_token_seconds_count", ())] == 8  # vLLM's older name, same samples
    assert values[("octavo:request_generation_tokens_sum", ())] == 10
    assert values[("octavo:request_params_max_tokens_sum", ())] == 10
    assert values[("octavo:request_success_total", (("finished_reason", "length"),))] == 2
    assert not any(name.startswith("octavo:spec_decode") for name, _ in values)  # no draft configured
    # Tokens per step: a histogram whose sum is every token computed (prompt tokens the prefix
    # cache held are not computed again) and generated.
    prompt_len = len(engine.get_tokenizer().encode(body["prompt"]))
    cached = engine.stats.prefix_cache_hits - hits_before
    assert values[("octavo:iteration_tokens_total_sum", ())] - before == 2 * (prompt_len + 5) - cached
    assert values[("octavo:iteration_tokens_total_bucket", (("le", "+Inf"),))] == values[
        ("octavo:iteration_tokens_total_count", ())]
    config_info = next(labels for name, labels in values if name == "octavo:cache_config_info")
    assert ("block_size", "16") in config_info and ("enable_prefix_caching", "True") in config_info
    assert ("num_gpu_blocks", str(engine.engine.kv_cache.num_blocks)) in config_info
    # The process collector, and no _created series (vLLM's dashboards never read them).
    assert ("process_resident_memory_bytes", ()) in values and ("process_cpu_seconds_total", ()) in values
    assert "_created" not in response.text


async def test_metrics_prefix_vllm_names_every_series_as_vllm_does(engine, settings):
    from octavo.runtime.server.app import build_app

    settings.metrics_prefix = "vllm"
    app = build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v", timeout=60) as c:
        body = {"model": MODEL_NAME, "prompt": "Scrape me", "max_tokens": 3}
        assert (await c.post("/v1/completions", json=body)).status_code == 200
        text = (await c.get("/metrics")).text
    names = {name for name, _ in samples(text)}
    ours = {name for name in names if ":" in name}
    assert ours and all(name.startswith("vllm:") for name in ours)
    assert {"vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_count", "vllm:kv_cache_usage_perc",
            "vllm:inter_token_latency_seconds_count"} <= names


def test_running_and_waiting_count_requests_not_sequences(model_dir):
    """vLLM's num_requests_* count requests: an n=3 request is one request (three sequences)."""
    from octavo import EngineArgs, SamplingParams
    from octavo.runtime.engine import LLMEngine

    engine = LLMEngine(EngineArgs(model=str(model_dir), device="cpu", max_model_len=128,
                                  num_gpu_blocks_override=64).create_config())
    try:
        engine.add_request("a", "Three samples of one prompt", SamplingParams(n=3, max_tokens=4, seed=1))
        engine.add_request("b", "One sample", SamplingParams(max_tokens=4))
        engine._update_gauges()
        stats = engine.stats
        assert (stats.num_waiting_requests, stats.num_waiting) == (2, 4)
        engine.step()
        assert stats.num_running_requests + stats.num_waiting_requests == 2
        while engine.has_unfinished_requests():
            engine.step()
        assert (stats.num_running_requests, stats.num_waiting_requests) == (0, 0)
    finally:
        engine.shutdown()


async def test_prefix_cache_hits_are_counted(client, engine):
    prompt = " ".join(["Paged attention stores keys and values in fixed-size blocks"] * 4)
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 2}
    before = samples((await client.get("/metrics")).text)[("octavo:prefix_cache_hits_total", ())]
    for _ in range(2):
        assert (await client.post("/v1/completions", json=body)).status_code == 200
    values = samples((await client.get("/metrics")).text)
    assert values[("octavo:prefix_cache_hits_total", ())] - before >= engine.engine.kv_cache.block_size
    assert values[("octavo:gpu_prefix_cache_hits_total", ())] == values[("octavo:prefix_cache_hits_total", ())]
    assert 0.0 < values[("octavo:prefix_cache_hit_rate", ())] <= 1.0


async def test_each_app_has_its_own_registry(engine, settings):
    from octavo.runtime.server.app import build_app

    first, second = build_app(engine, settings), build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://a") as a, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://b") as b:
        assert (await a.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})).status_code == 200
        assert samples((await a.get("/metrics")).text)[("octavo:e2e_request_latency_seconds_count", ())] == 1
        assert samples((await b.get("/metrics")).text)[("octavo:e2e_request_latency_seconds_count", ())] == 0


@pytest.mark.parametrize("adaptive", [False])
async def test_speculative_counters_with_a_draft(model_dir, settings, adaptive):
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs
    from octavo.runtime.server.app import build_app

    # The checkpoint is its own draft (same vocabulary, no second build), drafting k every step:
    # greedy, every draft is accepted, so each verification accepts positions 0 and 1.
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=128, num_gpu_blocks_override=64,
        speculative_config={"model": str(model_dir), "num_speculative_tokens": 2, "adaptive": adaptive}))
    try:
        app = build_app(engine, settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s", timeout=60) as c:
            body = {"model": MODEL_NAME, "prompt": "Draft and verify", "max_tokens": 12, "temperature": 0.0,
                    "ignore_eos": True}
            assert (await c.post("/v1/completions", json=body)).status_code == 200
            values = samples((await c.get("/metrics")).text)
        for name in ("spec_decode_num_drafts_total", "spec_decode_num_draft_tokens_total",
                     "spec_decode_num_accepted_tokens_total", "spec_decode_num_emitted_tokens_total",
                     "spec_decode_draft_acceptance_rate"):
            assert (f"octavo:{name}", ()) in values, name
        stats = engine.stats
        drafts = values[("octavo:spec_decode_num_drafts_total", ())]
        assert drafts == stats.spec_num_drafts > 0
        assert values[("octavo:spec_decode_num_draft_tokens_total", ())] == stats.spec_draft_tokens
        assert values[("octavo:spec_decode_num_accepted_tokens_total", ())] == stats.spec_accepted_tokens
        per_pos = [values[("octavo:spec_decode_num_accepted_tokens_per_pos_total", (("position", str(i)),))]
                   for i in range(2)]
        assert sum(per_pos) == stats.spec_accepted_tokens
        assert per_pos[0] >= per_pos[1]  # a draft is accepted at position 1 only after position 0
        assert per_pos[0] == drafts  # the self-draft agrees with the target: every first draft is kept
    finally:
        engine.shutdown()
        wait_until(lambda: engine.is_stopped, timeout=10, message="the draft engine to stop")
