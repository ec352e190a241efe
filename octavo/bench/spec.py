"""`octavo bench spec`: two live servers, arm A and arm B, compared as a paired, interleaved,
repeated A/B with a 90% t interval (by default the target alone against the target with its draft;
per-arm flags and PYTHONPATH compare any two configurations or versions of octavo). Sweeps run one
server after the other differed by up to 26% on their own, so every server stays up and each round
runs them all in ABBA order on the same requests; bench/README.md describes the method."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shlex
import time
from collections import Counter
from pathlib import Path
from typing import Any

from octavo.bench import chain_pair, pairs, trace
from octavo.bench.env import environment, settings
from octavo.bench.measure import CONFIDENCE, geometric_mean, spread, t_interval, verdict
from octavo.bench.report import file_stem, header, num, percent, table
from octavo.bench.serve import (Workload, imported_octavo, launched_server, python_env, serve_command,
                                served_model_name, server_latency_means, spec_summary)
from octavo.runtime.config import dtype_name

logger = logging.getLogger("octavo")

PAIRS = ("demo", "controlled", "chain", "paths")
PAIR_WEIGHTS = {"controlled": 1.5}  # shares of the time budget (an 8B pair starts and runs longer); others 1
# The compared metrics, and whether a higher value is better (throughput) or worse (latency).
METRICS = {"output_tokens_per_s": True, "ttft_ms_p50": False, "tpot_ms_p50": False}
DEMO_CONSTRUCTION = (
    "The shipped demo pair: octavo-demo (4.2M parameters, 4 layers) verifies octavo-demo-draft (0.9M, 2 layers), "
    "trained on 40 of Shakespeare's works (octavo/runtime/demo/DATA_CARD.md); prompts are windows of held-out "
    "text (Julius Caesar and Twelfth Night, the pair's validation plays) after BOS.")


@dataclasses.dataclass
class Arm:
    """One side: its label, whether its servers get the pair's draft, extra `octavo serve`
    arguments, and a PYTHONPATH entry put first in its servers' environment."""

    name: str
    draft: bool
    server_args: str = ""
    pythonpath: str | None = None


def arms_from(args: Any) -> list[Arm]:
    drafts = (args.a_draft, args.b_draft)
    names = [given or ("spec" if draft else "no-spec") for given, draft in zip((args.a_name, args.b_name), drafts)]
    if names[0] == names[1]:
        names = [f"{names[0]}-A", f"{names[1]}-B"]
    return [Arm(name, draft, extra, os.path.abspath(path) if path else None) for name, draft, extra, path in
            zip(names, drafts, (args.a_args, args.b_args), (args.a_pythonpath, args.b_pythonpath))]


# ---- the schedule and the statistics (pure) --------------------------------------------------------
def round_order(round_index: int, instances: int) -> list[tuple[int, int]]:
    """(arm, instance) in the order they run in a round: even rounds every A server then every B
    server, odd rounds the mirror image (ABBA), so a linear drift over two rounds weighs each alike."""
    forward = [(arm, instance) for arm in (0, 1) for instance in range(instances)]
    return forward if round_index % 2 == 0 else forward[::-1]


def request_seed(base: int, concurrency: int, round_index: int, untimed: bool = False) -> int:
    """One seed per (level, round, untimed or timed), the same for every server of the round."""
    return base + 100_000 * (round_index + 1) + 1000 * concurrency + (500 if untimed else 0)


def metric_value(run: dict, metric: str) -> float | None:
    """A run's value of a compared metric; None when no request of it succeeded."""
    summary = run["summary"]
    if summary["num_requests"] <= summary["num_errors"]:
        return None
    if metric == "output_tokens_per_s":
        return summary["output_tokens_per_s"]
    latency = summary[metric.removesuffix("_p50")]
    return latency["p50"] if latency["count"] else None


def round_values(runs: list[dict], metric: str, instances: int) -> list[dict]:
    """Per complete round (every server ran and measured something): each arm's mean over its
    instances and the paired ratio B / A."""
    rounds: dict[int, tuple[list, list]] = {}
    for run in runs:
        rounds.setdefault(run["round"], ([], []))[run["arm"]].append(metric_value(run, metric))
    rows = []
    for index, values in sorted(rounds.items()):
        if any(len(v) != instances or any(x is None or x <= 0 for x in v) for v in values):
            continue
        a, b = (math.fsum(v) / instances for v in values)
        rows.append({"round": index, "a": a, "b": b, "ratio": b / a})
    return rows


