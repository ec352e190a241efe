"""Engine step traces: where a server's time went, by batch size and kind of step.

OCTAVO_STEP_TRACE=FILE makes an engine append one JSON line per step (octavo/runtime/step_record.py):
`started` (perf_counter seconds, the same clock in every process, so the client's timed windows
select the steps that served them), `duration`, `num_requests`, `num_prefill_tokens`, `k`,
`num_drafted`, `num_accepted` and `num_emitted`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from octavo.bench.measure import percentile

KINDS = ("plain", "speculative", "prefill")


def read_steps(path: str | Path) -> list[dict]:
    """A trace file's steps, skipping a line cut short; [] without the file (an engine that does not trace)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return steps


def step_kind(step: dict) -> str:
    return "prefill" if step["num_prefill_tokens"] else "speculative" if step["k"] else "plain"


def in_windows(steps: Iterable[dict], windows: Sequence[Sequence[float]]) -> list[dict]:
    """The steps that started inside one of the [start, end] windows (perf_counter seconds)."""
    return [s for s in steps if any(start <= s["started"] <= end for start, end in windows)]


def summarize(steps: Sequence[dict]) -> list[dict]:
    """Per batch size and kind of step, then per kind over all batch sizes ("all"): steps, seconds,
    share of all the steps' time, median ms, tokens emitted per step and acceptance of their drafts."""
    groups: dict[tuple, list[dict]] = {}
    for step in steps:
        for batch in (step["num_requests"], "all"):
            groups.setdefault((batch, step_kind(step)), []).append(step)
    total = sum(s["duration"] for s in steps) or 1.0
    rows = []
    for (batch, kind), group in sorted(groups.items(), key=lambda item: (
            item[0][0] == "all", 0 if item[0][0] == "all" else item[0][0], KINDS.index(item[0][1]))):
        seconds = sum(s["duration"] for s in group)
        drafted = sum(s["num_drafted"] for s in group)
        rows.append({"batch_size": batch, "kind": kind, "steps": len(group), "seconds": seconds,
                     "share": seconds / total, "step_ms_p50": 1e3 * percentile([s["duration"] for s in group], 50),
                     "tokens_per_step": sum(s["num_emitted"] for s in group) / len(group),
                     "acceptance_rate": sum(s["num_accepted"] for s in group) / drafted if drafted else None})
    return rows
