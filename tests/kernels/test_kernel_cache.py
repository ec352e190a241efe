"""KV cache write kernel (Triton interpreter) against cache_ref."""

from __future__ import annotations

import pytest
import torch

from octavo.kernels.cache_ref import write_kv_cache_ref


@pytest.mark.parametrize("dtype,cache_dtype,num_kv_heads,head_dim,block_size", [
    (torch.float32, torch.float32, 2, 64, 16),
    (torch.bfloat16, torch.bfloat16, 8, 128, 8),
    (torch.float16, torch.float16, 1, 80, 128),
    (torch.float32, torch.bfloat16, 3, 32, 32),  # cast on store
])
def test_write_matches_reference(kernels, dtype, cache_dtype, num_kv_heads, head_dim, block_size):
    gen = torch.Generator().manual_seed(num_kv_heads * head_dim + block_size)
    num_blocks, num_tokens = 6, 21
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(cache_dtype)
    v_cache = torch.randn(shape, generator=gen).to(cache_dtype)
    # The step's K and V as strided views of a fused QKV output.
    qkv = torch.randn(num_tokens, 4 + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    key, value = qkv[:, 4:4 + num_kv_heads], qkv[:, 4 + num_kv_heads:]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[3, 10, 20]] = -1  # padding tokens of a graph batch
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    write_kv_cache_ref(key, value, ref_k, ref_v, slots)
    before_k = k_cache.clone()
    kernels.cache.write_kv_cache(key, value, k_cache, v_cache, slots)
    if dtype == cache_dtype:
        assert torch.equal(k_cache, ref_k)
        assert torch.equal(v_cache, ref_v)
    else:  # the interpreter rounds float32 -> bfloat16 by truncation
        assert kernels.relative_error(k_cache, ref_k) < kernels.tolerance[cache_dtype]
        assert kernels.relative_error(v_cache, ref_v) < kernels.tolerance[cache_dtype]
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    flat = k_cache.view(-1, num_kv_heads, head_dim)
    assert torch.equal(flat[untouched], before_k.view(-1, num_kv_heads, head_dim)[untouched])


def test_write_rejects_mismatched_cache(kernels):
    key = torch.randn(2, 2, 64)
    cache = torch.zeros(4, 16, 2, 32)
    with pytest.raises(ValueError, match="do not hold"):
        kernels.cache.write_kv_cache(key, key, cache, cache, torch.tensor([0, 1]))


@pytest.mark.parametrize("dtype,num_heads,num_kv_heads,head_dim,rotary_dim,block_size", [
    (torch.float32, 4, 2, 64, 64, 16),
    (torch.bfloat16, 32, 8, 128, 128, 16),
    (torch.float16, 6, 3, 80, 40, 8),  # partial rotary
])
def test_rotary_and_write_kv_matches_reference(kernels, dtype, num_heads, num_kv_heads, head_dim, rotary_dim,
                                               block_size):
    """The fused rotary + cache write: the rotated query returned, the rotated key and the value
    stored at their slots (padding slots skipped), everything else in the caches untouched."""
    from octavo.kernels.cache_ref import rotary_and_write_kv_ref

    gen = torch.Generator().manual_seed(num_heads * head_dim + rotary_dim)
    num_tokens, num_blocks, max_positions = 13, 4, 300
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    query, key, value = qkv.split([num_heads, num_kv_heads, num_kv_heads], dim=1)  # strided views, as in a model
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    angles = torch.outer(torch.arange(max_positions).float(), inv_freq)
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, max_positions, (num_tokens,), generator=gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[2, 9]] = -1
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    q_ref = rotary_and_write_kv_ref(query, key, value, positions, cos_sin, ref_k, ref_v, slots)
    q_out = kernels.rotary.rotary_and_write_kv(query, key, value, positions, cos_sin, k_cache, v_cache, slots)
    assert q_out.shape == q_ref.shape and q_out.dtype == q_ref.dtype
    assert kernels.relative_error(q_out, q_ref) < kernels.tolerance[dtype]
    assert kernels.relative_error(k_cache, ref_k) < kernels.tolerance[dtype]
    assert torch.equal(v_cache, ref_v)  # copied, not computed
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert torch.equal(k_cache.view(-1, num_kv_heads, head_dim)[untouched], ref_k.view(-1, num_kv_heads, head_dim)[untouched])