def ratio_stats(rows: list[dict], higher_is_better: bool) -> dict:
    ratios = [row["ratio"] for row in rows]
    interval = t_interval(ratios)
    return {"rounds": len(ratios), "per_round": rows, "geomean": geometric_mean(ratios) if ratios else None,
            "interval": list(interval) if interval else None, "min": min(ratios, default=None),
            "max": max(ratios, default=None), "verdict": verdict(interval, higher_is_better)}


def summed_counters(deltas: list[dict | None]) -> dict[str, float] | None:
    """Counter deltas of several runs added up (None when no run has counters)."""
    total: Counter = Counter()
    for delta in filter(None, deltas):
        total.update(delta)  # adds (zero and negative deltas kept, unlike Counter's +)
    return dict(total) or None


def level_stats(runs: list[dict], instances: int) -> dict:
    """Everything the report says about one level, from its runs."""
    stats: dict[str, Any] = {metric: ratio_stats(round_values(runs, metric, instances), better)
                             for metric, better in METRICS.items()}
    counters = [summed_counters([r["server_counters"] for r in runs if r["arm"] == arm]) for arm in (0, 1)]
    stats["arms"] = [{metric: spread([row["ab"[arm]] for row in stats[metric]["per_round"]]) for metric in METRICS}
                     | {"speculation": spec_summary(counters[arm]),
                        "server_latency_ms": server_latency_means(counters[arm])}
                     for arm in (0, 1)]
    stats["num_errors"] = sum(run["summary"]["num_errors"] + run["untimed"]["num_errors"] for run in runs)
    return stats


