"""RMSNorm, rotary and SiLU-and-mul kernels (Triton interpreter) against elementwise_ref."""

from __future__ import annotations

import pytest
import torch

from octavo.kernels.elementwise_ref import rms_norm_ref, rotary_ref, silu_and_mul_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 96), (2, 3, 1000)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(kernels, dtype, shape, with_residual):
    gen = torch.Generator().manual_seed(shape[-1] + with_residual)
    wide = torch.randn(*shape[:-1], shape[-1] + 8, generator=gen).to(dtype)
    x = wide[..., 8:]  # a strided view
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(dtype)
    residual = torch.randn(shape, generator=gen).to(dtype) if with_residual else None
    out = kernels.norm.rms_norm(x, weight, 1e-5, residual)
    ref = rms_norm_ref(x, weight, 1e-5, residual)
    if with_residual:
        (out, out_residual), (ref, ref_residual) = out, ref
        assert kernels.relative_error(out_residual, ref_residual) < kernels.tolerance[dtype]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,rotary_dim", [
    (4, 2, 64, 64),
    (5, 1, 128, 32),  # partial rotary (GPT-NeoX style 25%)
    (3, 3, 80, 80),
])
def test_rotary(kernels, dtype, num_heads, num_kv_heads, head_dim, rotary_dim):
    gen = torch.Generator().manual_seed(num_heads * head_dim + rotary_dim)
    num_tokens, max_positions = 9, 300
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    query, key = qkv[:, :num_heads], qkv[:, num_heads:num_heads + num_kv_heads]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    angles = torch.outer(torch.arange(max_positions).float(), inv_freq)
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, max_positions, (num_tokens,), generator=gen)
    q_out, k_out = kernels.rotary.rotary(query, key, positions, cos_sin)
    q_ref, k_ref = rotary_ref(query, key, positions, cos_sin)
    assert q_out.shape == q_ref.shape and k_out.dtype == k_ref.dtype
    assert kernels.relative_error(q_out, q_ref) < kernels.tolerance[dtype]
    assert kernels.relative_error(k_out, k_ref) < kernels.tolerance[dtype]
    # The features past rotary_dim pass through untouched.
    assert torch.equal(q_out[..., rotary_dim:], query[..., rotary_dim:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 2 * 37), (2, 3, 2 * 3000)])
def test_silu_and_mul(kernels, dtype, shape):
    gen = torch.Generator().manual_seed(shape[-1])
    x = (3 * torch.randn(shape, generator=gen)).to(dtype)
    out = kernels.activation.silu_and_mul(x)
    ref = silu_and_mul_ref(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]
