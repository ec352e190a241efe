"""Paged attention kernels (Triton interpreter) against attention_ref.

Every cache slot that no request owns is NaN, and so is a spare block that all unused block-table
columns point at: a kernel that reads past a context (partial last block, columns past the
request's blocks) produces NaN and fails.
"""

from __future__ import annotations

import pytest
import torch

from octavo.kernels.attention_ref import (paged_attention_ref, paged_decode_attention_ref,
                                          paged_decode_attention_rotary_ref)


def make_paged_kv(context_lens, num_kv_heads, head_dim, block_size, dtype, seed, spare_columns=2):
    """Random K/V for each context, scattered over shuffled blocks; everything else NaN."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-length // block_size) for length in context_lens]
    num_blocks = sum(blocks_per_seq) + 3
    poison_block = num_blocks - 1
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_tables = torch.full((len(context_lens), max(blocks_per_seq) + spare_columns), poison_block,
                              dtype=torch.int32)
    free = torch.randperm(num_blocks - 1, generator=gen).tolist()
    for seq, length in enumerate(context_lens):
        for i in range(blocks_per_seq[seq]):
            block = free.pop()
            block_tables[seq, i] = block
            used = min(block_size, length - i * block_size)
            k_cache[block, :used] = torch.randn(used, num_kv_heads, head_dim, generator=gen).to(dtype)
            v_cache[block, :used] = torch.randn(used, num_kv_heads, head_dim, generator=gen).to(dtype)
    return k_cache, v_cache, block_tables


def make_query(num_tokens, num_heads, num_kv_heads, head_dim, dtype, seed):
    """A strided view, as the engine passes it: the query heads of a fused QKV projection."""
    gen = torch.Generator().manual_seed(seed + 1)
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    return qkv[:, :num_heads]


def alibi_slopes(num_heads):
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])


DECODE_CASES = [
    # dtype, head_dim, heads, kv_heads, block_size, context lengths, alibi, sliding window
    pytest.param(torch.float32, 64, 4, 4, 16, [1, 17, 40], False, None, id="mha-fp32"),
    pytest.param(torch.float32, 128, 8, 2, 8, [33, 100], False, None, id="gqa4-split-fp32"),
    pytest.param(torch.bfloat16, 128, 16, 2, 16, [5, 64, 129], False, None, id="gqa8-bf16"),
    pytest.param(torch.float16, 80, 4, 1, 32, [70], False, None, id="hd80-fp16"),
    pytest.param(torch.float32, 32, 7, 1, 64, [150, 3], False, None, id="group7-bs64"),
    pytest.param(torch.float32, 64, 8, 2, 128, [130, 9], True, None, id="alibi-bs128"),
    pytest.param(torch.bfloat16, 64, 8, 2, 16, [50, 7, 20], False, 20, id="window-bf16"),
    pytest.param(torch.float32, 64, 4, 4, 16, [0, 31, 16, 1], False, None, id="no-split-empty"),
    pytest.param(torch.float32, 64, 8, 1, 8, [90], True, 33, id="alibi-window"),
    pytest.param(torch.float32, 8, 4, 2, 16, [3, 40], False, None, id="hd8-below-dot-minimum"),
]


@pytest.mark.parametrize("dtype,head_dim,num_heads,num_kv_heads,block_size,lens,alibi,window",
                         DECODE_CASES)
def test_decode_matches_reference(kernels, dtype, head_dim, num_heads, num_kv_heads, block_size,
                                  lens, alibi, window):
    if dtype == torch.bfloat16 and not kernels.bfloat16_dot:
        pytest.skip("this Triton's interpreter cannot dot bfloat16 (bench/gpu_check.py covers it)")
    seed = sum(lens) + head_dim
    k_cache, v_cache, block_tables = make_paged_kv(lens, num_kv_heads, head_dim, block_size, dtype,
                                                   seed)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    query = make_query(len(lens), num_heads, num_kv_heads, head_dim, dtype, seed)
    slopes = alibi_slopes(num_heads) if alibi else None
    scale = head_dim ** -0.5
    out = kernels.attention.paged_decode_attention(query, k_cache, v_cache, block_tables, seq_lens,
                                                   scale, slopes, window)
    ref = paged_decode_attention_ref(query, k_cache, v_cache, block_tables, seq_lens, scale,
                                     slopes, window)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


def test_decode_partitions_depend_on_shapes_only(kernels):
    """A graph captured once replays for any lengths: partitions come from the table's width."""
    n = kernels.attention.decode_num_partitions
    device = torch.device("cpu")
    assert n(1, 8, 64, 16, device) == n(1, 8, 64, 16, device)
    assert n(1, 2, 1024, 16, device) > 1  # one long request is split
    assert n(64, 8, 1024, 16, device) == 1  # enough programs already
    assert n(1, 2, 1, 16, device) == 1  # nothing to split


