"""Pure pieces of the benchmarks: seeded workloads, percentiles, stream records, summaries and
reports. No model, no torch."""

from __future__ import annotations

import json
import random

import pytest

from octavo.bench import report
from octavo.bench.measure import percentile, summarize
from octavo.bench.serve import carries_tokens, summarize_level, token_record
from octavo.bench.workload import BenchRequest, batches, fixed_requests, parse_range, random_requests, text_requests


def test_parse_range():
    assert parse_range("256:768") == (256, 768)
    assert parse_range("128") == (128, 128)
    for bad in ("0:4", "9:3", "a:b", "1:2:3", ""):
        with pytest.raises(ValueError, match="LOW:HIGH"):
            parse_range(bad)


def test_random_requests_are_seeded_and_in_range():
    first = random_requests(50, (256, 768), (128, 384), 1000, seed=7)
    again = random_requests(50, (256, 768), (128, 384), 1000, seed=7)
    other = random_requests(50, (256, 768), (128, 384), 1000, seed=8)
    assert first == again and first != other
    assert all(256 <= r.prompt_len <= 768 and 128 <= r.output_len <= 384 for r in first)
    assert all(100 <= t < 1000 for r in first for t in r.prompt_token_ids)
    assert all(0 <= t < 50 for r in random_requests(3, (4, 8), (1, 2), 50, seed=0) for t in r.prompt_token_ids)
    fixed = fixed_requests(4, 16, 8, 100, seed=0)
    assert {(r.prompt_len, r.output_len) for r in fixed} == {(16, 8)}
    assert [len(b) for b in batches(list(range(10)), 4)] == [4, 4, 2]