# ---- the runs (I/O) --------------------------------------------------------------------------------
class SpecBench:
    """The whole run: every pair in turn, its servers up for all of its levels and rounds."""

    def __init__(self, args: Any, save_partial) -> None:
        from octavo.bench.cli import engine_args
        from octavo.runtime.config import DEFAULT_NUM_SPECULATIVE_TOKENS

        self.args, self.save_partial = args, save_partial
        self.started = time.monotonic()
        self.arms = arms_from(args)
        self.k = args.num_speculative_tokens or DEFAULT_NUM_SPECULATIVE_TOKENS  # what the servers' engines default to
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        env = environment(args.device, args)
        self.cuda = env["device"].get("type") == "cuda"
        self.doc: dict = {"kind": "spec", "tag": args.tag, "env": env, "model": {"name": "+".join(args.pair)},
                          "arms": [dataclasses.asdict(arm) for arm in self.arms],
                          "settings": settings(args, num_speculative_tokens=self.k, confidence=CONFIDENCE,
                                               engine_flags=shlex.join(engine_args(args).to_cli_args())),
                          "pairs": [], "total_errors": 0, "total_seconds": None}

    def save(self) -> None:
        self.doc["total_seconds"] = time.monotonic() - self.started
        self.doc["total_errors"] = sum(level["stats"]["num_errors"] for entry in self.doc["pairs"]
                                       for level in entry["levels"] if level.get("stats"))
        self.save_partial(self.doc)

    def run(self) -> None:
        names = self.args.pair
        for index, name in enumerate(names):
            entry: dict = {"name": name, "servers": [], "levels": [], "error": None}
            self.doc["pairs"].append(entry)
            weights = [PAIR_WEIGHTS.get(n, 1.0) for n in names[index:]]
            left = self.args.time_budget - (time.monotonic() - self.started)
            try:
                self.run_pair(entry, time.monotonic() + left * weights[0] / sum(weights))
            except Exception as exc:  # a server that did not start, say: the other pairs still run
                logger.exception("pair %s failed", name)
                entry["error"] = f"{type(exc).__name__}: {exc}"
            self.save()

    def pair(self, entry: dict) -> tuple[str, str, str | None]:
        """(target, draft, prompt text or None) of the entry's pair; notes how it was made."""
        args = self.args
        if entry["name"] == "demo":
            from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR

            entry["construction"] = DEMO_CONSTRUCTION
            return str(DEMO_TARGET_DIR), str(DEMO_DRAFT_DIR), args.prompt_text or str(pairs.HELD_OUT_TEXT)
        if entry["name"] == "controlled":
            request = {"config": args.controlled_config, "draft_layers": args.draft_layers,
                       "scale": args.controlled_scale, "target_acceptance": args.target_acceptance, "tolerance": 0.03,
                       "scale_high": 0.1, "max_evals": args.calibration_evals, "k": self.k, "dtype": args.dtype,
                       "device": args.device, "seed": args.seed, "prompt_len": args.input_len,
                       "output_len": args.output_len, "prompts": args.calibration_prompts}
            made = entry["calibration"] = pairs.controlled_pair(request, Path(args.controlled_workdir),
                                                                args.calibration_timeout, python_env())
            entry["construction"] = pairs.construction_text(made)
            return made["target_dir"], made["draft_dir"], args.prompt_text
        if entry["name"] == "chain":
            made = entry["construction_record"] = self.chain(Path(args.controlled_workdir) / "chain")
            entry["construction"] = chain_pair.construction_text(made)
            entry["engine_changes"] = {"load_format": "dummy", "model_loader_extra_config": chain_pair.LOADER_EXTRA}
            return made["target_dir"], made["draft_dir"], args.prompt_text
        if not (args.target and args.draft):
            raise ValueError("--pair paths needs --target DIR and --draft DIR")
        entry["construction"] = f"Target {args.target}, draft {args.draft}."
        return str(Path(args.target).resolve()), str(Path(args.draft).resolve()), args.prompt_text

    def chain(self, out: Path) -> dict:
        """The chain pair asked for, written under `out` (the embedding, LM head and norms only)."""
        args = self.args
        if not (args.chain_target and args.chain_draft):
            raise ValueError("--pair chain needs --chain-target CONFIG and --chain-draft CONFIG")
        target = pairs.load_config(args.chain_target)
        if args.chain_target_layers:
            target["num_hidden_layers"] = args.chain_target_layers
        agreement = chain_pair.agreement_for_rate(args.chain_acceptance_rate, self.k)
        made = chain_pair.ensure(target, pairs.load_config(args.chain_draft), out, agreement, args.seed,
                                 dtype=dtype_name(args.dtype, "bfloat16"))
        return {**made, "acceptance_rate_asked": args.chain_acceptance_rate, "k": self.k}

    def run_pair(self, entry: dict, deadline: float) -> None:
        args = self.args
        target, draft, text = self.pair(entry)
        vocab_size = pairs.load_config(os.path.join(target, "config.json"))["vocab_size"]
        load = Workload(vocab_size, (args.input_len,) * 2, (args.output_len,) * 2, args.temperature,
                        args.request_timeout)
        if text:
            load.use_text(text, target)
        entry.update(target=target, draft=draft, prompt_text=text)
        with contextlib.ExitStack() as stack:
            if args.trace:  # after the servers stop (their last lines written), however the runs end
                stack.callback(lambda: entry.update(trace=self.trace_summary(entry)))
            servers = self.launch(stack, entry, target, draft, load)
            for concurrency in args.concurrency:
                count = max(args.min_requests, args.requests_per_user * concurrency)
                level = {"concurrency": concurrency, "rounds_planned": args.rounds, "requests_per_run": count,
                         "runs": [], "stats": None}
                entry["levels"].append(level)
                try:
                    for index in range(args.rounds):
                        if time.monotonic() >= deadline:
                            logger.warning("%s pair, c = %d: no round %d (time budget spent)", entry["name"],
                                           concurrency, index)
                            break
                        untimed = load.requests(concurrency, request_seed(args.seed, concurrency, index, True))
                        timed = load.requests(count, request_seed(args.seed, concurrency, index))
                        for position, (arm, instance) in enumerate(round_order(index, args.instances)):
                            run = self.run_server(servers[arm, instance], load, concurrency, untimed, timed,
                                                  f"{self.arms[arm].name} #{instance} c={concurrency} round {index}")
                            run.update(round=index, arm=arm, instance=instance, position=position)
                            level["runs"].append(run)
                finally:
                    level["rounds_run"] = len({run["round"] for run in level["runs"]})
                    level["stats"] = level_stats(level["runs"], args.instances)
                    self.save()
                tps = level["stats"]["output_tokens_per_s"]
                logger.info("%s pair, c = %d: %s / %s tok/s %s over %d rounds: %s", entry["name"], concurrency,
                            self.arms[1].name, self.arms[0].name, ratio_cell(tps), tps["rounds"], tps["verdict"])

    def launch(self, stack: contextlib.ExitStack, entry: dict, target: str, draft: str,
               load: Workload) -> dict[tuple[int, int], tuple[str, str]]:
        """Every server of the pair, one after another (each sizes its KV cache from the memory free
        when it starts), warmed up; returns (base URL, model name) by (arm, instance). The i-th of M
        gets --gpu-memory-utilization U x (i + 1) / M unless the flags size the KV cache."""
        from octavo.bench.cli import engine_args

        args = self.args
        order = round_order(0, args.instances)
        words = shlex.split(" ".join([args.server_args or ""] + [arm.server_args or "" for arm in self.arms]))
        sized = args.num_gpu_blocks_override or any(w.split("=")[0] in ("--gpu-memory-utilization",
                                                                          "--num-gpu-blocks-override") for w in words)
        servers = {}
        for index, (arm_index, instance) in enumerate(order):
            arm = self.arms[arm_index]
            changes = dict(entry.get("engine_changes") or {})
            if arm.draft:
                changes.update(speculative_model=draft, num_speculative_tokens=self.k)
            if self.cuda and not sized:
                changes["gpu_memory_utilization"] = round(args.gpu_memory_utilization * (index + 1) / len(order), 4)
            engine = engine_args(args, **changes)
            stem = f"{file_stem(self.doc)}-{entry['name']}-{arm.name}-{instance}"
            steps = self.out / f"{stem}-steps.jsonl"
            steps.unlink(missing_ok=True)
            env = python_env(arm.pythonpath, **({"OCTAVO_STEP_TRACE": str(steps)} if args.trace else {}))
            command = serve_command(target, engine, f"{args.server_args or ''} {arm.server_args or ''}")
            began = time.monotonic()
            base_url, command = stack.enter_context(launched_server(command, str(self.out / f"{stem}-server.log"),
                                                                    args.launch_timeout, env))
            launched = time.monotonic() - began
            model = served_model_name(base_url, target)
            load.warm_up(base_url, model, max(args.concurrency), args.num_warmups, args.seed)
            servers[arm_index, instance] = (base_url, model)
            entry["servers"].append({"arm": arm.name, "instance": instance, "command": shlex.join(command),
                                     "octavo": imported_octavo(env), "log": f"{stem}-server.log",
                                     "trace": steps.name if args.trace else None, "launch_s": launched,
                                     "warm_up_s": time.monotonic() - began - launched})
            logger.info("%s #%d up in %.1f s, octavo from %s", arm.name, instance, launched,
                        entry["servers"][-1]["octavo"])
            self.save()
        return servers

    def run_server(self, server: tuple[str, str], load: Workload, concurrency: int, untimed: list, timed: list,
                   label: str) -> dict:
        """One run: the untimed round, then the timed requests between two /metrics scrapes; the
        timed part's perf_counter window selects its engine steps from a trace."""
        warm, _ = load.run(*server, untimed, concurrency, f"{label} untimed")
        summary, records = load.measure(*server, timed, concurrency, label)
        errors = [r["error"] for r in warm + records if r["error"]]
        logger.info("%s: %.0f tok/s, TTFT p50 %.1f ms, TPOT p50 %.2f ms%s", label, summary["output_tokens_per_s"],
                    summary["ttft_ms"]["p50"], summary["tpot_ms"]["p50"],
                    f", {len(errors)} errors (first: {errors[0]})" if errors else "")
        return {"concurrency": concurrency, "window": summary.pop("window"), "summary": summary,
                "server_counters": summary.pop("server_counters"),
                "untimed": {"num_requests": len(warm), "num_errors": sum(1 for r in warm if r["error"])},
                "errors": errors[:3]}

    def trace_summary(self, entry: dict) -> dict:
        """Per arm: its servers' steps inside their timed windows, by batch size and kind."""
        summary = {}
        for arm_index, arm in enumerate(self.arms):
            steps, read = [], 0
            for server in (s for s in entry["servers"] if s["arm"] == arm.name):
                found = trace.read_steps(self.out / server["trace"])
                read += len(found)
                windows = [run["window"] for level in entry["levels"] for run in level["runs"]
                           if run["arm"] == arm_index and run["instance"] == server["instance"]]
                steps += trace.in_windows(found, windows)
            summary[arm.name] = {"steps_read": read, "steps_timed": len(steps), "rows": trace.summarize(steps)}
        return summary


