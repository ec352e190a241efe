"""ALiBi head slopes (Press et al., "Train Short, Test Long", 2021), as BLOOM defines them.

For a power-of-two head count n the slopes are the geometric sequence r, r^2, ..., r^n with
r = 2^(-8/n). For any other count the first 2^floor(log2 n) heads take that sequence, and the
remaining heads take every other term (the odd powers) of the sequence for twice as many heads:
the paper's interpolation, which BLOOM and transformers follow.
"""

from __future__ import annotations

import math

import torch


def _geometric_slopes(num_heads: int) -> list[float]:
    ratio = 2.0 ** (-8.0 / num_heads)
    return [ratio ** power for power in range(1, num_heads + 1)]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The [num_heads] float32 slopes; head h's bias is slope[h] * -(query_pos - key_pos)."""
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one attention head, got {num_heads}")
    closest_power_of_two = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = _geometric_slopes(closest_power_of_two)
    if closest_power_of_two != num_heads:
        extra = _geometric_slopes(2 * closest_power_of_two)[0::2]
        slopes += extra[: num_heads - closest_power_of_two]
    return torch.tensor(slopes, dtype=torch.float32)
