"""Where a served engine's time goes, step by step: `octavo serve` with every engine step
recorded (its start, the draft's share, its end, what it computed) and every step time adaptive k
sampled, driven by `octavo bench serve` at a few concurrencies. Variants: no-spec; spec; spec with
the draft attached but never proposing (spec-no-propose); the draft loaded but the decoder never
consulted (spec-detached). Each server is launched afresh, so repeat the variants (--repeats,
interleaved): launches of the same server differ by up to 20% on one machine.

Why: a launch-bound pair (the demo) loses throughput to its draft in a server while an
in-process loop shows no cost; the trace says which steps grow (plain, speculative, prefill, the
draft's catch-up) and how much of each cycle is the engine's and how much is the gap in which the
event loop streams.

    python bench/step_trace.py --out /tmp/r/trace                  # demo pair, c = 1 and 4
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("no-spec", "spec", "spec-no-propose", "spec-detached")


# ---- the server side: `octavo serve` with its steps recorded -----------------------------------
def traced_serve(trace_path: str, variant: str, serve_args: list[str]) -> int:
    """Patch the engine to record each step, then run `octavo serve` in this process."""
    from octavo.runtime import engine as engine_module
    from octavo.runtime import spec_decode, spec_policy

    records: list[tuple] = []
    engines: list = []
    current: dict = {}
    step, execute = engine_module.LLMEngine.step, engine_module.LLMEngine._execute
    propose = spec_decode.SpecDecoder.propose

    def traced_step(self):
        if variant == "spec-detached" and self.spec_decoder is not None:
            self.detached_decoder, self.spec_decoder = self.spec_decoder, None  # loaded, never consulted
        engines[:] = [self]
        current.clear()
        start = time.perf_counter()
        outputs = step(self)
        end = time.perf_counter()
        records.append((start, end, current.get("propose", 0.0), current.get("batch", 0), current.get("tokens", 0),
                        current.get("spec", 0), current.get("prefill", 0), len(outputs), current.get("probe", 0),
                        current.get("catch_up", 0)))
        return outputs

    def traced_execute(self, sched):
        current["batch"] = len(sched.scheduled)
        current["tokens"] = sum(item.num_new_tokens for item in sched.scheduled)
        current["spec"] = sum(item.num_spec_tokens for item in sched.scheduled)
        current["prefill"] = sum(1 for item in sched.scheduled if item.num_new_tokens - item.num_spec_tokens > 1)
        return execute(self, sched)

    def traced_propose(self):
        start = time.perf_counter()
        if variant == "spec-no-propose":
            self._close_cycle(start)  # the cycle bookkeeping stays; no draft ever runs
            self._step_started, self._step_k, self._step_timed = start, 0, True
        else:
            propose(self)
        current["propose"] = time.perf_counter() - start
        probe = self.measured.probes.get(self.measured.bucket(max(len(self.engine.scheduler.running), 1)))
        current["probe"] = 0 if probe is None else (2 if probe[0] else 1)  # 2: speculative probe, 1: plain

    draft = spec_decode.SpecDecoder._draft

    def traced_draft(self, plan):
        current["catch_up"] = sum(request.num_tokens - self.sequences[request.request_id].num_computed_tokens
                                  if request.request_id in self.sequences else request.num_tokens
                                  for request, _ in plan)
        return draft(self, plan)

    samples: list[tuple] = []
    observe = spec_policy.MeasuredStepCost.observe

    def traced_observe(self, batch_size, k, seconds, tokens=None):
        samples.append((time.perf_counter(), len(records), batch_size, k, seconds, tokens))
        observe(self, batch_size, k, seconds, tokens)

    spec_policy.MeasuredStepCost.observe = traced_observe
    engine_module.LLMEngine.step = traced_step
    engine_module.LLMEngine._execute = traced_execute
    spec_decode.SpecDecoder.propose = traced_propose
    spec_decode.SpecDecoder._draft = traced_draft

    def dump() -> None:
        keys = ("start", "end", "propose", "batch", "tokens", "spec", "prefill", "outputs", "probe", "catch_up")
        state = {"steps": [dict(zip(keys, r)) for r in records]}
        decoder = getattr(engines[0], "spec_decoder", None) if engines else None
        if decoder is not None:  # what adaptive k believed at the end
            measured = decoder.measured
            state["measured"] = {"points": {str(b): p for b, p in measured.points.items()},
                                 "samples": {f"{b},{k}": n for (b, k), n in measured.samples.items()},
                                 "overall_acceptance": decoder.overall.rate}
            state["samples"] = [dict(zip(("time", "step", "batch", "k", "seconds", "tokens"), s)) for s in samples]
        Path(trace_path).write_text(json.dumps(state))

    atexit.register(dump)
    from octavo.cli import main as cli_main

    return cli_main(["serve", *serve_args])


# ---- the analysis --------------------------------------------------------------------------
def classify(record: dict) -> str:
    if record["batch"] == 0:
        return "empty"
    if record["prefill"]:
        return "prefill"
    if record["spec"]:
        return "spec"
    return "plain+draft" if record["propose"] > 2e-4 else "plain"


def busy_cycles(records: list[dict]):
    """(step, its cycle: to the next step's start) for every step but the last and those after
    which the engine went idle (a cycle over 50 ms: between levels)."""
    for record, after in zip(records, records[1:]):
        cycle = after["start"] - record["start"]
        if cycle <= 0.05:
            yield record, cycle


def summarize(records: list[dict]) -> dict:
    """Per kind of step: count, median step time, median cycle (to the next step's start, so the
    gap where the event loop runs is in it), median time in propose; and the busy share."""
    kinds: dict[str, dict[str, list[float]]] = {}
    for record, cycle in busy_cycles(records):
        entry = kinds.setdefault(classify(record), {"step": [], "cycle": [], "propose": [], "batch": []})
        entry["step"].append(record["end"] - record["start"])
        entry["cycle"].append(cycle)
        entry["propose"].append(record["propose"])
        entry["batch"].append(record["batch"])
    out = {}
    for kind, entry in sorted(kinds.items()):
        out[kind] = {"count": len(entry["step"]),
                     "step_ms_p50": 1e3 * statistics.median(entry["step"]),
                     "step_ms_mean": 1e3 * statistics.fmean(entry["step"]),
                     "cycle_ms_p50": 1e3 * statistics.median(entry["cycle"]),
                     "cycle_ms_mean": 1e3 * statistics.fmean(entry["cycle"]),
                     "propose_ms_mean": 1e3 * statistics.fmean(entry["propose"]),
                     "batch_mean": statistics.fmean(entry["batch"]),
                     "cycle_ms_total": 1e3 * sum(entry["cycle"])}
    return out


def plain_by_batch(records: list[dict]) -> dict[str, dict]:
    """Plain decode steps by batch size (at least 20 of them): count, and step and cycle p50 in ms."""
    by: dict[int, list[tuple[float, float]]] = {}
    for record, cycle in busy_cycles(records):
        if classify(record) == "plain":
            by.setdefault(record["batch"], []).append((record["end"] - record["start"], cycle))
    return {str(b): {"count": len(v), "step_ms_p50": 1e3 * statistics.median(s for s, _ in v),
                     "cycle_ms_p50": 1e3 * statistics.median(c for _, c in v)}
            for b, v in sorted(by.items()) if len(v) >= 20}


# ---- the driver ----------------------------------------------------------------------------
def cpu_list(text: str | None) -> set[int] | None:
    """"0-5,8" -> {0, 1, 2, 3, 4, 5, 8}; None or "" -> None (no pinning)."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def pinned(cpus: set[int] | None):
    """A preexec_fn that keeps the child (and its threads) on these CPUs, or None."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_variant(args: argparse.Namespace, variant: str, concurrency: int, repeat: int) -> dict:
    from octavo.bench.serve import free_port, stop, wait_ready

    out = Path(args.out) / f"{variant}-c{concurrency}-{repeat}"
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "steps.json"
    port = free_port()
    serve_args = [args.target, "--host", "127.0.0.1", "--port", str(port), "--seed", "0"]
    if variant != "no-spec":
        serve_args += ["--speculative-model", args.draft, "--num-speculative-tokens", str(args.k)]
    command = [sys.executable, __file__, "--serve", str(trace), variant, *serve_args]
    log_path = str(out / "server.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=pinned(args.server_cpus))
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(base_url, process, 300, log_path)
            client = [sys.executable, "-m", "octavo.cli", "bench", "serve", "--model", args.target,
                      "--base-url", base_url, "--concurrency", str(concurrency), "--input-len", "128",
                      "--output-len", "128", "--num-prompts", str(args.num_prompts), "--prompt-text",
                      args.prompt_text, "--out", str(out)]
            subprocess.run(client, check=True, cwd=REPO, stdout=subprocess.DEVNULL, preexec_fn=pinned(args.client_cpus))
        finally:
            stop(process)
    state = json.loads(trace.read_text())
    decisions = [line.split("octavo INFO ")[-1].strip() for line in Path(log_path).read_text().splitlines()
                 if "adaptive k:" in line]
    levels = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "steps.json"]
    level = levels[-1]["levels"][-1] if levels and levels[-1].get("levels") else {}
    return {"variant": variant, "concurrency": concurrency, "repeat": repeat, "server": shlex.join(command),
            "output_tok_s": level.get("output_tokens_per_s"), "tpot_ms_p50": level.get("tpot_ms", {}).get("p50"),
            "ttft_ms_p50": level.get("ttft_ms", {}).get("p50"), "steps": summarize(state["steps"]),
            "by_batch": plain_by_batch(state["steps"]),
            "measured": state.get("measured"), "decisions": decisions}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.exit(traced_serve(sys.argv[2], sys.argv[3], sys.argv[4:]))
    from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=str(DEMO_TARGET_DIR))
    parser.add_argument("--draft", default=str(DEMO_DRAFT_DIR))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1, help="run the variants this many times, interleaved")
    parser.add_argument("--prompt-text", help="default: the held-out text of bench/spec_sweep.py")
    parser.add_argument("--server-cpus", type=cpu_list, help="pin each server to these CPUs, e.g. 0-5")
    parser.add_argument("--client-cpus", type=cpu_list, help="pin the load generator to these CPUs, e.g. 8-11")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.prompt_text is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from spec_sweep import write_held_out_text

        args.prompt_text = str(write_held_out_text(Path(args.out)))
    results = []
    for repeat in range(args.repeats):
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for variant in args.variants.split(","):
                result = run_variant(args, variant, concurrency, repeat)
                results.append(result)
                print(json.dumps(result), flush=True)
    (Path(args.out) / "step-trace.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
