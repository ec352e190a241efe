"""Rotary embedding in Triton, rotate-half (NeoX / HF Llama) layout, from the precomputed
[max_positions, rotary_dim] cos|sin cache; features past rotary_dim pass through (partial rotary).
Same signature and semantics as elementwise_ref.rotary_ref: returns new query and key tensors.
One program per token and block of heads, query and key in the same launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(src_ptr, dst_ptr, stride_src_h, stride_dst_h, heads, num_heads, dims, cos, sin,
                  partner, sign, rotating, HEAD_DIM: tl.constexpr):
    mask = (heads < num_heads)[:, None] & (dims < HEAD_DIM)[None, :]
    x = tl.load(src_ptr + heads[:, None] * stride_src_h + dims[None, :], mask=mask, other=0.0)
    x_partner = tl.load(src_ptr + heads[:, None] * stride_src_h + partner[None, :],
                        mask=mask & rotating[None, :], other=0.0)
    rotated = x.to(tl.float32) * cos[None, :] + (sign[None, :] * x_partner.to(tl.float32)) * sin[None, :]
    out = tl.where(rotating[None, :], rotated.to(dst_ptr.dtype.element_ty), x)
    tl.store(dst_ptr + heads[:, None] * stride_dst_h + dims[None, :], out, mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cos_sin_ptr,
    num_heads, num_kv_heads,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cache,
    HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    HALF: tl.constexpr = ROTARY_DIM // 2
    rotating = dims < ROTARY_DIM
    first_half = dims < HALF
    # out[d] = x[d] cos - x[d + half] sin (first half), x[d] cos + x[d - half] sin (second half).
    partner = tl.where(first_half, dims + HALF, dims - HALF)
    sign = tl.where(first_half, -1.0, 1.0)
    freq = tl.where(first_half, dims, dims - HALF)
    position = tl.load(positions_ptr + token).to(tl.int64)
    cache_row = cos_sin_ptr + position * stride_cache
    cos = tl.load(cache_row + freq, mask=rotating, other=1.0)
    sin = tl.load(cache_row + HALF + freq, mask=rotating, other=0.0)
    _rotate_heads(q_ptr + token * stride_qt, q_out_ptr + token * stride_qot, stride_qh, stride_qoh,
                  heads, num_heads, dims, cos, sin, partner, sign, rotating, HEAD_DIM)
    _rotate_heads(k_ptr + token * stride_kt, k_out_ptr + token * stride_kot, stride_kh, stride_koh,
                  heads, num_kv_heads, dims, cos, sin, partner, sign, rotating, HEAD_DIM)


def rotary(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query [T, H, D] and key [T, Hkv, D] at positions [T]; returns new tensors."""
    if query.dim() != 3 or key.dim() != 3 or query.shape[0] != key.shape[0]:
        raise ValueError(f"query [T, H, D] and key [T, Hkv, D] expected, got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim % 2 or rotary_dim > head_dim or key.shape[2] != head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_dim {head_dim}")
    if query.stride(-1) != 1:
        query = query.contiguous()
    if key.stride(-1) != 1:
        key = key.contiguous()
    cos_sin_cache = cos_sin_cache.float().contiguous()
    q_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    k_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens == 0:
        return q_out, k_out
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(max(num_heads, num_kv_heads)), max(1, 2048 // block_d))
    grid = (num_tokens, triton.cdiv(max(num_heads, num_kv_heads), block_h))
    _rotary_kernel[grid](
        query, key, q_out, k_out, positions, cos_sin_cache,
        num_heads, num_kv_heads,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cos_sin_cache.stride(0),
        HEAD_DIM=head_dim, ROTARY_DIM=rotary_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=4,
    )
    return q_out, k_out
