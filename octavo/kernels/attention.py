"""Paged attention in Triton: the decode kernel (flash-decoding split-K) and the prefill/extend
kernel (variable-length causal queries over a cached prefix). Same signatures and semantics as
attention_ref.py; the KV cache layout is described there.

Both kernels serve a whole GQA group per program: the query rows of a tile are
(token, head-in-group) pairs, so each K/V tile is read once for all the query heads that share it.

Decode (`paged_decode_attention`) is memory-bound: the floor is the bytes of K and V it reads.
One request's context is cut into `num_partitions` equal parts processed in parallel; the last
program of a (request, KV head) to finish merges the partial softmaxes (an arrival counter in
global memory), so there is no second kernel. The number of parts depends only on tensor shapes
(batch, KV heads, block_tables.shape[1]) so that a CUDA graph captured once replays correctly for
any sequence lengths; each request's own length is split evenly inside the kernel, so no program
idles as long as the context has more than `num_partitions * BLOCK_N` tokens.

Prefill (`paged_attention`) is the flash-attention forward pass with the keys gathered through
the block table. The grid is sized from tensor shapes (no host sync): every request owns
`query_start_loc[b] // BLOCK_Q + b`.. slots, a program finds its request by binary search, and
programs past a request's last query tile return at once.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from octavo.kernels.arrival import arrival_counters
from octavo.kernels.cache import check_kv_write
from octavo.kernels.rotary import check_rotary, rotated, rotation

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634
# Finite stand-in for -inf as the running max: keeps exp2(m_old - m_new) free of inf - inf.
_NEG_INIT = -1.0e30

# Decode: a program's partition gets at least this many tokens (it amortises loading the query
# and writing a partial result), and at most this many partitions per request.
_MIN_PARTITION_TOKENS = 16 if _INTERPRET else 256
_MAX_PARTITIONS = 256
# Decode: programs of the default config resident on one multiprocessor at once (H100, head_dim
# 128, bf16: 226 registers x 64 threads and 39 KB of shared memory each -> 4). Splitting aims at
# one full wave of them: a second, partly filled wave costs as much as a full one.
_PROGRAMS_PER_SM = 4


# --------------------------------------------------------------------------------------------
# Scalars that change from step to step (batch size, block-table width, partitions): Triton
# would compile a variant for each of 1, multiples of 16 and the rest, and a new variant in the
# middle of serving stalls every request for the length of a compile.
_PER_STEP_SCALARS_DECODE = ["sliding_window", "num_partitions", "stride_bt"]
_PER_STEP_SCALARS_PREFILL = ["sliding_window", "num_seqs", "stride_bt", "QLEN_HINT"]


# Decode
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_PER_STEP_SCALARS_DECODE)
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, alibi_ptr,
    out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr, counters_ptr,
    k_new_ptr, v_new_ptr, positions_ptr, cos_sin_ptr, slot_mapping_ptr,
    qk_scale, sliding_window, num_partitions,
    stride_qb, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_bt,
    stride_ob, stride_oh,
    stride_knb, stride_knh, stride_vnb, stride_vnh, stride_cos,
    NUM_Q_PER_KV: tl.constexpr, BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, MERGE_G: tl.constexpr, MERGE_P: tl.constexpr,
    ROTARY: tl.constexpr, ROTARY_DIM: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)

    seq_len = tl.load(seq_lens_ptr + seq)
    start = 0
    if HAS_WINDOW:
        start = tl.maximum(seq_len - sliding_window, 0)
    # Split this request's visible keys [start, seq_len) evenly, in whole BLOCK_N tiles.
    tokens_per_part = tl.cdiv(tl.cdiv(seq_len - start, num_partitions), BLOCK_N) * BLOCK_N
    part_start = start + part * tokens_per_part
    part_end = tl.minimum(part_start + tokens_per_part, seq_len)

    rows = tl.arange(0, BLOCK_G)
    heads = kv_head * NUM_Q_PER_KV + rows
    row_mask = rows < NUM_Q_PER_KV
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM

    q_rows = q_ptr + seq * stride_qb + heads[:, None] * stride_qh
    q_mask = row_mask[:, None] & dim_mask[None, :]
    q = tl.load(q_rows + dims[None, :], mask=q_mask, other=0.0)
    if ROTARY:
        # This step's rotary embedding and K/V write, done here rather than in a kernel of their
        # own: the query is rotated as it is loaded, and the program whose partition holds the
        # new key rotates it and stores it and the value at the token's slot before reading keys.
        cos, sin, partner, sign, rotating = rotation(positions_ptr, cos_sin_ptr, seq, stride_cos, dims, ROTARY_DIM)
        q_partner = tl.load(q_rows + partner[None, :], mask=q_mask & rotating[None, :], other=0.0)
        q = rotated(q, q_partner, cos[None, :], sin[None, :], sign[None, :], rotating[None, :], q.dtype)
        slot = tl.load(slot_mapping_ptr + seq).to(tl.int64)
        if (slot >= 0) & (seq_len - 1 >= part_start) & (seq_len - 1 < part_end):
            k_row = k_new_ptr + seq.to(tl.int64) * stride_knb + kv_head * stride_knh
            k = tl.load(k_row + dims, mask=dim_mask, other=0.0)
            k_partner = tl.load(k_row + partner, mask=dim_mask & rotating, other=0.0)
            k = rotated(k, k_partner, cos, sin, sign, rotating, k.dtype)
            v = tl.load(v_new_ptr + seq.to(tl.int64) * stride_vnb + kv_head * stride_vnh + dims, mask=dim_mask)
            block = slot // KV_BLOCK_SIZE
            offset = slot % KV_BLOCK_SIZE
            tl.store(k_cache_ptr + block * stride_kb + offset * stride_kt + kv_head * stride_kh + dims,
                     k.to(k_cache_ptr.dtype.element_ty), mask=dim_mask)
            tl.store(v_cache_ptr + block * stride_vb + offset * stride_vt + kv_head * stride_vh + dims,
                     v.to(v_cache_ptr.dtype.element_ty), mask=dim_mask)
        tl.debug_barrier()  # the stores before any thread of this program loads the new key
    q = q.to(k_cache_ptr.dtype.element_ty)
    if HAS_ALIBI:
        slopes = tl.load(alibi_ptr + heads, mask=row_mask, other=0.0) * 1.4426950408889634

    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)

    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh
    for tile_start in range(part_start, part_end, BLOCK_N):
        tokens = tile_start + tl.arange(0, BLOCK_N)
        token_mask = tokens < part_end
        blocks = tl.load(block_table + tokens // KV_BLOCK_SIZE, mask=token_mask, other=0).to(tl.int64)
        offsets = tokens % KV_BLOCK_SIZE
        k_rows = blocks * stride_kb + offsets * stride_kt
        v_rows = blocks * stride_vb + offsets * stride_vt
        k = tl.load(k_head + k_rows[None, :] + dims[:, None],
                    mask=token_mask[None, :] & dim_mask[:, None], other=0.0)
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        if HAS_ALIBI:
            scores += slopes[:, None] * (tokens - (seq_len - 1)).to(tl.float32)[None, :]
        scores = tl.where(token_mask[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + v_rows[:, None] + dims[None, :],
                    mask=token_mask[:, None] & dim_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # l_i == 0 only for an empty partition (or an empty context): write zeros, not NaN.
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    if SPLIT:
        # Partials are [batch, kv_heads, partitions, group, head_dim]: one (request, KV head)'s
        # are contiguous for the merge below.
        group_row = (seq * tl.num_programs(1) + kv_head) * num_partitions
        part_row = (group_row + part) * NUM_Q_PER_KV + rows
        tl.store(part_max_ptr + part_row, m_i, mask=row_mask)
        tl.store(part_sum_ptr + part_row, l_i, mask=row_mask)
        tl.store(part_out_ptr + part_row[:, None] * HEAD_DIM + dims[None, :], out,
                 mask=row_mask[:, None] & dim_mask[None, :])
        # The last of this (request, KV head)'s programs to finish merges every partial: no
        # second kernel (its launch cost as much as its work at short contexts). The barrier
        # orders all threads' stores before the release; the acquire makes them visible here.
        tl.debug_barrier()
        counter = counters_ptr + seq * tl.num_programs(1) + kv_head
        if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == num_partitions - 1:
            tl.store(counter, 0)  # every program of this launch has counted: ready for the next
            # Partitions holding keys (tokens_per_part is 0 only for an empty context: then none).
            used = tl.cdiv(seq_len - start, tl.maximum(tokens_per_part, 1))
            _merge_partials(out_ptr + seq * stride_ob, part_out_ptr, part_max_ptr, part_sum_ptr,
                            group_row, used, kv_head, stride_oh,
                            NUM_Q_PER_KV, MERGE_G, HEAD_DIM, BLOCK_D, MERGE_P)
    else:
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


@triton.jit
def _merge_partials(
    out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr, group_row, used, kv_head, stride_oh,
    NUM_Q_PER_KV: tl.constexpr, MERGE_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    MERGE_P: tl.constexpr,
):
    """Merge the first `used` partial softmaxes of one (request, KV head)'s query heads (the
    rest are empty): weights l_p * 2^(m_p - max m), MERGE_P partitions at a time. Loads bypass L1
    (.cg): the partials were written by other multiprocessors."""
    rows = tl.arange(0, MERGE_G)
    row_mask = rows < NUM_Q_PER_KV
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    m_all = tl.full([MERGE_G], -1.0e30, dtype=tl.float32)
    l_all = tl.zeros([MERGE_G], dtype=tl.float32)
    acc = tl.zeros([MERGE_G, BLOCK_D], dtype=tl.float32)
    for first in range(0, used, MERGE_P):
        parts = first + tl.arange(0, MERGE_P)
        mask = (parts < used)[:, None] & row_mask[None, :]
        index = (group_row + parts)[:, None] * NUM_Q_PER_KV + rows[None, :]  # [MERGE_P, MERGE_G]
        m = tl.load(part_max_ptr + index, mask=mask, other=-1.0e30, cache_modifier=".cg")
        l = tl.load(part_sum_ptr + index, mask=mask, other=0.0, cache_modifier=".cg")
        o = tl.load(part_out_ptr + index[:, :, None] * HEAD_DIM + dims[None, None, :],
                    mask=mask[:, :, None] & dim_mask[None, None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_all, tl.max(m, 0))
        alpha = tl.exp2(m_all - m_new)
        w = l * tl.exp2(m - m_new[None, :])
        l_all = l_all * alpha + tl.sum(w, 0)
        acc = acc * alpha[:, None] + tl.sum(o * w[:, :, None], 0)
        m_all = m_new
    out = acc / tl.where(l_all > 0.0, l_all, 1.0)[:, None]
    heads = kv_head * NUM_Q_PER_KV + rows
    tl.store(out_ptr + heads[:, None] * stride_oh + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & dim_mask[None, :])


_SM_COUNT: dict[int, int] = {}
_MERGE_TILE = 4096


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the CPU interpreter: small, so that tests exercise the split path
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def decode_num_partitions(batch: int, num_kv_heads: int, max_blocks: int, block_size: int,
                          device: torch.device) -> int:
    """Partitions per request, from shapes only (CUDA-graph safe): as many as fit in one wave of
    resident programs, never parts shorter than _MIN_PARTITION_TOKENS of the longest possible
    context. Batches that fill a wave on their own are not split (no merge kernel)."""
    max_tokens = max_blocks * block_size
    programs = max(batch * num_kv_heads, 1)
    wanted = (_PROGRAMS_PER_SM * _num_sms(device)) // programs
    return max(1, min(wanted, triton.cdiv(max_tokens, _MIN_PARTITION_TOKENS), _MAX_PARTITIONS))


def _decode_config(head_dim_pad: int, dtype: torch.dtype) -> dict:
    if _INTERPRET:
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)
    if dtype == torch.float32 or head_dim_pad > 128:
        return dict(BLOCK_N=32, num_warps=4, num_stages=2)
    # Two warps, four stages: 2-3% ahead of (64, 4 warps, 3 stages) at every batch measured.
    return dict(BLOCK_N=64, num_warps=2, num_stages=4)


def _check_inputs(query, k_cache, v_cache, block_tables, seq_lens, alibi_slopes):
    if query.dim() != 3:
        raise ValueError(f"query must be [tokens, heads, head_dim], got shape {tuple(query.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("k_cache and v_cache must both be [num_blocks, block_size, num_kv_heads, "
                         f"head_dim], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    num_heads, head_dim = query.shape[1], query.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"query head_dim {head_dim} differs from the cache's {k_cache.shape[3]}")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads is not a multiple of {num_kv_heads} KV heads")
    if block_size & (block_size - 1):
        raise ValueError(f"KV block size {block_size} must be a power of two")
    if block_tables.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("block_tables and seq_lens must be int32 "
                         f"(got {block_tables.dtype}, {seq_lens.dtype})")
    if alibi_slopes is not None and alibi_slopes.numel() != num_heads:
        raise ValueError(f"alibi_slopes has {alibi_slopes.numel()} entries for {num_heads} heads")
    for name, t in (("query", query), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride {t.stride(-1)})")


def _output(query: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The caller's output (same shape and dtype as the query, last dimension contiguous) or a new one."""
    if out is None:
        return torch.empty_like(query, memory_format=torch.contiguous_format)
    if out.shape != query.shape or out.dtype != query.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(query.shape)} {query.dtype} with a contiguous last dimension, "
                         f"got {tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return out


