"""Torch references for the fused projections of gemv.py: the unfused ops one after the other, the
arithmetic the engine's CPU path runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octavo.kernels.elementwise_ref import rms_norm_ref, silu_and_mul_ref


def rms_norm_linear_ref(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                        bias: torch.Tensor | None = None, residual: torch.Tensor | None = None):
    """linear(rms_norm(x [+ residual])); with a residual, (that, x + residual)."""
    if residual is None:
        return F.linear(rms_norm_ref(x, norm_weight, eps), weight, bias)
    normed, residual = rms_norm_ref(x, norm_weight, eps, residual)
    return F.linear(normed, weight, bias), residual


def silu_and_mul_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(silu(gate) * up) for x = [gate | up]."""
    return F.linear(silu_and_mul_ref(x), weight, bias)
