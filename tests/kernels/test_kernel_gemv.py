"""The decode projections (gemv.py) against linear_ref.py: one and several rows, each prologue, bias,
shapes that fill no tile evenly and ones that do, and the residual stream the norm writes back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octavo.kernels.linear_ref import rms_norm_linear_ref, silu_and_mul_linear_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, in features, out features): uneven tiles at one and several rows, even ones (the
# maskless loads), and a row count below its power of two.
SHAPES = [(1, 96, 40), (1, 128, 64), (3, 96, 40), (4, 128, 64), (2, 200, 24)]


def inputs(rows, in_features, out_features, dtype, seed, width=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width or in_features, generator=gen).to(dtype)
    weight = (torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5).to(dtype)
    bias = torch.randn(out_features, generator=gen).to(dtype)
    return gen, x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(kernels, dtype, rows, in_features, out_features, with_bias):
    _, x, weight, bias = inputs(rows, in_features, out_features, dtype, rows * in_features + with_bias)
    bias = bias if with_bias else None
    out = kernels.gemv.linear(x, weight, bias)
    ref = F.linear(x, weight, bias)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_linear(kernels, dtype, rows, in_features, out_features, with_residual):
    gen, x, weight, bias = inputs(rows, in_features, out_features, dtype, 7 * rows + in_features + with_residual)
    norm_weight = (1 + 0.1 * torch.randn(in_features, generator=gen)).to(dtype)
    residual = torch.randn(rows, in_features, generator=gen).to(dtype) if with_residual else None
    bias = bias if rows % 2 else None  # a bias on some cases (Qwen2's QKV)
    out = kernels.gemv.rms_norm_linear(x, norm_weight, 1e-5, weight, bias, residual)
    ref = rms_norm_linear_ref(x, norm_weight, 1e-5, weight, bias, residual)
    if with_residual:
        (out, out_residual), (ref, ref_residual) = out, ref
        # The residual stream is x + residual rounded to x's dtype (the interpreter truncates to
        # bfloat16 where the GPU rounds, hence no bit equality there).
        assert kernels.relative_error(out_residual, ref_residual) < kernels.tolerance[dtype]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", SHAPES)
def test_silu_and_mul_linear(kernels, dtype, rows, in_features, out_features):
    _, x, weight, bias = inputs(rows, in_features, out_features, dtype, 3 * rows + out_features, 2 * in_features)
    x = 3 * x  # past silu's near-linear middle
    out = kernels.gemv.silu_and_mul_linear(x, weight, bias)
    ref = silu_and_mul_linear_ref(x, weight, bias)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]


@pytest.mark.parametrize("block_n,block_k,num_stages", [(4, 32, 1), (16, 128, 2), (32, 64, 3)])
def test_other_tiles_give_the_same_result(kernels, block_n, block_k, num_stages):
    """The bench's sweep runs other tile sizes: each one still computes the projection."""
    gen, x, weight, _ = inputs(1, 200, 72, torch.float32, block_n + block_k)
    residual = torch.randn(1, 200, generator=gen)
    norm_weight = 1 + 0.1 * torch.randn(200, generator=gen)
    config = kernels.gemv.gemv_config(1, 72, 200, block_n=block_n, block_k=block_k, num_stages=num_stages)
    out, out_residual = kernels.gemv.rms_norm_linear(x, norm_weight, 1e-5, weight, None, residual, config)
    ref, ref_residual = rms_norm_linear_ref(x, norm_weight, 1e-5, weight, None, residual)
    assert torch.equal(out_residual, ref_residual)
    assert kernels.relative_error(out, ref) < kernels.tolerance[torch.float32]


def test_bad_shapes_are_refused(kernels):
    x, weight = torch.randn(2, 64), torch.randn(32, 64)
    with pytest.raises(ValueError, match="features"):
        kernels.gemv.silu_and_mul_linear(x, weight)  # x must be [gate | up], 128 wide
    with pytest.raises(ValueError, match="at most"):
        kernels.gemv.linear(torch.randn(kernels.gemv.MAX_ROWS + 1, 64), weight)
    with pytest.raises(ValueError, match="norm weight"):
        kernels.gemv.rms_norm_linear(x, torch.ones(63), 1e-5, weight)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features", [200, 512])
@pytest.mark.parametrize("prologue", ["none", "norm", "silu"])
def test_one_row_with_x_loaded_as_a_row(kernels, dtype, in_features, prologue):
    """A K tile of one warp's span (num_warps 1 here) lays a 1-D row of x out as the weight tile's
    columns (X_ROW): the same results, the residual stream included, masked K tail or not."""
    gen, x, weight, bias = inputs(1, in_features, 48, dtype, in_features + len(prologue),
                                  2 * in_features if prologue == "silu" else None)
    span = kernels.gemv.row_span(weight)
    config = kernels.gemv.gemv_config(1, 48, in_features, block_n=8, block_k=span, num_warps=1)
    assert config["BLOCK_K"] % (span * config["num_warps"]) == 0  # the X_ROW case
    if prologue == "norm":
        norm_weight = (1 + 0.1 * torch.randn(in_features, generator=gen)).to(dtype)
        residual = torch.randn(1, in_features, generator=gen).to(dtype)
        (out, out_residual) = kernels.gemv.rms_norm_linear(x, norm_weight, 1e-5, weight, bias, residual, config)
        ref, ref_residual = rms_norm_linear_ref(x, norm_weight, 1e-5, weight, bias, residual)
        assert kernels.relative_error(out_residual, ref_residual) < kernels.tolerance[dtype]
    elif prologue == "silu":
        out, ref = kernels.gemv.silu_and_mul_linear(x, weight, bias, config), silu_and_mul_linear_ref(x, weight, bias)
    else:
        out, ref = kernels.gemv.linear(x, weight, bias, config), F.linear(x, weight, bias)
    assert kernels.relative_error(out, ref) < kernels.tolerance[dtype]