def _block_d(head_dim: int) -> int:
    """Columns of the q/k tiles: a power of two, and at least 16 (tl.dot's smallest inner size;
    head dims below it are masked, as odd ones are)."""
    return max(16, triton.next_power_of_2(head_dim))


def _dot_precision(dtype: torch.dtype) -> str | None:
    # Float32 caches get exact float32 products; Triton's default for them would be tf32.
    return "ieee" if dtype == torch.float32 else None


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per request ([B, H, D]) at position seq_lens[b] - 1 -> [B, H, D], written
    to `out` when given (a row slice of a larger output: rows may be strided).

    No host synchronisation: the grid and the number of partitions come from tensor shapes
    (block_tables.shape[1] bounds the context), so the call can be captured in a CUDA graph.
    """
    _check_inputs(query, k_cache, v_cache, block_tables, seq_lens, alibi_slopes)
    return _decode(query, k_cache, v_cache, block_tables, seq_lens, scale, alibi_slopes, sliding_window, out)


def paged_decode_attention_rotary(
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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """rotary_and_write_kv, then paged_decode_attention of the rotated query, in one kernel:
    query [B, H, D], this step's key and value [B, Hkv, D] (one token per request) at positions
    [B], stored at slot_mapping's slots (< 0: not stored) before the attention reads them."""
    _check_inputs(query, k_cache, v_cache, block_tables, seq_lens, None)
    check_kv_write(key, value, k_cache, v_cache, slot_mapping)
    check_rotary(query, key, cos_sin_cache)
    if positions.shape[0] != query.shape[0]:
        raise ValueError(f"one position per query token: {query.shape[0]} queries, {positions.shape[0]} positions")
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))
    rotary = (key, value, positions, cos_sin_cache.float().contiguous(), slot_mapping)
    return _decode(query, k_cache, v_cache, block_tables, seq_lens, scale, None, sliding_window, out, rotary)