def test_split_decode_merges_in_the_last_program_and_resets_its_counters(kernels):
    """A table far wider than the contexts (as the engine's graphs pad it): most partitions are
    empty and the last program to arrive merges only the ones with work. Called again with other
    lengths on the same arrival counters, it is still right, and leaves them all at zero."""
    attention = kernels.attention
    num_heads, num_kv_heads, head_dim, block_size = 8, 2, 64, 16
    lens = [70]
    k_cache, v_cache, block_tables = make_paged_kv(lens, num_kv_heads, head_dim, block_size, torch.float32,
                                                   seed=5, spare_columns=60)
    parts = attention.decode_num_partitions(len(lens), num_kv_heads, block_tables.shape[1], block_size,
                                            torch.device("cpu"))
    assert parts >= 4  # and 70 tokens fill only some of them (five of 8 interpreted, two of 5 on an H100)
    query = make_query(len(lens), num_heads, num_kv_heads, head_dim, torch.float32, seed=5)
    for lengths in (lens, [1], [0], [40]):  # [0]: an empty context, no partition holds keys
        seq_lens = torch.tensor(lengths, dtype=torch.int32)
        out = attention.paged_decode_attention(query, k_cache, v_cache, block_tables, seq_lens, 0.125)
        ref = paged_decode_attention_ref(query, k_cache, v_cache, block_tables, seq_lens, 0.125)
        assert kernels.relative_error(out, ref) < kernels.tolerance[torch.float32]
    # Interpreted, the counters themselves; on CUDA (OCTAVO_KERNEL_TESTS_DEVICE) this reads the
    # CPU's, and the later calls above are the check: without a reset they never merge.
    counters = attention.arrival_counters(len(lens) * num_kv_heads, query.device)
    assert int(counters.abs().sum()) == 0


