"""bench/spec_ab.py: the paired statistics (geometric mean, t interval, verdicts), the ABBA
schedule that gives every server the same requests in every round, and the CPU smoke run end to end."""

from __future__ import annotations

import importlib.util
import math
import random
import statistics

import pytest

from bench_scripts import load_bench_script, run_smoke


@pytest.fixture(scope="module")
def ab():
    return load_bench_script("spec_ab")


def width(interval) -> float:
    return interval[1] - interval[0]


# ---- statistics -----------------------------------------------------------------------------------
def test_geometric_mean(ab):
    assert ab.geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
    assert ab.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert ab.geometric_mean([1.3]) == pytest.approx(1.3)
    for bad in ([], [1.0, 0.0], [-1.0]):
        with pytest.raises(ValueError):
            ab.geometric_mean(bad)


@pytest.mark.parametrize("ratios", [[0.9, 1.1], [0.95, 1.02, 0.99, 1.08], [0.7, 1.4, 1.0, 0.85, 1.2, 0.92],
                                    [1.5, 1.6, 1.55, 1.7]])
def test_t_interval_is_centred_on_the_geometric_mean(ab, ratios):
    low, high = ab.t_interval(ratios)
    mean = ab.geometric_mean(ratios)
    assert low < mean < high and (mean / low) == pytest.approx(high / mean)


def test_t_interval_matches_the_textbook_and_is_degenerate_for_identical_ratios(ab):
    logs = [math.log(r) for r in (0.9, 1.0, 1.1, 1.05)]
    half = 2.353 * statistics.stdev(logs) / 2  # t(3) = 2.353, sqrt(4) = 2
    low, high = ab.t_interval([0.9, 1.0, 1.1, 1.05])
    assert math.log(high) - math.log(low) == pytest.approx(2 * half)
    low, high = ab.t_interval([1.2] * 5)
    assert low == pytest.approx(1.2) and high == pytest.approx(1.2)


def test_t_interval_widens_with_spread_and_narrows_with_rounds(ab):
    tight = ab.t_interval([0.98, 1.02, 1.0, 0.99, 1.01])
    loose = ab.t_interval([0.8, 1.2, 1.0, 0.9, 1.1])
    assert 0 < width(tight) < width(loose)
    assert width(ab.t_interval([0.8, 1.2] * 4)) < width(ab.t_interval([0.8, 1.2]))
    assert ab.t_factor(3) == 2.353 and ab.t_factor(22) == 1.725 and ab.t_factor(1000) == 1.645


def test_t_interval_covers_about_ninety_percent(ab):
    """What the bootstrap it replaced failed: at 4 rounds of normal log-ratios (sd 0.1, true ratio
    1), the interval holds 1 about 90% of the time (a percentile bootstrap: about 74%)."""
    rng = random.Random(7)
    trials = 2000
    covered = sum(low <= 1.0 <= high for low, high in
                  (ab.t_interval([math.exp(rng.gauss(0.0, 0.1)) for _ in range(4)]) for _ in range(trials)))
    assert 0.87 <= covered / trials <= 0.93


def test_fewer_than_two_rounds_give_no_interval(ab):
    assert ab.t_interval([]) is None and ab.t_interval([1.1]) is None
    stats = ab.ratio_stats([{"round": 0, "no_spec": 100.0, "spec": 110.0, "ratio": 1.1}], higher_is_better=True)
    assert stats["geomean"] == pytest.approx(1.1) and stats["interval"] is None
    assert stats["verdict"] == "too few rounds"
    empty = ab.ratio_stats([], higher_is_better=True)
    assert empty["rounds"] == 0 and empty["geomean"] is None and empty["verdict"] == "too few rounds"


def test_verdicts(ab):
    assert ab.verdict((1.02, 1.10)) == "faster"
    assert ab.verdict((0.90, 0.97)) == "slower"
    assert ab.verdict((0.97, 1.05)) == "no difference measured"
    assert ab.verdict((1.0, 1.0)) == "no difference measured"
    assert ab.verdict(None) == "too few rounds"
    # Latency: a ratio above 1 means spec takes longer.
    assert ab.verdict((1.02, 1.10), higher_is_better=False) == "slower"
    assert ab.verdict((0.90, 0.97), higher_is_better=False) == "faster"


def test_spread(ab):
    values = [90.0, 100.0, 110.0]
    result = ab.spread(values)
    assert result["median"] == 100.0 and result["min"] == 90.0 and result["max"] == 110.0
    assert result["cv"] == pytest.approx(10.0 / 100.0)
    assert ab.spread([5.0])["cv"] is None and ab.spread([]) is None