def benchmark(args: Any, save_partial) -> dict:
    if args.model or args.speculative_model or args.speculative_config:
        raise ValueError("the pair names the model and the draft: give --pair (and --target/--draft with --pair "
                         "paths), not --model or --speculative-model/--speculative-config")
    if not args.pair or set(args.pair) - set(PAIRS):
        raise ValueError(f"--pair takes a comma list of {', '.join(PAIRS)}; got {','.join(args.pair)}")
    if args.rounds < 1 or args.instances < 1:
        raise ValueError("--rounds and --instances must be >= 1")
    bench = SpecBench(args, save_partial)
    try:
        bench.run()
    except KeyboardInterrupt:  # e.g. `timeout --signal=INT`: report what was measured
        logger.warning("interrupted: writing what was measured")
        bench.doc["interrupted"] = True
    bench.save()
    return bench.doc


# ---- Markdown --------------------------------------------------------------------------------------
def ratio_cell(stats: dict) -> str:
    """"1.030x [0.980–1.070]": the geometric mean of the paired ratios and its interval."""
    if stats["geomean"] is None:
        return "—"
    interval = stats["interval"]
    return f"{stats['geomean']:.3f}x" + (f" [{interval[0]:.3f}–{interval[1]:.3f}]" if interval else "")


def arm_text(arm: dict, k: int) -> str:
    return (f"**{arm['name']}**: " + (f"the pair's draft, adaptive k <= {k}" if arm["draft"] else "no draft")
            + (f", server args `{arm['server_args']}`" if arm.get("server_args") else "")
            + (f", `{arm['pythonpath']}` first on PYTHONPATH" if arm.get("pythonpath") else ""))