def cos_sin_table(rotary_dim, max_positions=512):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    angles = torch.outer(torch.arange(max_positions).float(), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


ROTARY_DECODE_CASES = [
    # dtype, head_dim, heads, kv_heads, block_size, context lengths (the new token's included),
    # rotary_dim, sliding window, spare block-table columns (wide: split into partitions)
    pytest.param(torch.float32, 64, 4, 2, 16, [1, 17, 40], 64, None, 2, id="gqa2-fp32"),
    pytest.param(torch.float32, 128, 8, 2, 8, [33, 100], 128, None, 40, id="gqa4-split-fp32"),
    pytest.param(torch.bfloat16, 128, 16, 2, 16, [5, 64, 129], 128, None, 2, id="gqa8-bf16"),
    pytest.param(torch.float32, 64, 8, 2, 16, [50, 7, 20], 32, 20, 2, id="partial-rotary-window"),
    pytest.param(torch.float16, 80, 4, 1, 32, [70], 80, None, 30, id="hd80-fp16-split"),
]


@pytest.mark.parametrize("dtype,head_dim,num_heads,num_kv_heads,block_size,lens,rotary_dim,window,spare",
                         ROTARY_DECODE_CASES)
def test_decode_with_rotary_matches_rotary_write_then_decode(kernels, dtype, head_dim, num_heads, num_kv_heads,
                                                             block_size, lens, rotary_dim, window, spare):
    """The decode kernel rotating the query and storing the rotated key and the value itself: the
    same output and the same caches as rotary_and_write_kv then the plain decode. The new token's
    slot starts NaN, so attending before the store lands shows. The last request is padding (slot
    -1): nothing of it is stored."""
    if dtype == torch.bfloat16 and not kernels.bfloat16_dot:
        pytest.skip("this Triton's interpreter cannot dot bfloat16")
    seed = sum(lens) + rotary_dim
    lens = lens + [6]
    k_cache, v_cache, block_tables = make_paged_kv(lens, num_kv_heads, head_dim, block_size, dtype, seed,
                                                   spare_columns=spare)
    positions = torch.tensor(lens) - 1
    slots = torch.stack([block_tables[b, p // block_size].long() * block_size + p % block_size
                         for b, p in enumerate(positions.tolist())])
    slots[-1] = -1
    for b in range(len(lens) - 1):
        k_cache.view(-1, num_kv_heads, head_dim)[slots[b]] = float("nan")
        v_cache.view(-1, num_kv_heads, head_dim)[slots[b]] = float("nan")
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(len(lens), num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    query, key, value = qkv.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    table, scale = cos_sin_table(rotary_dim), head_dim ** -0.5
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref = paged_decode_attention_rotary_ref(query, key, value, positions, table, slots, k_ref, v_ref,
                                            block_tables, seq_lens, scale, window)
    out = kernels.attention.paged_decode_attention_rotary(query, key, value, positions, table, slots, k_cache,
                                                          v_cache, block_tables, seq_lens, scale, window)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]
    for cache, expected in ((k_cache, k_ref), (v_cache, v_ref)):
        written = cache.view(-1, num_kv_heads, head_dim)[slots[:-1]]
        assert kernels.relative_error(written, expected.view(-1, num_kv_heads, head_dim)[slots[:-1]]) \
            < kernels.tolerance[dtype]
        # Everything else as it was (NaN where nothing was, so compare with NaNs equal).
        assert torch.equal(cache.isnan(), expected.isnan())


PREFILL_CASES = [
    # dtype, head_dim, heads, kv_heads, block_size, query lengths, cached prefixes, alibi, window
    pytest.param(torch.float32, 64, 4, 4, 16, [5, 1, 17], [0, 12, 30], False, None, id="mha-prefix"),
    pytest.param(torch.float32, 128, 8, 2, 8, [33, 2], [0, 40], False, None, id="gqa4-bs8"),
    pytest.param(torch.bfloat16, 64, 16, 2, 32, [9, 4, 4], [3, 0, 70], False, None, id="gqa8-bf16"),
    pytest.param(torch.float16, 96, 4, 2, 16, [20], [17], False, None, id="hd96-fp16"),
    pytest.param(torch.float32, 64, 4, 4, 64, [12, 30], [0, 5], True, None, id="alibi-bloom"),
    pytest.param(torch.float32, 64, 8, 2, 16, [25, 3], [0, 30], False, 7, id="window"),
    pytest.param(torch.bfloat16, 32, 4, 1, 128, [19, 6], [140, 0], True, 11, id="alibi-window"),
    pytest.param(torch.float32, 64, 8, 2, 16, [4, 4, 4, 4], [13, 0, 31, 60], False, None,
                 id="spec-verify"),
    pytest.param(torch.float32, 32, 7, 1, 16, [11, 0, 3], [0, 9, 20], False, None,
                 id="group7-empty-query"),
    pytest.param(torch.float32, 8, 4, 2, 16, [5, 3], [0, 20], False, None, id="hd8-below-dot-minimum"),
]


@pytest.mark.parametrize(
    "dtype,head_dim,num_heads,num_kv_heads,block_size,q_lens,prefixes,alibi,window", PREFILL_CASES)
def test_prefill_matches_reference(kernels, dtype, head_dim, num_heads, num_kv_heads, block_size,
                                   q_lens, prefixes, alibi, window):
    if dtype == torch.bfloat16 and not kernels.bfloat16_dot:
        pytest.skip("this Triton's interpreter cannot dot bfloat16 (bench/gpu_check.py covers it)")
    seed = sum(q_lens) * 7 + sum(prefixes) + head_dim
    lens = [q + p for q, p in zip(q_lens, prefixes)]
    k_cache, v_cache, block_tables = make_paged_kv(lens, num_kv_heads, head_dim, block_size, dtype,
                                                   seed)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    query_start_loc = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    query = make_query(sum(q_lens), num_heads, num_kv_heads, head_dim, dtype, seed)
    slopes = alibi_slopes(num_heads) if alibi else None
    scale = head_dim ** -0.5
    out = kernels.attention.paged_attention(query, k_cache, v_cache, block_tables, query_start_loc,
                                            seq_lens, scale, slopes, window)
    ref = paged_attention_ref(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
                              scale, slopes, window)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


def test_prefill_of_single_tokens_routes_to_decode(kernels):
    lens = [9, 40, 3]
    k_cache, v_cache, block_tables = make_paged_kv(lens, 2, 64, 16, torch.float32, seed=5)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    query_start_loc = torch.arange(4, dtype=torch.int32)
    query = make_query(3, 8, 2, 64, torch.float32, seed=5)
    out = kernels.attention.paged_attention(query, k_cache, v_cache, block_tables, query_start_loc,
                                            seq_lens, 0.125)
    ref = paged_attention_ref(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
                              0.125)
    assert kernels.relative_error(out, ref) < 1e-5


def test_rejects_bad_shapes(kernels):
    k_cache, v_cache, block_tables = make_paged_kv([5], 2, 64, 16, torch.float32, seed=0)
    query = torch.randn(1, 3, 64)  # 3 heads over 2 KV heads
    with pytest.raises(ValueError, match="multiple"):
        kernels.attention.paged_decode_attention(query, k_cache, v_cache, block_tables,
                                                 torch.tensor([5], dtype=torch.int32), 0.125)


def test_kernels_write_rows_of_a_given_output(kernels):
    """out=: each kernel writes into rows of the caller's tensor (piecewise CUDA graphs keep
    attention's output in one static buffer). Here the one-token requests of a mixed step go to the
    decode kernel and the rest to the prefill kernel, into one output that equals the reference."""
    q_lens, prefixes = [1, 1, 1, 6, 17], [40, 9, 70, 0, 12]
    lens = [q + p for q, p in zip(q_lens, prefixes)]
    k_cache, v_cache, block_tables = make_paged_kv(lens, 2, 64, 16, torch.float32, seed=11)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    starts = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    query = make_query(sum(q_lens), 8, 2, 64, torch.float32, seed=11)
    out, d = torch.full_like(query, float("nan")), 3
    kernels.attention.paged_decode_attention(query[:d], k_cache, v_cache, block_tables[:d], seq_lens[:d], 0.125,
                                             out=out[:d])
    kernels.attention.paged_attention(query[d:], k_cache, v_cache, block_tables[d:], starts[d:] - starts[d],
                                      seq_lens[d:], 0.125, out=out[d:])
    ref = paged_attention_ref(query, k_cache, v_cache, block_tables, starts, seq_lens, 0.125)
    assert kernels.relative_error(out, ref) < 1e-5


def test_rejects_an_output_of_another_shape(kernels):
    k_cache, v_cache, block_tables = make_paged_kv([5], 2, 64, 16, torch.float32, seed=0)
    query = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="out must be"):
        kernels.attention.paged_decode_attention(query, k_cache, v_cache, block_tables,
                                                 torch.tensor([5], dtype=torch.int32), 0.125,
                                                 out=torch.empty(2, 4, 64))