# ---- runs into level statistics -------------------------------------------------------------------
def fake_run(variant: str, instance: int, round_index: int, tps: float, ttft: float = 10.0, tpot: float = 1.0,
             errors: int = 0, counters: dict | None = None) -> dict:
    latency = lambda p50: {"count": 4 - errors, "p50": p50}  # noqa: E731
    return {"variant": variant, "instance": instance, "round": round_index,
            "summary": {"num_requests": 4, "num_errors": errors, "output_tokens_per_s": tps,
                        "ttft_ms": latency(ttft), "tpot_ms": latency(tpot)},
            "untimed": {"num_requests": 1, "num_errors": 0}, "server_counters": counters}


def test_round_values_pair_instance_means_and_drop_incomplete_rounds(ab):
    runs = [fake_run("no-spec", 0, 0, 100.0), fake_run("no-spec", 1, 0, 120.0),
            fake_run("spec", 0, 0, 130.0), fake_run("spec", 1, 0, 90.0),
            fake_run("no-spec", 0, 1, 100.0), fake_run("no-spec", 1, 1, 100.0), fake_run("spec", 0, 1, 100.0)]
    (row,) = ab.round_values(runs, "output_tokens_per_s", instances=2)  # round 1 lacks spec #1
    assert row == {"round": 0, "no_spec": 110.0, "spec": 110.0, "ratio": 1.0}
    failed = [fake_run("no-spec", 0, 0, 0.0, errors=4), fake_run("spec", 0, 0, 50.0)]
    assert ab.round_values(failed, "ttft_ms_p50", instances=1) == []  # nothing measured: no pair


def test_level_stats(ab):
    drafts = {"spec_decode_num_draft_tokens": 40.0, "spec_decode_num_accepted_tokens": 30.0,
              "spec_decode_num_emitted_tokens": 40.0, "generation_tokens": 48.0}
    runs = []
    for index, (plain, fast) in enumerate([(100.0, 120.0), (110.0, 121.0), (90.0, 117.0), (105.0, 126.0)]):
        runs += [fake_run("no-spec", 0, index, plain, ttft=10.0, tpot=2.0, counters={"generation_tokens": 64.0}),
                 fake_run("spec", 0, index, fast, ttft=12.0, tpot=1.0, counters=drafts)]
    stats = ab.level_stats(runs, instances=1)
    tps = stats["output_tokens_per_s"]
    assert tps["rounds"] == 4 and tps["verdict"] == "faster" and tps["interval"][0] > 1
    assert tps["geomean"] == pytest.approx(ab.geometric_mean([1.2, 1.1, 1.3, 1.2]))
    assert stats["ttft_ms_p50"]["verdict"] == "slower" and stats["ttft_ms_p50"]["geomean"] == pytest.approx(1.2)
    assert stats["tpot_ms_p50"]["verdict"] == "faster" and stats["tpot_ms_p50"]["geomean"] == pytest.approx(0.5)
    assert stats["spread"]["no-spec"]["min"] == 90.0 and stats["spread"]["no-spec"]["max"] == 110.0
    speculation = stats["speculation"]  # counters summed over the four spec runs, then summarized
    assert speculation["drafted"] == 160 and speculation["acceptance_rate"] == pytest.approx(0.75)
    assert speculation["drafts_per_verification"] == pytest.approx(4.0)
    assert stats["num_errors"] == 0
    assert ab.summed_counters([None, {"a": 1.0}, {"a": 2.0, "b": 1.0}]) == {"a": 3.0, "b": 1.0}
    assert ab.summed_counters([None, None]) is None


# ---- the schedule ---------------------------------------------------------------------------------
def test_round_order_alternates(ab):
    assert ab.round_order(0, 1) == [("no-spec", 0), ("spec", 0)]
    assert ab.round_order(1, 1) == [("spec", 0), ("no-spec", 0)]
    assert ab.round_order(2, 1) == ab.round_order(0, 1)
    two = ab.round_order(0, 2)
    assert two == [("no-spec", 0), ("no-spec", 1), ("spec", 0), ("spec", 1)]
    assert ab.round_order(1, 2) == two[::-1]
    for index in range(4):
        assert sorted(ab.round_order(index, 3)) == sorted((v, i) for v in ("no-spec", "spec") for i in range(3))


def test_every_server_runs_every_round_on_the_same_requests(ab):
    calls = []

    def requests_for(concurrency, round_index):
        return (f"untimed-{concurrency}-{round_index}", f"timed-{concurrency}-{round_index}")

    def run_server(variant, instance, concurrency, untimed, timed):
        calls.append((variant, instance, untimed, timed))
        return {}

    runs = ab.run_rounds(8, 3, 2, requests_for, run_server, lambda: False, [])
    assert len(runs) == 3 * 4
    for index in range(3):
        in_round = [r for r in runs if r["round"] == index]
        assert [(r["variant"], r["instance"]) for r in in_round] == ab.round_order(index, 2)
        assert [r["position"] for r in in_round] == [0, 1, 2, 3] and all(r["concurrency"] == 8 for r in in_round)
    for index in range(3):
        requests = {(u, t) for v, i, u, t in calls[4 * index: 4 * index + 4]}
        assert requests == {(f"untimed-8-{index}", f"timed-8-{index}")}  # one request set per round

    # Out of time after two rounds: the third does not start.
    budget = iter([False, False, True])
    runs = ab.run_rounds(2, 3, 1, requests_for, lambda *a: {}, lambda: next(budget), [])
    assert sorted({r["round"] for r in runs}) == [0, 1] and len(runs) == 4