def level_rows(level: dict, names: tuple[str, str]) -> tuple[list[list[str]], list[str]]:
    """A level's per-arm rows and its row of B / A ratios."""
    stats, c = level["stats"], str(level["concurrency"])
    rows = []
    for name, arm in zip(names, stats["arms"]):
        speculation, tps = arm["speculation"] or {}, arm["output_tokens_per_s"] or {}
        rows.append([c, name, f"{stats['output_tokens_per_s']['rounds']}/{level['rounds_planned']}",
                     f"{num(tps.get('median'), 0)} [{num(tps.get('min'), 0)}–{num(tps.get('max'), 0)}]",
                     percent(tps.get("cv")), num((arm["ttft_ms_p50"] or {}).get("median"), 1),
                     num((arm["tpot_ms_p50"] or {}).get("median"), 2), num(speculation.get("acceptance_rate"), 3),
                     num(speculation.get("drafts_per_verification"), 2), percent(speculation.get("accepted_fraction"))])
    ratios = [c] + [ratio_cell(stats[m]) + (f", {names[1]} {stats[m]['verdict']}"
                                            if stats[m]["verdict"] in ("better", "worse") else "") for m in METRICS]
    return rows, ratios


def trace_lines(entry: dict) -> list[str]:
    """The step-trace table of a pair: rows over 1% of an arm's traced time, then all batch sizes."""
    body = [[name, str(row["batch_size"]), row["kind"], f"{row['steps']:,}", f"{row['seconds']:.2f}",
             percent(row["share"]), f"{row['step_ms_p50']:.3f}", f"{row['tokens_per_step']:.2f}",
             num(row["acceptance_rate"], 3)]
            for name, arm in entry["trace"].items() for row in arm["rows"]
            if row["share"] >= 0.01 or row["batch_size"] == "all"]
    missing = [name for name, arm in entry["trace"].items() if not arm["steps_read"]]
    return (["Engine steps during the timed runs (OCTAVO_STEP_TRACE), by batch size and kind of step, those over "
             "1% of the arm's traced step time (share), then all batch sizes (the JSON has every row).", ""]
            + ([table(["arm", "batch", "kind", "steps", "seconds", "share", "ms/step p50", "tokens/step",
                       "acceptance"], body)] if body else [])
            + ([f"No trace from {', '.join(missing)} (an engine that does not write OCTAVO_STEP_TRACE).", ""]
               if missing else []))


