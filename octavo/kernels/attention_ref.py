"""Torch references for paged attention: the CPU path of the engine and the oracle for the
Triton kernels in attention.py (same signatures).

KV cache layout, per layer: k_cache and v_cache are [num_blocks, block_size, num_kv_heads, head_dim].
A request's token at absolute position p lives in block block_tables[b, p // block_size] at offset
p % block_size. The cache write for a step happens before attention, so every key a query may see
(cached prefix and the step's own tokens) is read through the block table.
"""

from __future__ import annotations

import torch


def gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> torch.Tensor:
    """The first seq_len cached entries of one request, in position order: [seq_len, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = cache.index_select(0, block_table[:num_blocks].long())
    return blocks.reshape(-1, cache.shape[2], cache.shape[3])[:seq_len]


def attention_bias(
    query_positions: torch.Tensor,
    seq_len: int,
    num_heads: int,
    alibi_slopes: torch.Tensor | None,
    sliding_window: int | None,
) -> torch.Tensor:
    """Additive bias [H or 1, q, k]: causal mask, optional sliding window, optional ALiBi."""
    key_positions = torch.arange(seq_len, device=query_positions.device)
    distance = query_positions[:, None] - key_positions[None, :]  # >= 0 where visible
    visible = distance >= 0
    if sliding_window is not None:
        visible &= distance < sliding_window
    bias = torch.zeros(visible.shape, dtype=torch.float32, device=query_positions.device)
    bias = bias.masked_fill(~visible, float("-inf"))[None]
    if alibi_slopes is not None:
        bias = bias + alibi_slopes.float()[:, None, None] * (-distance.float())[None]
    return bias.expand(num_heads if alibi_slopes is not None else 1, -1, -1)


def paged_attention_ref(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention for a flat batch of variable-length queries over paged K/V.

    query: [T, H, D], the step's new tokens of all requests concatenated.
    query_start_loc: [B + 1] int32, request b's queries are query[start[b]:start[b+1]].
    seq_lens: [B] int32, request b's full context length, its new tokens included; its queries sit
    at the last q_len positions of that context.
    Returns [T, H, D] in query's dtype; softmax in float32.
    """
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        q = query[starts[b] : starts[b + 1]]
        q_len = q.shape[0]
        if q_len == 0:
            continue
        k = gather_context(k_cache, block_tables[b], seq_len).float()
        v = gather_context(v_cache, block_tables[b], seq_len).float()
        k = k.repeat_interleave(group, dim=1)  # [S, H, D]
        v = v.repeat_interleave(group, dim=1)
        positions = torch.arange(seq_len - q_len, seq_len, device=query.device)
        scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
        scores = scores + attention_bias(positions, seq_len, num_heads, alibi_slopes, sliding_window)
        probs = torch.softmax(scores, dim=-1)
        out[starts[b] : starts[b + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out


def paged_decode_attention_ref(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """One query token per request ([B, H, D]) at position seq_lens[b] - 1."""
    batch = query.shape[0]
    query_start_loc = torch.arange(batch + 1, dtype=torch.int32, device=query.device)
    return paged_attention_ref(
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
        alibi_slopes, sliding_window,
    )


def paged_decode_attention_rotary_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """rotary_and_write_kv_ref, then paged_decode_attention_ref of the rotated query."""
    from octavo.kernels.cache_ref import rotary_and_write_kv_ref

    query = rotary_and_write_kv_ref(query, key, value, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
    return paged_decode_attention_ref(query, k_cache, v_cache, block_tables, seq_lens, scale, None, sliding_window)
