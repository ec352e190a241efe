"""Engine step traces: where a server's time went, by batch size and kind of step.

An engine started with OCTAVO_STEP_TRACE=FILE appends one JSON line per step to FILE: `started`
(time.perf_counter() at the step's start, in seconds), `duration` (seconds), `num_requests`,
`num_prefill_tokens` (prompt tokens computed in the step; 0 on a pure decode step), `k` (draft
tokens per request; 0: plain decode), `num_drafted`, `num_accepted` and `num_emitted` (tokens
appended over the batch). perf_counter is the machine's monotonic clock in every process, so the
windows in which the client ran its timed requests select the steps that served them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from octavo.bench.measure import percentile

KINDS = ("plain", "speculative", "prefill")


def read_steps(path: str | Path) -> list[dict]:
    """A trace file's steps; a line cut short (a server stopped mid-write) is skipped; [] when the
    file does not exist (an engine that does not trace, e.g. an older version of octavo)."""
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
    """"prefill" when the step computed prompt tokens, else "speculative" when it verified drafts,
    else "plain"."""
    if step["num_prefill_tokens"]:
        return "prefill"
    return "speculative" if step["k"] else "plain"


def in_windows(steps: Iterable[dict], windows: Sequence[Sequence[float]]) -> list[dict]:
    """The steps that started inside one of the [start, end] windows (perf_counter seconds)."""
    return [s for s in steps if any(start <= s["started"] <= end for start, end in windows)]


def summarize(steps: Sequence[dict]) -> list[dict]:
    """Per batch size and kind of step, then per kind over all batch sizes ("all"): the steps, their
    seconds and share of all the steps' time, the median step in ms, tokens emitted per step and the
    acceptance of their drafts."""
    groups: dict[tuple, list[dict]] = {}
    for step in steps:
        kind = step_kind(step)
        groups.setdefault((step["num_requests"], kind), []).append(step)
        groups.setdefault(("all", kind), []).append(step)
    total = sum(s["duration"] for s in steps) or 1.0
    rows = []
    for (batch, kind), group in sorted(groups.items(), key=lambda item: (item[0][0] == "all",
                                                                         item[0][0] if item[0][0] != "all" else 0,
                                                                         KINDS.index(item[0][1]))):
        seconds = sum(s["duration"] for s in group)
        drafted = sum(s["num_drafted"] for s in group)
        rows.append({"batch_size": batch, "kind": kind, "steps": len(group), "seconds": seconds,
                     "share": seconds / total, "step_ms_p50": 1e3 * percentile([s["duration"] for s in group], 50),
                     "tokens_per_step": sum(s["num_emitted"] for s in group) / len(group),
                     "acceptance_rate": sum(s["num_accepted"] for s in group) / drafted if drafted else None})
    return rows
