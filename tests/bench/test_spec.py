"""`octavo bench spec`: the paired statistics (geometric mean, t interval, verdicts), the ABBA
schedule that gives every server the same requests in every round, the server counters, the step
trace summary, each arm's environment, and the CPU smoke runs end to end (the demo pair; an "old"
and a "new" octavo on the controlled pair)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import shutil
import statistics
from pathlib import Path

import pytest

from octavo.bench import chain_pair, measure, pairs, report, spec, trace
from octavo.bench.serve import (counter_deltas, imported_octavo, parse_counters, python_env, server_latency_means,
                                spec_summary)

HERE = Path(__file__).resolve().parent
needs_server = pytest.mark.skipif(importlib.util.find_spec("octavo.runtime.server") is None, reason="no server")


def width(interval) -> float:
    return interval[1] - interval[0]


# ---- statistics -----------------------------------------------------------------------------------
def test_geometric_mean():
    assert measure.geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
    assert measure.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    for bad in ([], [1.0, 0.0], [-1.0]):
        with pytest.raises(ValueError):
            measure.geometric_mean(bad)


@pytest.mark.parametrize("ratios", [[0.9, 1.1], [0.95, 1.02, 0.99, 1.08], [0.7, 1.4, 1.0, 0.85, 1.2, 0.92]])
def test_t_interval_is_centred_on_the_geometric_mean(ratios):
    low, high = measure.t_interval(ratios)
    mean = measure.geometric_mean(ratios)
    assert low < mean < high and (mean / low) == pytest.approx(high / mean)


def test_t_interval_matches_the_textbook():
    logs = [math.log(r) for r in (0.9, 1.0, 1.1, 1.05)]
    half = 2.353 * statistics.stdev(logs) / 2  # t(3) = 2.353, sqrt(4) = 2
    low, high = measure.t_interval([0.9, 1.0, 1.1, 1.05])
    assert math.log(high) - math.log(low) == pytest.approx(2 * half)
    low, high = measure.t_interval([1.2] * 5)
    assert low == pytest.approx(1.2) and high == pytest.approx(1.2)
    assert measure.t_interval([]) is None and measure.t_interval([1.1]) is None


def test_t_interval_widens_with_spread_and_narrows_with_rounds():
    assert 0 < width(measure.t_interval([0.98, 1.02, 1.0, 0.99, 1.01])) < width(
        measure.t_interval([0.8, 1.2, 1.0, 0.9, 1.1]))
    assert width(measure.t_interval([0.8, 1.2] * 4)) < width(measure.t_interval([0.8, 1.2]))


def test_t_interval_covers_about_ninety_percent():
    """At 4 rounds of normal log-ratios (sd 0.1, true ratio 1) the interval holds 1 about 90% of the
    time (the percentile bootstrap it replaced: about 74%)."""
    rng = random.Random(7)
    intervals = [measure.t_interval([math.exp(rng.gauss(0.0, 0.1)) for _ in range(4)]) for _ in range(2000)]
    assert 0.87 <= sum(low <= 1.0 <= high for low, high in intervals) / 2000 <= 0.93


def test_verdicts_and_spread():
    assert measure.verdict((1.02, 1.10)) == "better" and measure.verdict((0.90, 0.97)) == "worse"
    assert measure.verdict((0.97, 1.05)) == "no difference measured" and measure.verdict(None) == "too few rounds"
    # Latency: a ratio above 1 means B takes longer.
    assert measure.verdict((1.02, 1.10), higher_is_better=False) == "worse"
    result = measure.spread([90.0, 100.0, 110.0])
    assert (result["median"], result["min"], result["max"]) == (100.0, 90.0, 110.0)
    assert result["cv"] == pytest.approx(0.1) and measure.spread([5.0])["cv"] is None and measure.spread([]) is None


# ---- runs into level statistics -------------------------------------------------------------------
def fake_run(arm: int, instance: int, round_index: int, tps: float, ttft: float = 10.0, tpot: float = 1.0,
             errors: int = 0, counters: dict | None = None) -> dict:
    latency = {"count": 4 - errors}
    return {"arm": arm, "instance": instance, "round": round_index, "server_counters": counters,
            "summary": {"num_requests": 4, "num_errors": errors, "output_tokens_per_s": tps,
                        "ttft_ms": {**latency, "p50": ttft}, "tpot_ms": {**latency, "p50": tpot}},
            "untimed": {"num_requests": 1, "num_errors": 0}}


def test_round_values_pair_instance_means_and_drop_incomplete_rounds():
    runs = [fake_run(0, 0, 0, 100.0), fake_run(0, 1, 0, 120.0), fake_run(1, 0, 0, 130.0), fake_run(1, 1, 0, 90.0),
            fake_run(0, 0, 1, 100.0), fake_run(0, 1, 1, 100.0), fake_run(1, 0, 1, 100.0)]
    (row,) = spec.round_values(runs, "output_tokens_per_s", instances=2)  # round 1 lacks B #1
    assert row == {"round": 0, "a": 110.0, "b": 110.0, "ratio": 1.0}
    failed = [fake_run(0, 0, 0, 0.0, errors=4), fake_run(1, 0, 0, 50.0)]
    assert spec.round_values(failed, "ttft_ms_p50", instances=1) == []  # nothing measured: no pair


def test_level_stats():
    drafts = {"spec_decode_num_draft_tokens": 40.0, "spec_decode_num_accepted_tokens": 30.0,
              "spec_decode_num_emitted_tokens": 40.0, "generation_tokens": 48.0}
    runs = []
    for index, (plain, fast) in enumerate([(100.0, 120.0), (110.0, 121.0), (90.0, 117.0), (105.0, 126.0)]):
        runs += [fake_run(0, 0, index, plain, ttft=10.0, tpot=2.0, counters={"generation_tokens": 64.0}),
                 fake_run(1, 0, index, fast, ttft=12.0, tpot=1.0, counters=drafts)]
    stats = spec.level_stats(runs, instances=1)
    tps = stats["output_tokens_per_s"]
    assert tps["rounds"] == 4 and tps["verdict"] == "better" and tps["interval"][0] > 1
    assert tps["geomean"] == pytest.approx(measure.geometric_mean([1.2, 1.1, 1.3, 1.2]))
    assert stats["ttft_ms_p50"]["verdict"] == "worse" and stats["ttft_ms_p50"]["geomean"] == pytest.approx(1.2)
    assert stats["tpot_ms_p50"]["verdict"] == "better" and stats["tpot_ms_p50"]["geomean"] == pytest.approx(0.5)
    no_spec, with_draft = stats["arms"]
    assert no_spec["output_tokens_per_s"]["min"] == 90.0 and no_spec["output_tokens_per_s"]["max"] == 110.0
    assert no_spec["speculation"] is None and with_draft["tpot_ms_p50"]["median"] == 1.0
    speculation = with_draft["speculation"]  # counters summed over the four runs, then summarized
    assert speculation["drafted"] == 160 and speculation["acceptance_rate"] == pytest.approx(0.75)
    assert speculation["drafts_per_verification"] == pytest.approx(4.0)
    assert speculation["accepted_fraction"] == pytest.approx(30 / 48)
    assert stats["num_errors"] == 0
    assert spec.summed_counters([None, {"a": 1.0}, {"a": 2.0, "b": 1.0}]) == {"a": 3.0, "b": 1.0}
    assert spec.summed_counters([None, None]) is None


def test_round_order_alternates_and_seeds_are_per_round():
    assert spec.round_order(0, 1) == [(0, 0), (1, 0)] and spec.round_order(1, 1) == [(1, 0), (0, 0)]
    two = spec.round_order(0, 2)
    assert two == [(0, 0), (0, 1), (1, 0), (1, 1)] and spec.round_order(1, 2) == two[::-1]
    seeds = {spec.request_seed(0, c, r, u) for c in (1, 2, 4, 8, 16, 32, 64) for r in range(20) for u in (False, True)}
    assert len(seeds) == 7 * 20 * 2  # a seed per level, round and kind, whichever server runs


def test_arms_are_named_after_what_they_serve():
    args = argparse.Namespace(a_name=None, b_name=None, a_draft=False, b_draft=True, a_args="", b_args="",
                              a_pythonpath=None, b_pythonpath=None)
    assert [(a.name, a.draft) for a in spec.arms_from(args)] == [("no-spec", False), ("spec", True)]
    args.a_draft = True
    assert [a.name for a in spec.arms_from(args)] == ["spec-A", "spec-B"]


def test_counters_and_speculation_summary():
    text = "\n".join([
        "# TYPE octavo:generation_tokens_total counter",
        'octavo:generation_tokens_total{model_name="m"} 130.0',
        'octavo:spec_decode_num_draft_tokens_total{model_name="m"} 120.0',
        'octavo:spec_decode_num_accepted_tokens_total{model_name="m"} 84.0',
        'octavo:spec_decode_num_emitted_tokens_total{model_name="m"} 124.0',
        'octavo:spec_decode_draft_acceptance_rate{model_name="m"} 0.7',
        'octavo:request_success_total{finished_reason="length",model_name="m"} 2.0',
        'octavo:request_success_total{finished_reason="stop",model_name="m"} 1.0',
        'octavo:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 2.0',
        'octavo:time_to_first_token_seconds_sum{model_name="m"} 0.25',
        'octavo:time_to_first_token_seconds_count{model_name="m"} 3.0',
        'octavo:request_prompt_tokens_sum{model_name="m"} 99.0',
    ])
    counters = parse_counters(text)
    assert counters["generation_tokens"] == 130 and counters["request_success"] == 3
    assert "spec_decode_draft_acceptance_rate" not in counters
    assert "request_prompt_tokens_sum" not in counters and "time_to_first_token_seconds_bucket" not in counters
    before = {"time_to_first_token_seconds_sum": 0.1, "time_to_first_token_seconds_count": 1.0}
    assert server_latency_means(counter_deltas(before, counters)) == {"time_to_first_token": pytest.approx(75.0)}
    assert server_latency_means({"generation_tokens": 3.0}) is None
    summary = spec_summary(counter_deltas({"generation_tokens": 2.0}, counters))
    assert summary["acceptance_rate"] == pytest.approx(0.7) and summary["verifications"] == 40
    assert summary["tokens_per_verification"] == pytest.approx(3.1)
    assert summary["verified_fraction"] == pytest.approx(124 / 128)
    assert summary["accepted_fraction"] == pytest.approx(84 / 128)
    assert spec_summary({"generation_tokens": 5.0}) is None  # no draft: no speculation block


# ---- step traces ----------------------------------------------------------------------------------
def test_trace_summary_by_batch_size_and_kind():
    steps = trace.read_steps(HERE / "step_trace.jsonl")
    assert len(steps) == 9  # the last line was cut short
    timed = trace.in_windows(steps, [(9.9, 10.03)])
    assert len(timed) == 8  # the idle step at 99 s is outside the window
    rows = {(r["batch_size"], r["kind"]): r for r in trace.summarize(timed)}
    assert list(rows) == [(1, "plain"), (1, "speculative"), (2, "plain"), (2, "speculative"), (2, "prefill"),
                          ("all", "plain"), ("all", "speculative"), ("all", "prefill")]
    assert rows[2, "plain"]["steps"] == 2 and rows[2, "plain"]["seconds"] == pytest.approx(0.0022)
    assert rows[2, "plain"]["step_ms_p50"] == pytest.approx(1.1) and rows[2, "plain"]["tokens_per_step"] == 2
    assert rows[2, "speculative"]["acceptance_rate"] == pytest.approx(0.5)
    assert rows[2, "speculative"]["tokens_per_step"] == 6 and rows[1, "speculative"]["acceptance_rate"] == 1.0
    assert rows[2, "prefill"]["steps"] == 2 and rows[2, "prefill"]["seconds"] == pytest.approx(0.0065)
    assert rows["all", "speculative"]["share"] == pytest.approx(0.008 / 0.0175)
    assert sum(r["share"] for r in rows.values() if r["batch_size"] == "all") == pytest.approx(1.0)
    assert rows["all", "plain"]["acceptance_rate"] is None
    assert trace.read_steps(HERE / "no-such-trace.jsonl") == []


# ---- the arms' environments -----------------------------------------------------------------------
def test_an_arms_pythonpath_decides_which_octavo_its_server_imports(tmp_path, monkeypatch):
    """Another version's package first on PYTHONPATH wins over this checkout (servers start with -P,
    so the working directory, here the checkout itself, is not searched first)."""
    old = tmp_path / "old"
    (old / "octavo").mkdir(parents=True)
    (old / "octavo" / "__init__.py").write_text("")
    monkeypatch.chdir(Path(spec.__file__).resolve().parents[2])
    assert imported_octavo(python_env(str(old))) == str(old / "octavo" / "__init__.py")
    assert imported_octavo(python_env()) == str(Path(spec.__file__).resolve().parents[1] / "__init__.py")
    assert python_env(None, OCTAVO_STEP_TRACE="/tmp/x")["OCTAVO_STEP_TRACE"] == "/tmp/x"


def test_markdown_reports_levels_left_unrun():
    runs = []
    for index, (plain, fast) in enumerate([(100.0, 99.0), (104.0, 101.0)]):
        runs += [fake_run(0, 0, index, plain), fake_run(1, 0, index, fast)]
    settings = {"pairs": ["demo"], "num_speculative_tokens": 4, "instances": 1, "confidence": 0.9, "input_len": 128,
                "output_len": 128, "temperature": 0.0, "rounds": 4, "min_requests": 32, "requests_per_user": 4}
    env = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "command": "octavo bench spec", "time_utc": "now",
           "git_commit": "0" * 40, "versions": {}}
    doc = {"kind": "spec", "env": env, "settings": settings, "model": {"name": "demo"},
           "arms": [{"name": "old", "draft": True, "pythonpath": "/tmp/old"}, {"name": "new", "draft": True}],
           "pairs": [{"name": "demo", "servers": [], "levels": [
               {"concurrency": 1, "rounds_planned": 4, "runs": runs, "stats": spec.level_stats(runs, 1)},
               {"concurrency": 2, "rounds_planned": 4, "runs": [], "stats": spec.level_stats([], 1)}]}]}
    text = spec.markdown(doc)
    assert "| 1 | old | 2/4 |" in text and "| 2 | new | 0/4 |" in text and "ABBA" in text
    assert "tok/s new / old" in text and "`/tmp/old` first on PYTHONPATH" in text
    assert "server TTFT ms" not in text  # no latency histograms in these runs' counters


def test_the_servers_latency_means_are_summed_over_an_arms_runs():
    def histograms(ttft_s: float, queue_s: float, count: float) -> dict:
        return {"time_to_first_token_seconds_sum": ttft_s, "time_to_first_token_seconds_count": count,
                "request_queue_time_seconds_sum": queue_s, "request_queue_time_seconds_count": count}

    runs = [fake_run(0, 0, 0, 100.0, counters=histograms(1.0, 0.5, 10.0)),
            fake_run(0, 0, 1, 100.0, counters=histograms(3.0, 0.5, 10.0)),
            fake_run(1, 0, 0, 100.0, counters=None), fake_run(1, 0, 1, 100.0, counters=None)]
    old, new = spec.level_stats(runs, 1)["arms"]
    assert old["server_latency_ms"] == {"time_to_first_token": pytest.approx(200.0),
                                        "request_queue_time": pytest.approx(50.0)}
    assert new["server_latency_ms"] is None
    settings = {"pairs": ["paths"], "num_speculative_tokens": 4, "instances": 1, "confidence": 0.9, "input_len": 128,
                "output_len": 128, "temperature": 0.0, "rounds": 2, "min_requests": 32, "requests_per_user": 4}
    env = {"device": {"name": "cpu"}, "command": "octavo bench spec", "time_utc": "now", "git_commit": "0" * 40,
           "versions": {}}
    doc = {"kind": "spec", "env": env, "settings": settings, "model": {"name": "m"},
           "arms": [{"name": "old", "draft": False}, {"name": "new", "draft": False}],
           "pairs": [{"name": "paths", "servers": [], "levels": [
               {"concurrency": 64, "rounds_planned": 2, "runs": runs, "stats": spec.level_stats(runs, 1)}]}]}
    assert "| 64 | old | 200.0 | 50.0 | — |" in spec.markdown(doc)


# ---- end to end on the CPU ------------------------------------------------------------------------
SMALL = ["--concurrency", "1,2", "--rounds", "2", "--min-requests", "4", "--requests-per-user", "1",
         "--input-len", "16", "--output-len", "8", "--num-warmups", "0"]


@needs_server
def test_demo_pair_end_to_end(bench, tmp_path, monkeypatch):
    """Both servers up at once, levels 1 and 2, 2 rounds each, ABBA, traces asked for (the engine
    may not write them: the report says so). Numbers on a shared CPU mean nothing; the plumbing is
    what is checked."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, doc, files = bench("spec", *SMALL, "--trace", "--tag", "test")
    assert code == 0 and doc["kind"] == "spec"
    (entry,) = doc["pairs"]
    assert not entry["error"] and entry["prompt_text"].endswith("held-out-shakespeare.txt")
    assert [(s["arm"], "--speculative-model" in s["command"]) for s in entry["servers"]] == [("no-spec", False),
                                                                                          ("spec", True)]
    for level in entry["levels"]:
        stats = level["stats"]
        assert level["rounds_run"] == 2 and stats["num_errors"] == 0
        assert [(r["round"], r["arm"]) for r in level["runs"]] == [(0, 0), (0, 1), (1, 1), (1, 0)]
        for run in level["runs"]:
            assert run["summary"]["output_tokens"] == run["summary"]["num_requests"] * 8
            assert run["window"][0] < run["window"][1]
        for metric in spec.METRICS:
            low, high = stats[metric]["interval"]
            assert 0 < low <= stats[metric]["geomean"] <= high
        assert stats["arms"][0]["speculation"] is None and stats["arms"][1]["speculation"]["drafted"] >= 0
    assert set(entry["trace"]) == {"no-spec", "spec"}
    assert sum(f.endswith("-server.log") for f in files) == 2 and "| 2 | spec | 2/2 |" in spec.markdown(doc)
    # The report again from the JSON alone.
    (result,) = (tmp_path / "out").glob("*.json")
    assert report.markdown(report.load(str(result))) == result.with_suffix(".md").read_text()
    assert bench("report", str(result))[0] == 0