def _decode(query, k_cache, v_cache, block_tables, seq_lens, scale, alibi_slopes, sliding_window, out,
            rotary=None):
    batch, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    out = _output(query, out)
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    block_d = _block_d(head_dim)
    config = _decode_config(block_d, k_cache.dtype)
    num_partitions = decode_num_partitions(batch, num_kv_heads, block_tables.shape[1], block_size,
                                           query.device)
    split = num_partitions > 1
    if split:
        part_out = torch.empty((batch, num_kv_heads, num_partitions, group, head_dim), dtype=torch.float32,
                               device=query.device)
        part_max = torch.empty((batch, num_kv_heads, num_partitions, group), dtype=torch.float32,
                               device=query.device)
        part_sum = torch.empty_like(part_max)
        counters = arrival_counters(batch * num_kv_heads, query.device)
    else:
        part_out = part_max = part_sum = counters = out  # unused
    key, value, positions, cos_sin, slots = rotary if rotary is not None else (query, query, seq_lens, query, seq_lens)
    merge_g = triton.next_power_of_2(group)
    alibi = alibi_slopes.float().contiguous() if alibi_slopes is not None else query
    _decode_kernel[(batch, num_kv_heads, num_partitions)](
        query, k_cache, v_cache, block_tables, seq_lens, alibi,
        out, part_out, part_max, part_sum, counters,
        key, value, positions, cos_sin, slots,
        scale * _LOG2E, sliding_window or 0, num_partitions,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1), cos_sin.stride(0),
        NUM_Q_PER_KV=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, BLOCK_D=block_d, KV_BLOCK_SIZE=block_size,
        HAS_ALIBI=alibi_slopes is not None, HAS_WINDOW=sliding_window is not None, SPLIT=split,
        DOT_PRECISION=_dot_precision(k_cache.dtype),
        # The merge loads MERGE_P partitions x MERGE_G heads x BLOCK_D floats at once: at most
        # _MERGE_TILE, a few dozen registers a thread.
        MERGE_G=merge_g, MERGE_P=max(1, _MERGE_TILE // (merge_g * block_d)),
        ROTARY=rotary is not None, ROTARY_DIM=cos_sin.shape[1] if rotary is not None else 0,
        **config,
    )
    return out