def peer_make_requests(n=1000, seed=0, prompt_len=(256, 768), output_len=(128, 384), token_ids=(100, 32000)):
    """The vLLM peer's generator (../shared/peers/vllm-0.24.0/bench_vllm.py), copied verbatim."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        p = rng.randint(prompt_len[0], prompt_len[1])
        o = rng.randint(output_len[0], output_len[1])
        reqs.append(([rng.randrange(token_ids[0], token_ids[1]) for _ in range(p)], o))
    return reqs


def test_the_offline_workload_is_the_peers_request_for_request():
    ours = random_requests(1000, (256, 768), (128, 384), 128256, seed=0)
    assert [(r.prompt_token_ids, r.output_len) for r in ours] == peer_make_requests()
    assert sum(r.prompt_len for r in ours) == 512544 and sum(r.output_len for r in ours) == 256568


def test_percentile_matches_linear_interpolation():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    stats = summarize(values)
    assert stats["count"] == 5 and stats["mean"] == 3.0 and stats["p99"] == pytest.approx(4.96)
    assert summarize([])["count"] == 0


def test_finish_only_chunks_carry_no_tokens():
    assert carries_tokens([{"text": "a", "finish_reason": None}])
    assert carries_tokens([{"text": "", "finish_reason": None}])  # tokens whose text is held back
    assert carries_tokens([{"text": "b", "finish_reason": "length"}])
    assert not carries_tokens([{"text": "", "finish_reason": "length"}])
    assert not carries_tokens([])


def test_token_record_timings():
    request = BenchRequest([1, 2, 3], 4)
    record = token_record(request, sent=10.0, done=10.5, chunk_times=[10.1, 10.2, 10.3, 10.4],
                          usage={"completion_tokens": 4}, error=None)
    assert record["error"] is None
    assert record["ttft_ms"] == pytest.approx(100.0)
    assert record["tpot_ms"] == pytest.approx(100.0)
    assert record["itl_ms"] == pytest.approx([100.0, 100.0, 100.0])
    assert record["e2e_ms"] == pytest.approx(500.0)
    short = token_record(request, 0.0, 1.0, [0.5], {"completion_tokens": 1}, None)
    assert short["error"].startswith("short output")
    # --json-schema: a schema that is complete stops the output early; that is no error
    assert token_record(request, 0.0, 1.0, [0.5], {"completion_tokens": 1}, None, may_end_early=True)["error"] is None
    silent = token_record(request, 0.0, 1.0, [], {"completion_tokens": 4}, None)
    assert "no per-token chunks" in silent["error"]


def test_level_summary_totals_are_consistent():
    request = BenchRequest([1] * 8, 3)
    records = [token_record(request, 0.0, 0.4, [0.1, 0.2, 0.3], {"completion_tokens": 3}, None) for _ in range(4)]
    records.append(token_record(request, 0.0, 0.1, [], None, "HTTP 500: boom"))
    summary = summarize_level(2, records, wall_s=2.0)
    assert summary["num_requests"] == 5 and summary["num_errors"] == 1
    assert summary["output_tokens"] == 12 and summary["prompt_tokens"] == 32
    assert summary["output_tokens_per_s"] == pytest.approx(6.0)
    assert summary["per_user_tokens_per_s"]["p50"] == pytest.approx(10.0)
    assert summary["itl_ms"]["count"] == 8


def test_report_file_stem_and_goals():
    env = {"date": "2026-11-22", "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}}
    assert report.file_stem({"kind": "throughput", "model": {"name": "llama-3.1-8b"}, "env": env}) == \
        "2026-11-22-throughput-llama-3.1-8b-h100"
    assert report.file_stem({"kind": "serve", "model": {"name": "m"}, "env": {"date": "d", "device": {"type": "cpu"}},
                             "tag": "spec"}) == "d-serve-m-cpu-spec"
    result = {"kind": "throughput", "model": {"name": "llama-3.1-8b", "hf_overrides": {}}, "env": env,
              "octavo": {"output_tokens_per_s": 13000.0}, "ratios": {"output_tps_vs_hf": 20.0}}
    checks = {c["name"]: c["met"] for c in report.goals(result)}
    assert list(checks.values()) == [True, False]
    result["env"] = {"date": "d", "device": {"type": "cpu"}}
    assert report.goals(result) == []  # goals are judged only on the run they were set for
    assert json.loads(json.dumps(checks))


def test_text_requests_are_windows_after_bos():
    corpus = list(range(100, 400))
    first = text_requests(corpus, 20, (16, 16), (8, 8), seed=3, bos_token_id=1)
    assert first == text_requests(corpus, 20, (16, 16), (8, 8), seed=3, bos_token_id=1)
    for request in first:
        ids = request.prompt_token_ids
        assert len(ids) == 16 and ids[0] == 1 and request.output_len == 8
        assert ids[1:] == list(range(ids[1], ids[1] + 15))  # a contiguous window of the text
    assert len({r.prompt_token_ids[1] for r in first}) > 10
    with pytest.raises(ValueError, match="fewer than"):
        text_requests(corpus[:10], 1, (16, 16), (8, 8), seed=0)


def test_engine_flags_reach_the_server_command():
    """The engine flags given (only those away from EngineArgs' defaults) become `octavo serve`
    flags, the draft's included; the model goes first, as octavo serve's positional argument."""
    import argparse

    from octavo.bench import cli
    from octavo.bench.serve import serve_command

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["serve", "--model", "m", "--launch", "--speculative-model", "d", "--num-speculative-tokens",
                              "4", "--no-enable-prefix-caching", "--enforce-eager", "-tp", "2"])
    command = serve_command("/models/m", cli.engine_args(args), "--max-num-seqs 8")
    assert command[1:6] == ["-P", "-m", "octavo.cli", "serve", "/models/m"] and "m" not in command
    assert command[command.index("--speculative-model") + 1] == "d"
    assert command[command.index("--num-speculative-tokens") + 1] == "4"
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert "--no-enable-prefix-caching" in command and "--enforce-eager" in command
    assert command[-2:] == ["--max-num-seqs", "8"]
    plain = serve_command("m", cli.engine_args(parser.parse_args(["serve", "--model", "m", "--launch"])))
    assert plain[6:] == []
    spec = parser.parse_args(["spec", "--max-num-seqs", "64", "--a-args", "--enforce-eager --seed 3"])
    assert cli.engine_args(spec).max_num_seqs == 64 and spec.a_args == "--enforce-eager --seed 3"


def test_profile_summary_busy_share_phases_and_top_kernels():
    from octavo.bench import profile

    def host(name, ts, dur):
        return {"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur}

    def kernel(name, ts, dur):
        return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}

    events = [host("octavo::step", 0, 1000), host("octavo::launch", 0, 300), host("octavo::step", 1000, 1000),
              host("octavo::launch", 1000, 500),
              kernel("gemm", 100, 400), kernel("attn", 600, 100), kernel("gemm", 1100, 400), kernel("attn", 1500, 300),
              kernel("outside", 5000, 100)]  # after the steps: not counted
    summary = profile.summarize_trace(events)
    assert summary["num_steps"] == 2 and summary["wall_ms"] == 2.0
    assert summary["gpu_busy_fraction"] == pytest.approx(1.2 / 2.0)
    assert summary["phases"]["launch"]["per_step_ms"] == pytest.approx(0.4)
    assert [(k["name"], k["per_step_ms"], k["calls_per_step"]) for k in summary["top_kernels"]] == [
        ("gemm", pytest.approx(0.4), 1.0), ("attn", pytest.approx(0.2), 1.0)]
    assert "`gemm`" in profile.markdown({"t": summary})


def test_latency_decode_step_is_end_to_end_like_vllms():
    """ms/step = (end - prefill) / (output tokens - 1), median over runs: the engine's own step()
    intervals (which asynchronous scheduling shifts by a step) only give the spread."""
    from octavo.bench.latency import summarize_iterations

    runs = [{"prefill_ms": 20.0, "total_ms": 20.0 + 9 * 7.0, "step_ms": [1.0, 13.0] * 4, "output_tokens": 10},
            {"prefill_ms": 22.0, "total_ms": 22.0 + 9 * 8.0, "step_ms": [8.0] * 9, "output_tokens": 10},
            {"prefill_ms": 21.0, "total_ms": 21.0 + 9 * 7.5, "step_ms": [7.5] * 9, "output_tokens": 10}]
    row = summarize_iterations(runs, batch_size=1, output_len=10)
    assert row["decode_ms_per_step"] == pytest.approx(7.5)
    assert row["prefill_ms"] == pytest.approx(21.0)
    assert (row["decode_step_ms"]["count"], row["decode_step_ms"]["max"]) == (26, 13.0)  # the spread, kept


async def test_the_streaming_client_times_chunks_and_reports_refusals(unused_tcp_port):
    """run_level against a small aiohttp server: a stream whose last token chunk carries the finish
    reason (as vLLM's and octavo's) counts every token; a refusal is an error with its status and
    body; nothing hangs."""
    from aiohttp import web

    from octavo.bench.serve import Workload, run_level

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["max_tokens"] > 4:
            return web.json_response({"error": {"message": "too long"}}, status=400)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for index in range(body["max_tokens"]):
            last = index == body["max_tokens"] - 1
            chunk = {"choices": [{"index": 0, "text": f" t{index}", "finish_reason": "length" if last else None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        load = Workload(vocab_size=100, input_range=(8, 8), output_range=(4, 4), timeout_s=30.0)
        requests = load.requests(6, seed=0) + [BenchRequest([1, 2, 3], 5)]
        records, wall = await run_level(load, f"http://127.0.0.1:{unused_tcp_port}", "m", requests, 3, "test")
    finally:
        await runner.cleanup()
    ok, refused = records[:6], records[6]
    assert all(r["error"] is None and r["output_tokens"] == 4 and r["num_chunks"] == 4 for r in ok)
    assert all(r["ttft_ms"] > 0 and len(r["itl_ms"]) == 3 for r in ok) and wall > 0
    assert refused["error"].startswith("HTTP 400") and "too long" in refused["error"]


def test_results_record_the_runs_octavo_switches(monkeypatch):
    """An A/B of a kernel switch is told apart by its result files: the OCTAVO_* variables of the
    run are in env["knobs"] (the commit override is recorded as the commit, not as a knob)."""
    from octavo.bench.env import kernel_knobs

    monkeypatch.setenv("OCTAVO_GEMV_MAX_ROWS", "4")
    monkeypatch.setenv("OCTAVO_GIT_COMMIT", "abc")
    monkeypatch.setenv("UNRELATED", "1")
    knobs = kernel_knobs()
    assert knobs["OCTAVO_GEMV_MAX_ROWS"] == "4"
    assert "OCTAVO_GIT_COMMIT" not in knobs and "UNRELATED" not in knobs