@needs_server
def test_two_versions_of_octavo_on_the_controlled_pair(bench, tmp_path, monkeypatch):
    """Arm A runs a copy of this octavo from its own PYTHONPATH, both arms with the draft, on a tiny
    controlled pair calibrated in a child process; the pair is reused when asked for again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = {**pairs.load_config("llama-3.1-8b"), "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
              "max_position_embeddings": 512, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 128}}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    old = tmp_path / "old"
    shutil.copytree(Path(spec.__file__).resolve().parents[1], old / "octavo",
                    ignore=shutil.ignore_patterns("__pycache__", "target", "draft"))
    workdir = tmp_path / "pair"
    code, doc, _ = bench("spec", *SMALL, "--pair", "controlled",
                         "--controlled-config", str(tmp_path / "tiny.json"), "--calibration-prompts", "2",
                         "--calibration-evals", "2", "--controlled-workdir", str(workdir), "--a-draft",
                         "--a-pythonpath", str(old), "--a-name", "old", "--b-name", "new", "--a-args",
                         "--max-num-seqs 8", "--dtype", "float32")
    assert code == 0
    (entry,) = doc["pairs"]
    assert not entry["error"] and [a["name"] for a in doc["arms"]] == ["old", "new"]
    servers = {s["arm"]: s for s in entry["servers"]}
    assert servers["old"]["octavo"] == str(old / "octavo" / "__init__.py")
    assert servers["new"]["octavo"] == str(Path(spec.__file__).resolve().parents[1] / "__init__.py")
    assert all("--speculative-model" in s["command"] for s in servers.values())
    assert "--max-num-seqs 8" in servers["old"]["command"] and "--max-num-seqs" not in servers["new"]["command"]
    made = entry["calibration"]
    assert made["request"]["draft_layers"] == 2 and len(made["evaluations"]) <= 2
    assert "o_proj" in entry["construction"] and "s = " in entry["construction"]
    assert entry["levels"][0]["stats"]["num_errors"] == 0
    assert pairs.controlled_pair(made["request"], workdir, 10.0)["reused"]


@needs_server
def test_a_chain_pair_of_two_shapes_end_to_end(bench, tmp_path, monkeypatch):
    """--pair chain: the pair's tables are written for the asked acceptance rate at the servers' k,
    every server loads them over dummy layers, and the draft arm's measured acceptance is reported
    beside the construction's."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=512, hidden_act="silu",
                  rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256, bos_token_id=1,
                  eos_token_id=2, tie_word_embeddings=False, num_attention_heads=4, num_key_value_heads=2)
    (tmp_path / "t.json").write_text(json.dumps({**common, "hidden_size": 64, "intermediate_size": 128,
                                                 "num_hidden_layers": 4}))
    (tmp_path / "d.json").write_text(json.dumps({**common, "hidden_size": 32, "intermediate_size": 64,
                                                 "num_hidden_layers": 1}))
    code, doc, _ = bench("spec", *SMALL, "--pair", "chain", "--chain-target", str(tmp_path / "t.json"),
                         "--chain-draft", str(tmp_path / "d.json"), "--chain-target-layers", "3",
                         "--chain-acceptance-rate", "0.5", "--num-speculative-tokens", "3",
                         "--controlled-workdir", str(tmp_path / "pairs"), "--dtype", "float32")
    assert code == 0
    (entry,) = doc["pairs"]
    assert not entry["error"]
    made = entry["construction_record"]
    assert made["target_shape"]["num_hidden_layers"] == 3 and made["draft_shape"]["hidden_size"] == 32
    assert made["k"] == 3 and made["rank"] == 32
    assert abs(made["agreement"] - chain_pair.agreement_for_rate(0.5, 3)) < 1e-9
    assert all("--load-format dummy" in s["command"] and "partial_checkpoint" in s["command"]
               for s in entry["servers"])
    assert "Chain pair" in entry["construction"] and "at k = 4" in entry["construction"]
    speculation = entry["levels"][0]["stats"]["arms"][1]["speculation"]
    assert speculation["drafted"] > 0 and 0 < speculation["accepted"] < speculation["drafted"]