def markdown(doc: dict) -> str:
    settings = doc["settings"]
    names = tuple(arm["name"] for arm in doc["arms"])
    a, b = names
    confidence = round(100 * settings["confidence"])
    lines = [header(doc, f"Speculative A/B, {a} vs {b}").rstrip("\n"), "",
             f"Arms: A = {arm_text(doc['arms'][0], settings['num_speculative_tokens'])}; "
             f"B = {arm_text(doc['arms'][1], settings['num_speculative_tokens'])}.", "",
             f"Method (octavo/bench/spec.py): {settings['instances']} server(s) per arm, all kept up; per "
             f"concurrency c up to {settings['rounds']} rounds, each server once per round in ABBA order on the "
             f"round's requests: c untimed, then max({settings['min_requests']}, {settings['requests_per_user']} x c) "
             f"timed with c in flight ({settings['input_len']} tokens in, {settings['output_len']} out, temperature "
             f"{settings['temperature']}). Per arm: medians over rounds, tok/s coefficient of variation, and its "
             "/metrics counters (acceptance = accepted / drafted, mean k = drafted / verified request-steps). B / A: "
             f"geometric mean of the per-round paired ratios, {confidence}% interval over rounds (Student's t on "
             "log-ratios); a difference is named only when the whole interval lies on one side of 1.", ""]
    if doc.get("interrupted"):
        lines += ["**Interrupted**: the run was stopped before the end; what it measured is below.", ""]
    for entry in doc["pairs"]:
        lines += [f"### {entry['name']} pair", "", entry.get("construction") or "", ""]
        if entry.get("error"):
            lines += [f"**Failed**: {entry['error']}", ""]
        made = [level_rows(level, names) for level in entry["levels"]]
        if made:
            lines += [table(["c", "arm", "rounds", "output tok/s median [min–max]", "tok/s CV", "TTFT p50 ms",
                             "TPOT p50 ms", "acceptance", "mean k", "tokens from accepted drafts"],
                            [row for rows, _ in made for row in rows]),
                      table(["c", f"tok/s {b} / {a} [{confidence}% CI]", f"TTFT p50 {b} / {a}", f"TPOT p50 {b} / {a}"],
                            [ratios for _, ratios in made])]
        server = [[str(level["concurrency"]), name] + [num((arm.get("server_latency_ms") or {}).get(key), 1)
                                                        for key in ("time_to_first_token", "request_queue_time",
                                                                    "request_prefill_time")]
                  for level in entry["levels"] for name, arm in zip(names, level["stats"]["arms"])
                  if arm.get("server_latency_ms")]
        if server:
            lines += ["The server's own view, means over the timed runs from its /metrics histograms: TTFT from the "
                      "handler's call into the engine, queue = until the first step that schedules the request, "
                      "prefill = that step until the first token.", "",
                      table(["c", "arm", "server TTFT ms", "queue ms", "prefill ms"], server)]
        errors = sum(level["stats"]["num_errors"] for level in entry["levels"])
        if errors:
            lines += [f"**{errors} requests failed** (see `errors` in the runs of the JSON).", ""]
        if entry.get("trace"):
            lines += trace_lines(entry)
        lines += [f"- {s['arm']} #{s['instance']}: octavo from `{s['octavo']}`, up in {s['launch_s']:.0f} s, log "
                  f"`{s['log']}`: `{s['command']}`" for s in entry["servers"]] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"
