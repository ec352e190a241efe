"""Torch references for the fused elementwise kernels (norm.py, rotary.py, activation.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm in float32 (as transformers does). With residual: returns (norm(x + residual),
    x + residual), the sum being the next layer's residual stream."""
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
        residual = x
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * hidden.to(x.dtype)
    return out if residual is None else (out, residual)


def rotary_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query [T, H, D] and key [T, Hkv, D] (rotate-half / NeoX layout, as HF Llama).

    cos_sin_cache: [max_positions, rotary_dim] float32, cos in the first half, sin in the second.
    Only the first rotary_dim features rotate (partial rotary); the rest pass through.
    """
    rotary_dim = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache.index_select(0, positions.long()).chunk(2, dim=-1)
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
        half = rotary_dim // 2
        rotated_half = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = (rot * cos + rotated_half * sin).to(x.dtype)
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out

    return rotate(query), rotate(key)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: silu(gate) * up, gate being the first half."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
