"""Speculative vs plain decoding as a paired, interleaved, repeated A/B with a confidence interval.

Why: bench/spec_sweep.py serves a pair without the draft, sweeps c = 1..64, then serves it with
the draft and sweeps again, and divides. On the shipped demo pair (host-bound, ~1 ms steps) two
sweeps of the same commit differ by up to 26% in the no-spec server alone (c = 2: 1,975 vs 1,563
tok/s; c = 16: 6,307 vs 5,119), so one spec / no-spec ratio cannot say whether speculation costs
throughput. This script measures the difference against that noise:

  - Both servers (`octavo serve` of the target, and the same with `--speculative-model DRAFT
    --num-speculative-tokens K`) are launched once and stay up for the whole run; an idle server's
    engine thread waits on an event, so the one not under load does not disturb the other.
    `--instances N` launches N of each (different launches of one server differ too).
  - Per concurrency c, R rounds (`--rounds`). In a round every server runs once, in ABBA order:
    round 0 the no-spec instances then the spec ones, round 1 the mirror image, and so on, so a
    drift over the run weighs both variants alike. A run is one untimed round of c requests, then
    max(--min-requests, --requests-per-user x c) timed requests, c always in flight; every server
    of a round gets the same requests (seeded by level and round).
  - Per round the paired ratio spec / no-spec (with N instances, of each variant's mean over its
    instances); per level their geometric mean and a 90% interval over rounds (Student's t on the
    log-ratios; a percentile bootstrap was too narrow at 4-8 rounds, see t_interval). Verdict:
    "faster" when the interval lies above 1, "slower" below 1, "no difference measured" when it
    spans 1. The same for TTFT p50 and TPOT p50 (for those a
    ratio above 1 is slower). The no-spec anchor's own spread across rounds (min, max, coefficient
    of variation) says how large run-to-run noise is. Acceptance, tokens per verification and mean
    k are the spec servers' /metrics counter deltas summed over the level's runs.

Pairs: `demo` (default): the shipped demo pair (octavo-demo + octavo-demo-draft) on windows of the
held-out Shakespeare of bench/spec_sweep.py. `paths --target T --draft D`: any two checkpoints, e.g.
the controlled pair that `python bench/spec_sweep.py --keep-checkpoints` leaves in
/tmp/octavo-spec-sweep/checkpoints/{target,draft} (random-token prompts unless --prompt-text).

Memory: octavo's --gpu-memory-utilization caps the whole device's use (other processes included),
so the servers launch one after another and server i of M gets U x (i + 1) / M (U =
--gpu-memory-utilization, 0.9 by default): about U / M of the device each. Give your own
--gpu-memory-utilization or --num-gpu-blocks-override in --server-args to take over.

Outputs under --out: <date>-spec-ab-<device>[-tag].json (environment, settings, every run's level
summary and counters, per-level statistics; a .partial.json after every level), .md (the table and
the method) and the server logs. No new round starts once the run has used --time-budget seconds;
levels then report the rounds they got. Exit status 1 when any request failed.

    # device (H100), one instance each, c = 1..64, 4 rounds: about 4-5 minutes; fastapi, uvicorn
    # and pydantic as wheels in .whl (bench/README.md), carried with the call
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 bench/spec_ab.py --out $OUT
    # CPU smoke test: the demo pair, levels 1 and 2, 2 rounds of 4 short requests (under a minute)
    python bench/spec_ab.py --smoke --out /tmp/spec-ab-smoke
    # the Markdown again from a result
    python bench/spec_ab.py --report-from RESULT.json --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # octavo from this checkout, bench/spec_sweep.py beside this file
    sys.path.insert(0, str(REPO_ROOT))
if str(REPO_ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "bench"))

from spec_sweep import (LEVELS, check_server_packages, write_held_out_text,  # noqa: E402 (after the path)
                        write_json_atomically, write_result)

logger = logging.getLogger("octavo.spec_ab")

VARIANTS = ("no-spec", "spec")
CONFIDENCE = 0.90
# The compared metrics, and whether a higher value is better (throughput) or worse (latency).
METRICS = {"output_tokens_per_s": True, "ttft_ms_p50": False, "tpot_ms_p50": False}


# ---- statistics (pure) ----------------------------------------------------------------------------
def geometric_mean(values: Sequence[float]) -> float:
    """The mean of ratios that treats 2x and 0.5x as opposite and equal."""
    if not values or min(values) <= 0:
        raise ValueError(f"a geometric mean needs positive values, got {list(values)}")
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


# The 95th percentile of Student's t by degrees of freedom: the two-sided 90% interval's factor.
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740, 18: 1.734, 19: 1.729,
        20: 1.725, 25: 1.708, 30: 1.697, 40: 1.684, 60: 1.671, 120: 1.658}


def t_factor(dof: int) -> float:
    """t's 95th percentile at `dof` degrees of freedom (the table's next lower entry between rows:
    slightly wide, never narrow)."""
    return T_95[max(d for d in T_95 if d <= dof)] if dof <= 120 else 1.645


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """90% interval of the geometric mean of `values` (one paired ratio per round): Student's t on
    the log-ratios, mean +- t(n - 1) x standard error, back from logs. None below 2 values: one
    round says nothing about how much rounds differ. Why t and not a percentile bootstrap: with
    4-8 rounds a bootstrap interval is too narrow (a 90% one covered about 74% at 4 rounds and
    82% at 8, simulated on normal log-ratios); t's is exact for normal log-ratios at any n."""
    if len(values) < 2:
        return None
    if min(values) <= 0:
        raise ValueError(f"a geometric mean needs positive values, got {list(values)}")
    logs = [math.log(v) for v in values]
    n = len(logs)
    mean = math.fsum(logs) / n
    half = t_factor(n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return math.exp(mean - half), math.exp(mean + half)


def verdict(interval: Sequence[float] | None, higher_is_better: bool = True) -> str:
    """What the interval of spec / no-spec says: only a whole interval on one side of 1 is a finding."""
    if interval is None:
        return "too few rounds"
    low, high = interval
    if low > 1.0:
        return "faster" if higher_is_better else "slower"
    if high < 1.0:
        return "slower" if higher_is_better else "faster"
    return "no difference measured"


def spread(values: Sequence[float]) -> dict | None:
    """How much repeated measurements of one thing differ: median, min, max and the coefficient of
    variation (sample standard deviation / mean; None below 2 values)."""
    if not values:
        return None
    mean = math.fsum(values) / len(values)
    cv = statistics.stdev(values) / mean if len(values) >= 2 and mean else None
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": mean, "cv": cv}


def metric_value(run: dict, metric: str) -> float | None:
    """A run's value of a compared metric, None when no request of it succeeded."""
    summary = run["summary"]
    if summary["num_requests"] <= summary["num_errors"]:
        return None
    if metric == "output_tokens_per_s":
        return summary["output_tokens_per_s"]
    latency = summary[metric.removesuffix("_p50")]
    return latency["p50"] if latency["count"] else None


def round_values(runs: Sequence[dict], metric: str, instances: int) -> list[dict]:
    """Per complete round (every server ran and measured something): each variant's mean over its
    instances, and the paired ratio spec / no-spec."""
    rounds: dict[int, dict[str, list]] = {}
    for run in runs:
        rounds.setdefault(run["round"], {v: [] for v in VARIANTS})[run["variant"]].append(metric_value(run, metric))
    rows = []
    for index in sorted(rounds):
        groups = rounds[index]
        if any(len(groups[v]) != instances or any(x is None or x <= 0 for x in groups[v]) for v in VARIANTS):
            continue
        no_spec = math.fsum(groups["no-spec"]) / instances
        spec = math.fsum(groups["spec"]) / instances
        rows.append({"round": index, "no_spec": no_spec, "spec": spec, "ratio": spec / no_spec})
    return rows


def ratio_stats(rows: Sequence[dict], higher_is_better: bool) -> dict:
    """Geometric mean, t interval, range and verdict of the paired ratios of `rows`."""
    ratios = [row["ratio"] for row in rows]
    interval = t_interval(ratios)
    return {"rounds": len(ratios), "per_round": list(rows),
            "geomean": geometric_mean(ratios) if ratios else None,
            "interval": list(interval) if interval else None, "confidence": CONFIDENCE,
            "min": min(ratios) if ratios else None, "max": max(ratios) if ratios else None,
            "verdict": verdict(interval, higher_is_better)}


def summed_counters(deltas: Sequence[dict | None]) -> dict[str, float] | None:
    """The counter deltas of several runs added up (None when no run has counters)."""
    present = [d for d in deltas if d]
    if not present:
        return None
    total: dict[str, float] = {}
    for delta in present:
        for name, value in delta.items():
            total[name] = total.get(name, 0.0) + value
    return total


def level_stats(runs: Sequence[dict], instances: int) -> dict:
    """Everything the report says about one level, from its runs."""
    from octavo.bench.serve import spec_summary

    stats: dict[str, Any] = {name: ratio_stats(round_values(runs, name, instances), better)
                             for name, better in METRICS.items()}
    throughput = stats["output_tokens_per_s"]["per_round"]
    stats["spread"] = {"no-spec": spread([row["no_spec"] for row in throughput]),
                       "spec": spread([row["spec"] for row in throughput])}
    spec_runs = [run for run in runs if run["variant"] == "spec"]
    stats["speculation"] = spec_summary(summed_counters([run.get("server_counters") for run in spec_runs]))
    stats["num_errors"] = sum(run["summary"]["num_errors"] + run["untimed"]["num_errors"] for run in runs)
    return stats


# ---- the schedule (pure) --------------------------------------------------------------------------
def round_order(round_index: int, instances: int) -> list[tuple[str, int]]:
    """Who runs when in a round: even rounds every no-spec instance then every spec instance, odd
    rounds the mirror image (ABBA), so a linear drift over two rounds weighs each server alike."""
    forward = [(variant, instance) for variant in VARIANTS for instance in range(instances)]
    return forward if round_index % 2 == 0 else forward[::-1]


def request_count(concurrency: int, min_requests: int, requests_per_user: int) -> int:
    return max(min_requests, requests_per_user * concurrency)


def request_seed(base: int, concurrency: int, round_index: int, untimed: bool = False) -> int:
    """One seed per (level, round, untimed or timed), the same for every server of the round."""
    return base + 100_000 * (round_index + 1) + 1000 * concurrency + (500 if untimed else 0)


def run_rounds(concurrency: int, rounds: int, instances: int, requests_for: Callable[[int, int], tuple[Any, Any]],
               run_server: Callable[[str, int, int, Any, Any], dict], out_of_time: Callable[[], bool],
               runs: list[dict]) -> list[dict]:
    """One level: up to `rounds` rounds, each server once per round in round_order, all of them on
    the round's (untimed, timed) requests; no round starts once out_of_time(). Appends to `runs` as
    it goes (an interrupted level keeps what it measured) and returns it."""
    for index in range(rounds):
        if out_of_time():
            logger.warning("c = %d: no round %d (time budget spent)", concurrency, index)
            break
        untimed, timed = requests_for(concurrency, index)
        for position, (variant, instance) in enumerate(round_order(index, instances)):
            run = run_server(variant, instance, concurrency, untimed, timed)
            run.update(concurrency=concurrency, round=index, variant=variant, instance=instance, position=position)
            runs.append(run)
    return runs


# ---- the servers and the runs (I/O) ---------------------------------------------------------------
@dataclass
class Server:
    variant: str
    instance: int
    base_url: str
    model: str
    namespace: argparse.Namespace


class SpecAB:
    """The parent process: launches the servers, drives the rounds, keeps the result document."""

    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        from octavo.bench.env import device_slug, environment

        self.args = args
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        env = environment("auto")
        env["command"] = shlex.join(["python", "bench/spec_ab.py", *argv])
        self.cuda = env["device"].get("type") == "cuda"
        self.stem = "-".join([env["date"], "spec-ab", device_slug(env["device"])] + ([args.tag] if args.tag else []))
        self.servers: dict[tuple[str, int], Server] = {}
        self.doc: dict = {
            "kind": "spec-ab", "env": env,
            "settings": {
                "pair": args.pair, "concurrency": args.concurrency, "rounds": args.rounds,
                "instances": args.instances, "min_requests": args.min_requests,
                "requests_per_user": args.requests_per_user, "input_len": args.input_len,
                "output_len": args.output_len, "num_warmups": args.num_warmups, "temperature": args.temperature,
                "seed": args.seed, "num_speculative_tokens": args.num_speculative_tokens, "dtype": args.dtype,
                "time_budget_s": args.time_budget, "gpu_memory_utilization": args.gpu_memory_utilization,
                "server_args": args.server_args, "smoke": args.smoke, "confidence": CONFIDENCE,
                "interval": "student-t on log-ratios", "target": None, "draft": None,
                "prompt_text": None,
            },
            "servers": [], "levels": [], "total_seconds": None, "error": None,
        }

    # -- clock and files
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.elapsed() >= self.args.time_budget

    def save_partial(self) -> None:
        write_json_atomically(self.doc, self.out / f"{self.stem}.partial.json")

    # -- the pair
    def pair(self) -> tuple[str, str, str | None]:
        """(target, draft, prompt text file or None)."""
        args = self.args
        if args.pair == "paths":
            return str(Path(args.target).resolve()), str(Path(args.draft).resolve()), args.prompt_text
        from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR

        text = args.prompt_text
        if not text:
            text = str(write_held_out_text(self.out))
        return str(DEMO_TARGET_DIR), str(DEMO_DRAFT_DIR), text

    def namespace(self, target: str, draft: str | None, text: str | None, launch_index: int,
                  launches: int) -> argparse.Namespace:
        """One server's settings as `octavo bench serve` parses them, so every field its helpers
        read exists."""
        from octavo.bench import cli as bench_cli

        args = self.args
        argv = ["serve", "--model", target, "--launch", "--launch-timeout", str(args.launch_timeout),
                "--dtype", args.dtype, "--seed", str(args.seed),
                "--concurrency", ",".join(map(str, args.concurrency)),
                "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                "--prompts-per-user", str(args.requests_per_user), "--min-prompts-per-level", str(args.min_requests),
                "--warmup-each-level", "--temperature", str(args.temperature),
                "--request-timeout", str(args.request_timeout), "--out", str(self.out)]
        if args.num_warmups is not None:
            argv += ["--num-warmups", str(args.num_warmups)]
        if text:
            argv += ["--prompt-text", text]
        if draft:
            argv += ["--speculative-model", draft, "--num-speculative-tokens", str(args.num_speculative_tokens)]
        share = memory_share(args.gpu_memory_utilization, launch_index, launches)
        if self.cuda and not takes_memory_over(args.server_args):
            argv += ["--gpu-memory-utilization", f"{share:.4f}"]
        if args.server_args:
            argv += ["--server-args", args.server_args]
        parser = argparse.ArgumentParser(prog="octavo bench")
        bench_cli.add_arguments(parser)
        return parser.parse_args(argv)

    def launch(self, stack: contextlib.ExitStack, target: str, draft: str, text: str | None) -> tuple[Any, int]:
        """Every server, one after another (each measures free memory when it starts), warmed up."""
        from octavo.bench.models import resolve_model
        from octavo.bench.serve import launched_server, load_prompt_corpus, model_config, served_model_name, warm_up

        args = self.args
        spec = resolve_model(target, None, None, None)
        vocab_size = model_config(spec).get("vocab_size")
        if not isinstance(vocab_size, int):
            raise ValueError(f"{target}/config.json names no vocab_size; token-id prompts need one")
        order = [(variant, instance) for variant in VARIANTS for instance in range(args.instances)]
        corpus: argparse.Namespace | None = None
        for index, (variant, instance) in enumerate(order):
            namespace = self.namespace(target, draft if variant == "spec" else None, text, index, len(order))
            if text:  # tokenized once, shared: every server cuts the same windows
                if corpus is None:
                    load_prompt_corpus(namespace, spec)
                    corpus = namespace
                namespace.prompt_corpus_ids, namespace.prompt_bos_id = corpus.prompt_corpus_ids, corpus.prompt_bos_id
            log_path = self.out / f"{self.stem}-{variant}-{instance}-server.log"
            began = time.monotonic()
            base_url, command = stack.enter_context(launched_server(namespace, spec, str(log_path)))
            launched = time.monotonic() - began
            model = served_model_name(base_url, spec.path)
            warm_up(namespace, base_url, model, vocab_size)
            self.servers[(variant, instance)] = Server(variant, instance, base_url, model, namespace)
            self.doc["servers"].append({"variant": variant, "instance": instance, "command": shlex.join(command),
                                        "log": log_path.name, "launch_s": launched,
                                        "warm_up_s": time.monotonic() - began - launched})
            logger.info("%s #%d up in %.1f s (warm-up %.1f s)", variant, instance, launched,
                        self.doc["servers"][-1]["warm_up_s"])
            self.save_partial()
        return corpus or self.servers[order[0]].namespace, vocab_size

    def run(self) -> dict:
        args = self.args
        target, draft, text = self.pair()
        self.doc["settings"].update(target=target, draft=draft, prompt_text=text)
        with contextlib.ExitStack() as stack:
            client, vocab_size = self.launch(stack, target, draft, text)
            self.doc["settings"]["prompt_corpus_tokens"] = len(getattr(client, "prompt_corpus_ids", None) or []) or None

            def requests_for(concurrency: int, round_index: int) -> tuple[list, list]:
                from octavo.bench.serve import level_requests

                untimed = level_requests(client, concurrency, vocab_size, count=concurrency,
                                         seed=request_seed(args.seed, concurrency, round_index, untimed=True))
                timed = level_requests(client, concurrency, vocab_size,
                                       count=request_count(concurrency, args.min_requests, args.requests_per_user),
                                       seed=request_seed(args.seed, concurrency, round_index))
                return untimed, timed

            for concurrency in args.concurrency:
                level = {"concurrency": concurrency, "rounds_planned": args.rounds,
                         "requests_per_run": request_count(concurrency, args.min_requests, args.requests_per_user),
                         "runs": [], "stats": None}
                self.doc["levels"].append(level)
                try:
                    run_rounds(concurrency, args.rounds, args.instances, requests_for, self.run_server,
                               self.out_of_time, level["runs"])
                finally:
                    level["rounds_run"] = len({run["round"] for run in level["runs"]})
                    level["stats"] = level_stats(level["runs"], args.instances)
                    self.doc["total_seconds"] = self.elapsed()
                    self.save_partial()
                log_level(level)
        self.doc["total_seconds"] = self.elapsed()
        return self.doc

    def run_server(self, variant: str, instance: int, concurrency: int, untimed: list, timed: list) -> dict:
        """One run: the untimed round, then the timed requests between two /metrics scrapes."""
        from octavo.bench.serve import counter_deltas, run_level, scrape_counters, spec_summary, summarize_level

        args = self.args
        server = self.servers[(variant, instance)]
        started = self.elapsed()
        label = f"{variant} #{instance} c={concurrency}"
        warm, warm_wall = asyncio.run(run_level(server.base_url, server.model, untimed, concurrency,
                                                args.request_timeout, f"{label} untimed", args.temperature))
        before = scrape_counters(server.base_url)
        records, wall = asyncio.run(run_level(server.base_url, server.model, timed, concurrency, args.request_timeout,
                                              label, args.temperature))
        deltas = counter_deltas(before, scrape_counters(server.base_url))
        summary = summarize_level(concurrency, records, wall)
        errors = [r["error"] for r in warm + records if r["error"]]
        logger.info("%s: %.0f tok/s, TTFT p50 %.1f ms, TPOT p50 %.2f ms%s", label, summary["output_tokens_per_s"],
                    summary["ttft_ms"]["p50"], summary["tpot_ms"]["p50"],
                    f", {len(errors)} errors (first: {errors[0]})" if errors else "")
        return {"started_s": started,
                "untimed": {"num_requests": len(warm), "num_errors": sum(1 for r in warm if r["error"]),
                            "duration_s": warm_wall},
                "summary": summary, "server_counters": deltas, "spec": spec_summary(deltas), "errors": errors[:3]}


def memory_share(utilization: float, launch_index: int, launches: int) -> float:
    """The --gpu-memory-utilization of the launch_index-th of `launches` servers. octavo sizes its KV
    cache to total x utilization minus what the device already holds (other processes included), so
    cumulative shares, launched in order, give each server about utilization / launches."""
    return utilization * (launch_index + 1) / launches


def takes_memory_over(server_args: str) -> bool:
    """Whether --server-args sizes the KV cache itself (then the shares are not added)."""
    words = shlex.split(server_args or "")
    return any(w.split("=")[0] in ("--gpu-memory-utilization", "--num-gpu-blocks-override") for w in words)


def log_level(level: dict) -> None:
    stats = level["stats"]
    tps = stats["output_tokens_per_s"]
    if not tps["rounds"]:
        logger.info("c = %d: no complete round", level["concurrency"])
        return
    logger.info("c = %d: spec / no-spec tok/s %s over %d rounds: %s; no-spec CV %s", level["concurrency"],
                ratio_cell(tps), tps["rounds"], tps["verdict"], percent((stats["spread"]["no-spec"] or {}).get("cv")))


# ---- Markdown -------------------------------------------------------------------------------------
def number(value: float | None, digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def ratio_cell(stats: dict) -> str:
    """"1.03x [0.98–1.07]": geometric mean and interval of the paired ratios."""
    if stats["geomean"] is None:
        return "—"
    interval = stats["interval"]
    return f"{stats['geomean']:.3f}x" + (f" [{interval[0]:.3f}–{interval[1]:.3f}]" if interval else "")


def range_cell(values: dict | None) -> str:
    if not values:
        return "—"
    return f"{number(values['median'])} [{number(values['min'])}–{number(values['max'])}]"


def markdown(doc: dict) -> str:
    from octavo.bench.report import table

    env, settings = doc["env"], doc["settings"]
    versions = env.get("versions", {})
    commit = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    k, instances = settings["num_speculative_tokens"], settings["instances"]
    confidence = round(100 * settings["confidence"])
    lines = [
        f"## Speculative decoding A/B on {env['device'].get('name')}: {settings['pair']} pair",
        "",
        f"`{env['command']}`",
        "",
        f"{env['time_utc']} · commit {commit} · torch {versions.get('torch')} · triton {versions.get('triton')}"
        + (f" · {doc['total_seconds']:.0f} s in all" if doc.get("total_seconds") else ""),
        "",
        f"Target `{settings['target']}`, draft `{settings['draft']}` (adaptive k <= {k}), dtype {settings['dtype']}; "
        + (f"prompts are windows of `{Path(settings['prompt_text']).name}` in the target's tokens"
           if settings.get("prompt_text") else "prompts are random token ids")
        + f", {settings['input_len']} tokens in, {settings['output_len']} out (ignore_eos), temperature "
        f"{settings['temperature']}.",
        "",
        f"Method: {instances} no-spec and {instances} spec `octavo serve` instance{'s' if instances > 1 else ''} "
        "(the same target; spec adds the draft) are launched once and all stay up; a server without load "
        f"idles. Per concurrency c, up to {settings['rounds']} rounds; in each round every server runs once in "
        "ABBA order (even rounds no-spec first, odd rounds the mirror image, so a drift weighs both alike), "
        f"all on the same requests: one untimed round of c requests, then max({settings['min_requests']}, "
        f"{settings['requests_per_user']} x c) timed requests with c always in flight (streaming "
        "/v1/completions). Each round gives a paired ratio spec / no-spec of output tok/s"
        + (" (each variant's mean over its instances)" if instances > 1 else "")
        + f"; the table gives their geometric mean and a {confidence}% interval over rounds (Student's t on the "
        "log-ratios, n - 1 degrees of freedom). The verdict is \"faster\" or \"slower\" only when the whole "
        "interval lies on one side of 1, else \"no difference measured\". TTFT "
        "and TPOT columns are the same for the per-round p50s (above 1: spec is slower). Acceptance and mean k "
        "are the spec servers' /metrics counter deltas summed over the level (accepted / drafted; drafted / "
        "verified request-steps).",
        "",
    ]
    if doc.get("error"):
        lines += [f"**Failed**: {doc['error']}", ""]
    if doc.get("interrupted"):
        lines += ["**Interrupted**: the run was stopped before the end; what it measured is below.", ""]
    levels = doc.get("levels") or []
    head = ["c", "rounds", "no-spec tok/s median [min–max]", "spec tok/s median [min–max]",
            f"tok/s spec / no-spec [{confidence}% CI]", "verdict", f"TTFT p50 ratio [{confidence}% CI]",
            f"TPOT p50 ratio [{confidence}% CI]", "acceptance", "mean k"]
    body = []
    for level in levels:
        stats = level["stats"]
        tps, speculation = stats["output_tokens_per_s"], stats.get("speculation") or {}
        body.append([str(level["concurrency"]), f"{tps['rounds']}/{level['rounds_planned']}",
                     range_cell(stats["spread"]["no-spec"]), range_cell(stats["spread"]["spec"]), ratio_cell(tps),
                     tps["verdict"] if tps["rounds"] else "not run",
                     ratio_cell(stats["ttft_ms_p50"]), ratio_cell(stats["tpot_ms_p50"]),
                     number(speculation.get("acceptance_rate"), 3), number(speculation.get("drafts_per_verification"), 2)])
    if body:
        lines += [table(head, body)]
    noise = [level for level in levels if (level["stats"]["spread"]["no-spec"] or {}).get("n", 0) >= 2]
    if noise:
        lines += ["Run-to-run noise: the spread of each variant's tok/s over the rounds of a level (the same "
                  "server and requests each time). An interval narrower than this spread is what pairing and "
                  "repetition buy.", ""]
        rows = []
        for level in noise:
            no_spec, spec = level["stats"]["spread"]["no-spec"], level["stats"]["spread"]["spec"]
            ratios = level["stats"]["output_tokens_per_s"]
            rows.append([str(level["concurrency"]), f"{number(no_spec['min'])}–{number(no_spec['max'])}",
                         percent(no_spec["max"] / no_spec["min"] - 1), percent(no_spec["cv"]), percent(spec["cv"]),
                         f"{ratios['min']:.3f}–{ratios['max']:.3f}"])
        lines += [table(["c", "no-spec tok/s min–max", "no-spec max/min - 1", "no-spec CV", "spec CV",
                         "paired ratio min–max"], rows)]
    errors = sum(level["stats"]["num_errors"] for level in levels)
    if errors:
        lines += [f"**{errors} requests failed** (see `errors` in the runs of the JSON).", ""]
    short = [str(level["concurrency"]) for level in levels if level["stats"]["output_tokens_per_s"]["rounds"] < 2]
    if short:
        lines += [f"Levels with fewer than 2 complete rounds (no interval; time budget "
                  f"{settings['time_budget_s']:.0f} s): c = {', '.join(short)}.", ""]
    for server in doc.get("servers") or []:
        lines.append(f"- {server['variant']} #{server['instance']} (up in {server['launch_s']:.0f} s, log "
                     f"`{server['log']}`): `{server['command']}`")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- entry ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    from octavo.bench.cli import int_list

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench/results/spec-ab")
    parser.add_argument("--tag", help="appended to the result file names")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke test: the demo pair, levels 1 and 2, 2 rounds of 4 short requests")
    parser.add_argument("--report-from", help="a result JSON: write its Markdown to --out, run nothing")
    pair = parser.add_argument_group("pair")
    pair.add_argument("--pair", choices=["demo", "paths"], default="demo",
                      help="demo: the shipped demo pair on held-out Shakespeare; paths: --target and --draft")
    pair.add_argument("--target", help="with --pair paths: the target checkpoint directory")
    pair.add_argument("--draft", help="with --pair paths: the draft checkpoint directory")
    pair.add_argument("--num-speculative-tokens", type=int, default=4, help="k (the most adaptive k uses)")
    pair.add_argument("--dtype", default="auto")
    pair.add_argument("--prompt-text", help="a UTF-8 file whose windows are the prompts (default: demo: the held-out "
                                            "Shakespeare; paths: random token ids)")
    runs = parser.add_argument_group("rounds")
    runs.add_argument("--concurrency", type=int_list, default=None, help="default 1,2,4,8,16,32,64")
    runs.add_argument("--rounds", type=int, default=None, help="rounds per level (default 4)")
    runs.add_argument("--instances", type=int, default=1, help="servers of each variant (default 1)")
    runs.add_argument("--min-requests", type=int, default=None, help="timed requests per run = max(this, "
                                                                     "--requests-per-user x c) (default 32)")
    runs.add_argument("--requests-per-user", type=int, default=None, help="(default 4)")
    runs.add_argument("--input-len", type=int, default=None, help="prompt tokens (default 128)")
    runs.add_argument("--output-len", type=int, default=None, help="output tokens (default 128)")
    runs.add_argument("--num-warmups", type=int, default=None,
                      help="requests when a server starts (default: octavo bench serve's: 2 alone, then 2x the "
                           "largest c at it)")
    runs.add_argument("--temperature", type=float, default=0.0)
    runs.add_argument("--seed", type=int, default=0)
    runs.add_argument("--time-budget", type=float, default=None,
                      help="seconds: no round starts once the run (launches included) has used this (default 540)")
    servers = parser.add_argument_group("servers")
    servers.add_argument("--launch-timeout", type=float, default=300.0)
    servers.add_argument("--request-timeout", type=float, default=300.0)
    servers.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                         help="the device share all servers together use (CUDA); each gets about this / servers")
    servers.add_argument("--server-args", default="", help="extra `octavo serve` arguments for every server")
    args = parser.parse_args(argv)

    smoke = args.smoke
    defaults = {"concurrency": [1, 2] if smoke else LEVELS, "rounds": 2 if smoke else 4,
                "min_requests": 4 if smoke else 32, "requests_per_user": 1 if smoke else 4,
                "input_len": 16 if smoke else 128, "output_len": 8 if smoke else 128,
                "num_warmups": 0 if smoke else None, "time_budget": 240.0 if smoke else 540.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.concurrency = sorted(set(args.concurrency))
    if args.report_from:
        return args
    if args.pair == "paths" and not (args.target and args.draft):
        parser.error("--pair paths needs --target DIR and --draft DIR")
    if args.pair == "demo" and (args.target or args.draft):
        parser.error("--target and --draft go with --pair paths")
    if args.rounds < 1 or args.instances < 1 or args.num_speculative_tokens < 1:
        parser.error("--rounds, --instances and --num-speculative-tokens must be >= 1")
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        parser.error("--gpu-memory-utilization is a fraction in (0, 1]")
    return args


def report_from(args: argparse.Namespace) -> int:
    doc = json.loads(Path(args.report_from).read_text())
    stem = Path(args.report_from).name.removesuffix(".json").removesuffix(".partial")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(doc)
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / f'{stem}.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.report_from:
        return report_from(args)
    check_server_packages()
    if args.smoke:  # a tiny model on shared cores: one thread per process (the servers inherit it)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    ab = SpecAB(args, argv)
    try:
        ab.run()
    except KeyboardInterrupt:  # e.g. `timeout --signal=INT`: report what was measured
        logger.warning("interrupted: writing what was measured")
        ab.doc["interrupted"] = True
    except Exception as exc:  # a server that did not start, say: the report says so
        logger.exception("the A/B failed")
        ab.doc["error"] = f"{type(exc).__name__}: {exc}"
    doc = ab.doc
    doc["total_seconds"] = ab.elapsed()
    for level in doc["levels"]:  # a level cut short by an interrupt has runs but maybe stale stats
        level["rounds_run"] = len({run["round"] for run in level["runs"]})
        level["stats"] = level_stats(level["runs"], args.instances)
    text = markdown(doc)
    paths = write_result(doc, ab.out, ab.stem, text)
    print(text)
    for path in paths:
        print(f"wrote {path}")
    errors = sum(level["stats"]["num_errors"] for level in doc["levels"])
    return 1 if errors or doc.get("error") or doc.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
