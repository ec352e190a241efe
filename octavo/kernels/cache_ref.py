"""Torch references for the KV cache write (the oracle for cache.py's Triton kernel) and for the
rotary embedding fused with it (rotary.py's rotary_and_write_kv)."""

from __future__ import annotations

import torch

from octavo.kernels.elementwise_ref import rotary_ref


def write_kv_cache_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store key/value [T, Hkv, D] at flat slots (block * block_size + offset); slot < 0 is skipped
    (padding tokens of a captured CUDA graph batch)."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, key[valid].to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, value[valid].to(v_cache.dtype))


def rotary_and_write_kv_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """rotary_ref, then write_kv_cache_ref of the rotated key and the value; returns the rotated query."""
    query, key = rotary_ref(query, key, positions, cos_sin_cache)
    write_kv_cache_ref(key, value, k_cache, v_cache, slot_mapping)
    return query
