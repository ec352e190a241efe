"""Arrival counters for kernels whose last program to finish a piece of work combines the
partial results of the others (the split decode attention's merge): one int32 per piece in
global memory, so no second kernel is launched to combine them.

Each counter is zero between launches: the program that arrives last resets its own. CUDA graphs
therefore replay them as captured. Launches that share a device run one after another on its
stream, so every kernel there can share one buffer; it is never freed, only outgrown (a captured
graph keeps a pointer to the buffer it was captured with).
"""

from __future__ import annotations

import torch

_MIN_COUNTERS = 4096
_HELD: dict[torch.device, list[torch.Tensor]] = {}


def arrival_counters(count: int, device: torch.device) -> torch.Tensor:
    """At least `count` zeroed int32 counters on `device`."""
    held = _HELD.setdefault(device, [])
    if not held or held[-1].numel() < count:
        size = max(count, _MIN_COUNTERS, 2 * held[-1].numel() if held else 0)
        held.append(torch.zeros(size, dtype=torch.int32, device=device))
    return held[-1]
