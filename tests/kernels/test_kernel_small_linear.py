"""The few-row linear kernels with fused norm / activation (Triton interpreter) against
small_linear_ref: every prologue, with and without a bias and a residual, split-K and not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octavo.kernels.small_linear_ref import rms_norm_linear_ref, silu_and_mul_linear_ref

DTYPES = [torch.float32, torch.bfloat16]
# rows, in_features, out_features: one K split and several; N a multiple of the tile and not.
SHAPES = [(1, 96, 40), (5, 64, 16), (16, 200, 33), (40, 48, 24)]


def tensors(dtype, rows, in_features, out_features, seed, in_factor=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_factor * in_features, generator=gen).to(dtype)
    weight = (torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5).to(dtype)
    bias = torch.randn(out_features, generator=gen).to(dtype)
    return gen, x, weight, bias


def skip_unless_dots(kernels, dtype):
    if dtype == torch.bfloat16 and not kernels.bfloat16_dot:
        pytest.skip("this Triton's interpreter cannot dot bfloat16")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(kernels, dtype, rows, in_features, out_features, with_bias):
    skip_unless_dots(kernels, dtype)
    _, x, weight, bias = tensors(dtype, rows, in_features, out_features, seed=rows + in_features)
    bias = bias if with_bias else None
    out = kernels.small_linear.linear(x, weight, bias)
    ref = F.linear(x, weight, bias)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_linear(kernels, dtype, rows, in_features, out_features, with_residual):
    skip_unless_dots(kernels, dtype)
    gen, x, weight, bias = tensors(dtype, rows, in_features, out_features, seed=2 * rows + out_features)
    norm_weight = (1 + 0.1 * torch.randn(in_features, generator=gen)).to(dtype)
    residual = torch.randn(rows, in_features, generator=gen).to(dtype) if with_residual else None
    out = kernels.small_linear.rms_norm_linear(x, norm_weight, 1e-5, weight, bias, residual)
    ref = rms_norm_linear_ref(x, norm_weight, 1e-5, weight, bias, residual)
    if with_residual:
        (out, out_residual), (ref, ref_residual) = out, ref
        assert kernels.relative_error(out_residual, ref_residual) < kernels.tolerance[dtype]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", SHAPES)
def test_silu_and_mul_linear(kernels, dtype, rows, in_features, out_features):
    skip_unless_dots(kernels, dtype)
    _, x, weight, _ = tensors(dtype, rows, in_features, out_features, seed=3 * rows + in_features, in_factor=2)
    x = 3 * x
    out = kernels.small_linear.silu_and_mul_linear(x, weight)
    ref = silu_and_mul_linear_ref(x, weight)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


def test_split_k_is_combined_by_the_last_split_and_counters_reset(kernels):
    """Several K splits of several column tiles, twice on the same counters: both right, and the
    counters back at zero (the next launch, or a graph replay, starts from them)."""
    small = kernels.small_linear
    config = small.small_linear_config(3, 40, 200, torch.device("cpu"))
    assert config["split_k"] > 1 and 40 > config["BLOCK_N"]
    for seed in (1, 2):
        _, x, weight, bias = tensors(torch.float32, 3, 200, 40, seed=seed)
        out = small.linear(x, weight, bias)
        assert kernels.relative_error(out, F.linear(x, weight, bias)) < kernels.tolerance[torch.float32]
    assert int(small.arrival_counters(8, x.device).abs().sum()) == 0


def test_rejects_bad_shapes(kernels):
    small = kernels.small_linear
    weight = torch.randn(8, 32)
    with pytest.raises(ValueError, match="at most"):
        small.linear(torch.randn(65, 32), weight)
    with pytest.raises(ValueError, match="features"):
        small.linear(torch.randn(2, 31), weight)
    with pytest.raises(ValueError, match="features"):
        small.silu_and_mul_linear(torch.randn(2, 32), weight)  # needs [gate | up]: 64