# --------------------------------------------------------------------------------------------
# Prefill / extend
# --------------------------------------------------------------------------------------------


@triton.jit
def _prefill_tile(
    acc, l_i, m_i, q, k_head, v_head, block_table, tile_start, dims, dim_mask,
    q_pos, slopes, qk_scale, sliding_window,
    stride_kb, stride_kt, stride_vb, stride_vt,
    KV_BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, MASKED: tl.constexpr, HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr, key_end,
):
    """One BLOCK_N tile of keys: online-softmax update of (acc, l_i, m_i). MASKED tiles apply the
    causal mask (and key_end bound); unmasked ones are fully visible to every row."""
    keys = tile_start + tl.arange(0, BLOCK_N)
    if MASKED:
        key_mask = keys < key_end
        blocks = tl.load(block_table + keys // KV_BLOCK_SIZE, mask=key_mask, other=0).to(tl.int64)
    else:
        blocks = tl.load(block_table + keys // KV_BLOCK_SIZE).to(tl.int64)
    offsets = keys % KV_BLOCK_SIZE
    k_rows = blocks * stride_kb + offsets * stride_kt
    v_rows = blocks * stride_vb + offsets * stride_vt
    if MASKED:
        k = tl.load(k_head + k_rows[None, :] + dims[:, None],
                    mask=key_mask[None, :] & dim_mask[:, None], other=0.0)
    elif HEAD_DIM != BLOCK_D:
        k = tl.load(k_head + k_rows[None, :] + dims[:, None], mask=dim_mask[:, None], other=0.0)
    else:
        k = tl.load(k_head + k_rows[None, :] + dims[:, None])
    scores = tl.dot(q, k, input_precision=DOT_PRECISION)
    if HAS_ALIBI:
        scores = scores * qk_scale + slopes[:, None] * (keys[None, :] - q_pos[:, None]).to(tl.float32)
        scale = 1.0
    else:
        scale = qk_scale  # applied inside the exponent's FMA below
    if MASKED:
        visible = keys[None, :] <= q_pos[:, None]
        if HAS_WINDOW:
            visible = visible & (keys[None, :] > q_pos[:, None] - sliding_window)
        scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1) * scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores * scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(v_head + v_rows[:, None] + dims[None, :],
                    mask=key_mask[:, None] & dim_mask[None, :], other=0.0)
    elif HEAD_DIM != BLOCK_D:
        v = tl.load(v_head + v_rows[:, None] + dims[None, :], mask=dim_mask[None, :], other=0.0)
    else:
        v = tl.load(v_head + v_rows[:, None] + dims[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=_PER_STEP_SCALARS_PREFILL)
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr,
    alibi_ptr, out_ptr,
    qk_scale, sliding_window, num_seqs,
    stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_bt,
    stride_ot, stride_oh,
    QLEN_HINT,  # autotune key only
    NUM_Q_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr,
    HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    BLOCK_Q: tl.constexpr = BLOCK_M // NUM_Q_PER_KV  # query tokens per tile
    # Heaviest tiles (last in each request, the most keys) first.
    slot = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)

    # The request owning this slot: the last b with query_start_loc[b] // BLOCK_Q + b <= slot.
    lo = tl.program_id(0) * 0  # tensors, not constants: they are loop-carried
    hi = lo + num_seqs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_base = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        lo = tl.where(mid_base <= slot, mid, lo)
        hi = tl.where(mid_base <= slot, hi, mid)
    seq = lo
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    tile = slot - (q_start // BLOCK_Q + seq)
    if tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # cached prefix before this step's queries

    rows = tl.arange(0, BLOCK_M)
    row_token = tile * BLOCK_Q + rows // NUM_Q_PER_KV
    heads = kv_head * NUM_Q_PER_KV + rows % NUM_Q_PER_KV
    row_mask = (rows < BLOCK_Q * NUM_Q_PER_KV) & (row_token < q_len)
    q_pos = context_len + row_token
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM

    q_rows = (q_start + row_token).to(tl.int64) * stride_qt + heads * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    q = q.to(k_cache_ptr.dtype.element_ty)
    slopes = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_ALIBI:
        slopes = tl.load(alibi_ptr + heads, mask=row_mask, other=0.0) * 1.4426950408889634

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh
    first_q_pos = context_len + tile * BLOCK_Q
    key_end = tl.minimum(first_q_pos + BLOCK_Q, seq_len)  # past the tile's last query
    if HAS_WINDOW:
        # Every tile may cut the window somewhere: all of them are masked.
        key_start = tl.maximum(first_q_pos - sliding_window + 1, 0)
        masked_start = key_start
    else:
        # Keys before the tile's first query are visible to every row: no mask there.
        key_start = 0
        masked_start = (first_q_pos // BLOCK_N) * BLOCK_N
        for tile_start in range(0, masked_start, BLOCK_N):
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, k_head, v_head, block_table, tile_start, dims, dim_mask,
                q_pos, slopes, qk_scale, sliding_window, stride_kb, stride_kt, stride_vb, stride_vt,
                KV_BLOCK_SIZE, BLOCK_N, HEAD_DIM, BLOCK_D, False, HAS_ALIBI, HAS_WINDOW,
                DOT_PRECISION, key_end,
            )
    for tile_start in range(masked_start, key_end, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, k_head, v_head, block_table, tile_start, dims, dim_mask,
            q_pos, slopes, qk_scale, sliding_window, stride_kb, stride_kt, stride_vb, stride_vt,
            KV_BLOCK_SIZE, BLOCK_N, HEAD_DIM, BLOCK_D, True, HAS_ALIBI, HAS_WINDOW,
            DOT_PRECISION, key_end,
        )

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out_rows = (q_start + row_token).to(tl.int64) * stride_ot + heads * stride_oh
    tl.store(out_ptr + out_rows[:, None] + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & dim_mask[None, :])


def _prefill_configs() -> list[triton.Config]:
    """Hopper-oriented candidates; _prune_prefill_configs drops those that cannot serve a call."""
    configs = [
        # Small query tiles for short extends (speculative verification, small chunks).
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        # One warpgroup per program, two programs per multiprocessor (their softmax and matrix
        # phases interleave): the best on H100 at 1k-4k tokens (bench/KERNELS_NOTES.md).
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=4),
        # 3-5% ahead at 8k tokens and more.
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    ]
    return configs


# Shared memory a config may plan for (Hopper has 227 KB per block; leave room for layout
# conversions the compiler adds).
_PREFILL_SMEM_BUDGET = 160 * 1024


def _prune_prefill_configs(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    group = args["NUM_Q_PER_KV"]
    block_d = args["BLOCK_D"]
    element = args["k_cache_ptr"].element_size()
    smallest = max(16, triton.next_power_of_2(group))
    # Rows per tile: all heads of a group, and no more query tokens than a request usually has.
    cap = max(smallest, min(128, triton.next_power_of_2(args["QLEN_HINT"] * group)))

    def smem(c):
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        return element * block_d * (m + 2 * n * max(c.num_stages - 1, 1))

    kept = [c for c in configs
            if smallest <= c.kwargs["BLOCK_M"] <= cap and smem(c) <= _PREFILL_SMEM_BUDGET]
    if not kept:
        kept = [triton.Config({"BLOCK_M": smallest, "BLOCK_N": 32}, num_warps=4, num_stages=2)]
    return kept


def _interpreter_prefill_config(group: int) -> dict:
    """One small config: the interpreter's cost grows with tile sizes and there is no tuning."""
    return dict(BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=16)


_PREFILL_KEYS = ["QLEN_HINT", "NUM_Q_PER_KV", "HEAD_DIM", "KV_BLOCK_SIZE",
                 "HAS_ALIBI", "HAS_WINDOW"]
_prefill_kernel_tuned = triton.autotune(
    configs=_prefill_configs(), key=_PREFILL_KEYS,
    prune_configs_by={"early_config_prune": _prune_prefill_configs},
)(_prefill_kernel)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention for a flat batch of variable-length queries over paged K/V ([T, H, D]).

    Request b's queries are query[query_start_loc[b]:query_start_loc[b+1]], at the last q_len
    positions of its seq_lens[b]-long context. A batch with as many tokens as requests is a decode
    batch (the engine never schedules a request with no new token) and goes to the decode kernel.
    """
    _check_inputs(query, k_cache, v_cache, block_tables, seq_lens, alibi_slopes)
    if query_start_loc.dtype != torch.int32:
        raise ValueError(f"query_start_loc must be int32, got {query_start_loc.dtype}")
    num_tokens, num_heads, head_dim = query.shape
    batch = seq_lens.shape[0]
    if num_tokens == batch:
        return paged_decode_attention(query, k_cache, v_cache, block_tables, seq_lens, scale,
                                      alibi_slopes, sliding_window, out)
    _, block_size, num_kv_heads, _ = k_cache.shape
    out = _output(query, out)
    if num_tokens == 0 or batch == 0:
        return out
    group = num_heads // num_kv_heads
    alibi = alibi_slopes.float().contiguous() if alibi_slopes is not None else query
    args = (
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, alibi, out,
        scale * _LOG2E, sliding_window or 0, batch,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        min(triton.next_power_of_2(triton.cdiv(num_tokens, batch)), 128),
    )
    meta = dict(
        NUM_Q_PER_KV=group, HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim),
        KV_BLOCK_SIZE=block_size, HAS_ALIBI=alibi_slopes is not None,
        HAS_WINDOW=sliding_window is not None, DOT_PRECISION=_dot_precision(k_cache.dtype),
    )

    def grid(config):
        return (num_tokens // (config["BLOCK_M"] // group) + batch, num_kv_heads)

    if _INTERPRET:
        config = _interpreter_prefill_config(group)
        _prefill_kernel[grid(config)](*args, **meta, **config)
    else:
        _prefill_kernel_tuned[grid](*args, **meta)
    return out
