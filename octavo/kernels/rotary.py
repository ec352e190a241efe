"""Rotary embedding in Triton, rotate-half (NeoX / HF Llama) layout, from the precomputed
[max_positions, rotary_dim] cos|sin cache; features past rotary_dim pass through (partial rotary).
Same signature and semantics as elementwise_ref.rotary_ref: returns new query and key tensors.
One program per token and block of heads, query and key in the same launch.

`rotary_and_write_kv` does the same and stores the rotated key and the value at their cache slots
in that launch (cache_ref.rotary_and_write_kv_ref): an eager step launches one Triton kernel less a
layer, and the rotated key is never written anywhere else."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo.kernels.cache import check_kv_write


@triton.jit
def rotation(positions_ptr, cos_sin_ptr, token, stride_cache, dims, ROTARY_DIM: tl.constexpr):
    """A token's rotation over feature indices `dims`: cos and sin at its position, each feature's
    partner and sign, and which features rotate (those past ROTARY_DIM pass through).
    out[d] = x[d] cos - x[d + half] sin (first half), x[d] cos + x[d - half] sin (second half)."""
    HALF: tl.constexpr = ROTARY_DIM // 2
    rotating = dims < ROTARY_DIM
    first_half = dims < HALF
    partner = tl.where(first_half, dims + HALF, dims - HALF)
    sign = tl.where(first_half, -1.0, 1.0)
    freq = tl.where(first_half, dims, dims - HALF)
    cache_row = cos_sin_ptr + tl.load(positions_ptr + token).to(tl.int64) * stride_cache
    cos = tl.load(cache_row + freq, mask=rotating, other=1.0)
    sin = tl.load(cache_row + HALF + freq, mask=rotating, other=0.0)
    return cos, sin, partner, sign, rotating


@triton.jit
def rotated(x, x_partner, cos, sin, sign, rotating, dtype: tl.constexpr):
    """x with its rotating features rotated (computed in float32, rounded to `dtype`), the rest as
    they were; cos, sin, sign and rotating are `rotation`'s, broadcast to x's shape."""
    out = x.to(tl.float32) * cos + (sign * x_partner.to(tl.float32)) * sin
    return tl.where(rotating, out.to(dtype), x)


@triton.jit
def rotate_heads(src_ptr, dst_ptr, stride_src_h, stride_dst_h, heads, num_heads, dims, cos, sin,
                 partner, sign, rotating, HEAD_DIM: tl.constexpr):
    mask = (heads < num_heads)[:, None] & (dims < HEAD_DIM)[None, :]
    x = tl.load(src_ptr + heads[:, None] * stride_src_h + dims[None, :], mask=mask, other=0.0)
    x_partner = tl.load(src_ptr + heads[:, None] * stride_src_h + partner[None, :],
                        mask=mask & rotating[None, :], other=0.0)
    out = rotated(x, x_partner, cos[None, :], sin[None, :], sign[None, :], rotating[None, :],
                  dst_ptr.dtype.element_ty)
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
    cos, sin, partner, sign, rotating = rotation(positions_ptr, cos_sin_ptr, token, stride_cache, dims, ROTARY_DIM)
    rotate_heads(q_ptr + token * stride_qt, q_out_ptr + token * stride_qot, stride_qh, stride_qoh,
                 heads, num_heads, dims, cos, sin, partner, sign, rotating, HEAD_DIM)
    rotate_heads(k_ptr + token * stride_kt, k_out_ptr + token * stride_kot, stride_kh, stride_koh,
                 heads, num_kv_heads, dims, cos, sin, partner, sign, rotating, HEAD_DIM)


def check_rotary(query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """query [T, H, D] and key [T, Hkv, D] of one head_dim, and an even rotary_dim no larger."""
    if query.dim() != 3 or key.dim() != 3 or query.shape[0] != key.shape[0]:
        raise ValueError(f"query [T, H, D] and key [T, Hkv, D] expected, got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    rotary_dim, head_dim = cos_sin_cache.shape[1], query.shape[2]
    if rotary_dim % 2 or rotary_dim > head_dim or key.shape[2] != head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_dim {head_dim}")


def rotary(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query [T, H, D] and key [T, Hkv, D] at positions [T]; returns new tensors."""
    check_rotary(query, key, cos_sin_cache)
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads, rotary_dim = key.shape[1], cos_sin_cache.shape[1]
    query, key = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key))
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


@triton.jit
def _rotary_write_kv_kernel(
    q_ptr, k_ptr, v_ptr, q_out_ptr, positions_ptr, cos_sin_ptr, slot_mapping_ptr, k_cache_ptr, v_cache_ptr,
    num_heads, num_kv_heads, block_size,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh, stride_cache,
    stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
    HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    cos, sin, partner, sign, rotating = rotation(positions_ptr, cos_sin_ptr, token, stride_cache, dims, ROTARY_DIM)
    rotate_heads(q_ptr + token * stride_qt, q_out_ptr + token * stride_qot, stride_qh, stride_qoh,
                 heads, num_heads, dims, cos, sin, partner, sign, rotating, HEAD_DIM)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:  # else a padding token (of a captured CUDA-graph batch): nothing to store
        block = slot // block_size
        offset = slot % block_size
        rotate_heads(k_ptr + token * stride_kt, k_cache_ptr + block * stride_kcb + offset * stride_kct,
                     stride_kh, stride_kch, heads, num_kv_heads, dims, cos, sin, partner, sign, rotating, HEAD_DIM)
        mask = (heads < num_kv_heads)[:, None] & (dims < HEAD_DIM)[None, :]
        v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
        v_dst = v_cache_ptr + block * stride_vcb + offset * stride_vct
        tl.store(v_dst + heads[:, None] * stride_vch + dims[None, :], v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_and_write_kv(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """Rotate query [T, H, D] and key [T, Hkv, D] at positions [T]; store the rotated key and value
    [T, Hkv, D] at flat slots of the [num_blocks, block_size, Hkv, D] caches (slot < 0: skipped).
    Returns the rotated query (a new tensor)."""
    check_rotary(query, key, cos_sin_cache)
    check_kv_write(key, value, k_cache, v_cache, slot_mapping)
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in head_dim")
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads, rotary_dim = key.shape[1], cos_sin_cache.shape[1]
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    cos_sin_cache = cos_sin_cache.float().contiguous()
    q_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0:
        return q_out
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(max(num_heads, num_kv_heads)), max(1, 2048 // block_d))
    grid = (num_tokens, triton.cdiv(max(num_heads, num_kv_heads), block_h))
    _rotary_write_kv_kernel[grid](
        query, key, value, q_out, positions, cos_sin_cache, slot_mapping, k_cache, v_cache,
        num_heads, num_kv_heads, k_cache.shape[1],
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        q_out.stride(0), q_out.stride(1), cos_sin_cache.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEAD_DIM=head_dim, ROTARY_DIM=rotary_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=4,
    )
    return q_out
