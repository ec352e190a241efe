"""Clocks that wait for the device, percentile summaries, and progress bars."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any


class DeviceClock:
    """perf_counter read after the device has finished its queued work, so host timestamps
    bracket device time (CUDA work is asynchronous)."""

    def __init__(self, device: Any = None) -> None:
        self._sync = None
        if device is not None and str(device).startswith("cuda"):
            import torch

            self._sync = lambda: torch.cuda.synchronize(device)

    def now(self) -> float:
        if self._sync is not None:
            self._sync()
        return time.perf_counter()


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Iterable[float]) -> dict[str, float]:
    """mean, p50, p90, p99, min, max (NaN-free: an empty input gives zeros and count 0)."""
    values = [float(v) for v in values]
    if not values:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "min": 0.0, "max": 0.0}
    return {
        "count": len(values),
        "mean": sum(values) / len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def progress(total: int | None, desc: str, unit: str = "it"):
    """A tqdm bar on stderr; redrawn at most every few seconds when stderr is not a terminal, so
    logs captured from a remote run stay readable."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5 if interactive else 10.0)