def test_request_seeds_counts_and_memory_shares(ab):
    seeds = {ab.request_seed(0, c, r, u) for c in (1, 2, 4, 8, 16, 32, 64) for r in range(20) for u in (False, True)}
    assert len(seeds) == 7 * 20 * 2  # a seed per level, round and kind, whichever server runs
    assert ab.request_count(1, 32, 4) == 32 and ab.request_count(64, 32, 4) == 256
    assert [ab.memory_share(0.9, i, 2) for i in range(2)] == pytest.approx([0.45, 0.9])
    assert ab.takes_memory_over("--gpu-memory-utilization 0.4") and ab.takes_memory_over("--num-gpu-blocks-override=9")
    assert not ab.takes_memory_over("--enforce-eager") and not ab.takes_memory_over("")


def test_markdown_reports_levels_left_unrun(ab):
    runs = []
    for index, (plain, fast) in enumerate([(100.0, 99.0), (104.0, 101.0)]):
        runs += [fake_run("no-spec", 0, index, plain), fake_run("spec", 0, index, fast)]
    settings = {"pair": "demo", "num_speculative_tokens": 4, "instances": 1, "confidence": 0.9, "target": "t",
                "draft": "d", "dtype": "auto", "prompt_text": None, "input_len": 128, "output_len": 128,
                "temperature": 0.0, "rounds": 4, "min_requests": 32, "requests_per_user": 4,
                "interval": "student-t on log-ratios", "time_budget_s": 540.0}
    env = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "command": "python bench/spec_ab.py", "time_utc": "now",
           "git_commit": "0" * 40, "versions": {"torch": "2", "triton": "3"}}
    doc = {"env": env, "settings": settings, "total_seconds": 100.0, "servers": [],
           "levels": [{"concurrency": 1, "rounds_planned": 4, "runs": runs, "stats": ab.level_stats(runs, 1)},
                      {"concurrency": 2, "rounds_planned": 4, "runs": [], "stats": ab.level_stats([], 1)}]}
    text = ab.markdown(doc)
    assert "| 1 | 2/4 |" in text and "| 2 | 0/4 |" in text and "not run" in text
    assert "c = 2" in text and "Run-to-run noise" in text and "ABBA" in text


# ---- the smoke mode, end to end ------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("octavo.runtime.server") is None, reason="no server")
def test_smoke_ab_end_to_end(tmp_path):
    """The demo pair on the CPU: both servers up at once, levels 1 and 2, 2 rounds each, then the
    report again from the JSON. Numbers on a shared CPU mean nothing; the plumbing is what is checked."""
    out = tmp_path / "out"
    result, doc = run_smoke("spec_ab", out, timeout=180)
    assert doc["kind"] == "spec-ab" and doc["env"]["command"].startswith("python bench/spec_ab.py --smoke")
    assert not doc["error"] and not list(out.glob("*.partial.json"))
    assert [(s["variant"], s["instance"]) for s in doc["servers"]] == [("no-spec", 0), ("spec", 0)]
    assert "--speculative-model" in doc["servers"][1]["command"]
    assert "--speculative-model" not in doc["servers"][0]["command"]
    assert [level["concurrency"] for level in doc["levels"]] == [1, 2]
    for level in doc["levels"]:
        stats = level["stats"]
        assert level["rounds_run"] == 2 and stats["num_errors"] == 0
        assert [(r["round"], r["variant"]) for r in level["runs"]] == [(0, "no-spec"), (0, "spec"), (1, "spec"),
                                                                       (1, "no-spec")]
        for run in level["runs"]:
            assert run["summary"]["output_tokens"] == run["summary"]["num_requests"] * 8 == 32
            assert (run["spec"] is None) == (run["variant"] == "no-spec")
        for metric in ("output_tokens_per_s", "ttft_ms_p50", "tpot_ms_p50"):
            assert stats[metric]["rounds"] == 2 and all(r["ratio"] > 0 for r in stats[metric]["per_round"])
            low, high = stats[metric]["interval"]
            assert 0 < low <= stats[metric]["geomean"] <= high and not math.isnan(high)
        assert stats["speculation"]["drafted"] >= 0
    assert len(list(out.glob("*-server.log"))) == 2

    markdown = (out / result.name.replace(".json", ".md")).read_text()
    assert "ABBA" in markdown and "| 1 | 2/2 |" in markdown and "| 2 | 2/2 |" in markdown
    again = tmp_path / "again"
    assert load_bench_script("spec_ab").main(["--report-from", str(result), "--out", str(again)]) == 0
    assert (again / result.name.replace(".json", ".md")).read_text() == markdown
