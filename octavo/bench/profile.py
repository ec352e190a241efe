"""What a torch-profiler trace of engine steps says (issue #21): how much of the wall time the GPU
is busy, and where each step's host milliseconds go, by the phases the engine marks
(octavo/runtime/profiler.py). `wait` is the GPU's lead over the host: near zero, the GPU waits."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from octavo.bench.measure import summarize

PHASE_PREFIX = "octavo::"  # octavo.runtime.profiler's (not imported: this module needs no torch)
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
TOP_KERNELS = 12


def load_events(path: str | Path) -> list[dict]:
    """The complete ('X') events of a Chrome trace, .json or .json.gz."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def on_host(event: dict) -> bool:
    """A host range (the GPU timeline repeats annotations as gpu_user_annotation)."""
    category = event.get("cat", "")
    return category not in DEVICE_CATEGORIES and not category.startswith("gpu_")


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarize_trace(events: list[dict]) -> dict:
    """Per-phase host ms per step, and the GPU's busy fraction over the recorded steps' span
    (None without device events, e.g. on a CPU)."""
    phases: dict[str, list[float]] = {}
    for event in events:
        if event.get("name", "").startswith(PHASE_PREFIX) and on_host(event):
            phases.setdefault(event["name"][len(PHASE_PREFIX):], []).append(event["dur"] / 1e3)
    steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("name") == PHASE_PREFIX + "step" and on_host(e))
    if not steps:
        raise ValueError("the trace holds no octavo::step range: was it recorded while the engine stepped?")
    span_start, span_end = steps[0][0], max(end for _, end in steps)
    wall_ms = (span_end - span_start) / 1e3
    device = [(max(e["ts"], span_start), min(e["ts"] + e["dur"], span_end)) for e in events
              if e.get("cat") in DEVICE_CATEGORIES]
    device = [(s, e) for s, e in device if e > s]
    busy_ms = union_length(device) / 1e3 if device else None
    kernels: dict[str, list[float]] = {}  # name -> durations (ms): which kernels a step's GPU time goes to
    for event in events:
        if event.get("cat") == "kernel" and span_start <= event["ts"] < span_end:
            kernels.setdefault(event.get("name", "?"), []).append(event["dur"] / 1e3)
    top = sorted(kernels.items(), key=lambda item: -sum(item[1]))[:TOP_KERNELS]
    return {
        "num_steps": len(steps), "wall_ms": wall_ms, "step_ms": summarize((end - start) / 1e3 for start, end in steps),
        "phases": {name: {"total_ms": sum(ms), "per_step_ms": sum(ms) / len(steps), "p50_ms": summarize(ms)["p50"],
                          "count": len(ms)} for name, ms in sorted(phases.items())},
        "device_busy_ms": busy_ms,
        "gpu_busy_fraction": busy_ms / wall_ms if busy_ms is not None and wall_ms > 0 else None,
        "num_device_events": len(device),
        "top_kernels": [{"name": name[:120], "per_step_ms": sum(ms) / len(steps), "calls_per_step": len(ms) / len(steps)}
                        for name, ms in top],
    }


def summarize_files(paths: list[str | Path]) -> dict:
    """One summary per trace file, by file name."""
    return {Path(p).name: summarize_trace(load_events(p)) for p in paths}


def markdown(profiles: dict) -> str:
    """A table per trace: host ms per step by phase, and the GPU-busy fraction."""
    from octavo.bench.report import table

    lines = []
    for name, summary in profiles.items():
        busy = summary["gpu_busy_fraction"]
        lines += [f"Profile `{name}`: {summary['num_steps']} steps over {summary['wall_ms']:.1f} ms "
                  f"(step p50 {summary['step_ms']['p50']:.2f} ms); GPU busy "
                  + (f"{busy:.0%}" if busy is not None else "n/a (no device events)") + " of that span.", "",
                  table(["phase", "ms per step", "p50 ms", "count"],
                        [[phase, f"{row['per_step_ms']:.3f}", f"{row['p50_ms']:.3f}", str(row["count"])]
                         for phase, row in summary["phases"].items()])]
        if summary.get("top_kernels"):
            lines += ["", table(["kernel", "ms per step", "calls per step"],
                                [[f"`{k['name'][:60]}`", f"{k['per_step_ms']:.3f}", f"{k['calls_per_step']:.1f}"]
                                 for k in summary["top_kernels"]])]
    return "\n".join(lines)
