"""y = x W^T (+ bias) for the few rows of a small decode step, as matrix-vector products in Triton,
with the elementwise op before the projection fused into the loads of x. Same signatures as
linear_ref.py; results agree with it to the activation dtype's rounding.

Why: at batch 1 a Llama-8B step on an H100 is weight reads, and cuBLAS leaves some on the table:
o_proj streams at 1.7 TB/s (64 column tiles on 132 multiprocessors), QKV and down pay a split-K
reduce kernel each, and the RMSNorms and SiLU-and-mul are 2-5 us kernels of their own
(bench/results/2026-12-07-peer-h100-0631eab.md, 2026-12-08-decode-merge-h100.md). An earlier
tensor-core version (16 padded rows, commit e50b635) lost to cuBLAS once a prologue was fused:
converting each activation tile into the MMA operand layout cost more than loading the weight
tile. Here there is no MMA: every weight element is loaded once, widened to float32 and
multiplied with each row's activation, which stays in the weight tile's own layout.

  PROLOGUE_NONE       x as given (o_proj).
  PROLOGUE_RMS_NORM   RMSNorm of x, or of x + residual (QKV, gate/up). 1/rms is a per-row scalar,
                      so it scales the dot products at the end, from the sums of squares gathered
                      in the same loop: x is read once. With a residual, program 0 also writes
                      x + residual (rounded to x's dtype, the next layer's residual stream).
  PROLOGUE_SILU_MUL   silu(gate) * up of x = [gate | up] (down).

The grid is one program per BLOCK_N output features, each over the whole of K: every Llama-8B
projection has at least 512 such tiles at BLOCK_N 8, several waves of an H100, so there is no
split-K to combine. At one row the products accumulate elementwise and are summed once at the
end; with more rows each tile's products are summed per row as they come.

Not measured on a GPU yet: ops.py sends the engine here only when OCTAVO_GEMV_MAX_ROWS asks, and
`octavo bench kernels --parts gemv` is the measurement (bench/README.md).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_ROWS = 16

PROLOGUE_NONE, PROLOGUE_RMS_NORM, PROLOGUE_SILU_MUL = 0, 1, 2


@triton.jit
def _load(ptrs, mask, EVEN: tl.constexpr, EVICT_FIRST: tl.constexpr):
    if EVEN:
        if EVICT_FIRST:
            return tl.load(ptrs, eviction_policy="evict_first")
        return tl.load(ptrs)
    if EVICT_FIRST:
        return tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _activations(x_row, r_row, ro_row, norm_w_ptr, ks, mask, write_mask, K,
                 PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, EVEN: tl.constexpr):
    """One row of x over the K offsets `ks` in float32 after the prologue, and the squares the
    RMSNorm sums (zeros otherwise; its 1/rms is applied at the end). `ks` is 1-D where that layout
    is the weight tile's columns' (X_ROW), else [BLOCK_N, BLOCK_K] with every row the same offsets:
    loaded in the weight tile's own shape, the row arrives in its register layout (the copies come
    from L1), where a 1-D load laid out on its own would be converted through shared memory, with
    a barrier, every iteration."""
    if PROLOGUE == 2:
        gate = _load(x_row + ks, mask, EVEN, False).to(tl.float32)
        up = _load(x_row + K + ks, mask, EVEN, False).to(tl.float32)
        return gate / (1.0 + tl.exp(-gate)) * up, tl.zeros_like(gate)
    x = _load(x_row + ks, mask, EVEN, False)
    if PROLOGUE == 1:
        if HAS_RESIDUAL:
            # Rounded to x's dtype, as the unfused norm does: it is the residual stream from here.
            x = (x.to(tl.float32) + _load(r_row + ks, mask, EVEN, False).to(tl.float32)).to(x.dtype)
            tl.store(ro_row + ks, x, mask=write_mask)
        xf = x.to(tl.float32)
        return xf * _load(norm_w_ptr + ks, mask, EVEN, False).to(tl.float32), xf * xf
    xf = x.to(tl.float32)
    return xf, tl.zeros_like(xf)


# The row count changes from step to step outside captured graphs: one compiled variant for all
# counts of one BLOCK_M (Triton would specialise M == 1 otherwise). Public: bench/kernel_ir.py
# compiles it for an H100 without one.
@triton.jit(do_not_specialize=["M"])
def gemv_kernel(
    x_ptr, residual_ptr, norm_w_ptr, w_ptr, bias_ptr, out_ptr, residual_out_ptr,
    M, N, K, eps,
    stride_xm, stride_rm, stride_wn, stride_om, stride_rom,
    PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr, X_ROW: tl.constexpr,
):
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK_N)
    cols = pid * BLOCK_N + lanes
    col_mask = (cols < N)[:, None]
    # K offsets of a tile, the same in each of its rows; the residual stream is written once, by
    # the tile row of output column 0.
    offsets = tl.arange(0, BLOCK_K)[None, :] + lanes[:, None] * 0
    writes = cols[:, None] == 0
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    even: tl.constexpr = EVEN_N and EVEN_K

    if BLOCK_M == 1:
        products = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        if X_ROW:
            squares = tl.zeros([BLOCK_K], dtype=tl.float32)
        else:
            squares = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            ks = k0 + offsets
            k_mask = ks < K
            w = _load(w_rows + ks, col_mask & k_mask, even, True)
            if X_ROW:
                # The tile's warps all lie along K: a 1-D row of K offsets has the weight tile's
                # column layout, so x is loaded once a thread and broadcast over the rows free.
                ks_row = k0 + tl.arange(0, BLOCK_K)
                row_mask = ks_row < K
                a, sq = _activations(x_ptr, residual_ptr, residual_out_ptr, norm_w_ptr, ks_row, row_mask,
                                     row_mask & ((ks_row * 0 + pid) == 0), K, PROLOGUE, HAS_RESIDUAL, EVEN_K)
                products += w.to(tl.float32) * a[None, :]
            else:
                a, sq = _activations(x_ptr, residual_ptr, residual_out_ptr, norm_w_ptr, ks, k_mask, writes & k_mask,
                                     K, PROLOGUE, HAS_RESIDUAL, EVEN_K)
                products += w.to(tl.float32) * a
            if PROLOGUE == 1:
                squares += sq
        acc = tl.sum(products, 1)[:, None]  # [BLOCK_N, 1]
        if X_ROW:
            row_squares = tl.sum(squares, 0)
        else:
            row_squares = tl.sum(squares, 1)[:, None]  # every row of the tile holds x's
    else:
        rows = tl.arange(0, BLOCK_M)[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        row_squares = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            ks = k0 + offsets
            k_mask = ks < K
            w = _load(w_rows + ks, col_mask & k_mask, even, True).to(tl.float32)
            for m in tl.static_range(BLOCK_M):
                row_mask = k_mask & ((ks * 0 + m) < M)  # BLOCK_M is a power of two: rows past M masked
                a, sq = _activations(x_ptr + m * stride_xm, residual_ptr + m * stride_rm,
                                     residual_out_ptr + m * stride_rom, norm_w_ptr, ks, row_mask, writes & row_mask,
                                     K, PROLOGUE, HAS_RESIDUAL, False)
                acc = tl.where(rows == m, acc + tl.sum(w * a, 1)[:, None], acc)
                if PROLOGUE == 1:
                    row_squares = tl.where(rows == m, row_squares + tl.sum(sq, 1)[:, None], row_squares)

    if PROLOGUE == 1:
        acc = acc * tl.rsqrt(row_squares / K + eps)
    if HAS_BIAS:
        acc += _load(bias_ptr + cols[:, None], col_mask, EVEN_N, False).to(tl.float32)
    out_rows = tl.arange(0, BLOCK_M)[None, :]
    tl.store(out_ptr + out_rows * stride_om + cols[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=col_mask & (out_rows < M))


def gemv_config(rows: int, out_features: int, in_features: int, block_n: int | None = None,
                block_k: int | None = None, num_warps: int = 4, num_stages: int = 1) -> dict:
    """Tile sizes for one call (`octavo bench kernels --parts gemv` tries others). The defaults are
    a first guess, not a measurement: 8 output features a program (several waves of programs on
    an H100 for every Llama-8B shape); at one row a K tile of 1,024 (16 KB of bf16 weights, every
    warp along K: x loaded as a row), above it 256 (one warp across K: the per-row sums stay in a
    warp)."""
    block_m = triton.next_power_of_2(max(rows, 1))
    if block_n is None:
        block_n = 8
    if block_k is None:
        block_k = 64 if _INTERPRET else (1024 if block_m == 1 else 256)
    block_n = min(block_n, triton.next_power_of_2(out_features))
    block_k = min(block_k, triton.next_power_of_2(in_features))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, NUM_STAGES=num_stages)


def row_span(weight: torch.Tensor) -> int:
    """K elements one warp covers in a weight tile: 16-byte vectors across 32 lanes. A K tile of this
    times the warps puts every warp along K (Triton's coalesced layout), which X_ROW needs."""
    return 16 // weight.element_size() * 32


def loads_x_as_row(config: dict, weight: torch.Tensor) -> bool:
    """The kernel's X_ROW: one row, and a K tile that lays every warp along K."""
    return config["BLOCK_M"] == 1 and config["BLOCK_K"] % (row_span(weight) * config["num_warps"]) == 0


def _launch(x, weight, bias, prologue, norm_weight=None, eps=0.0, residual=None, config=None):
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"x [rows, features] and weight [out, in] expected, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    rows = x.shape[0]
    out_features, in_features = weight.shape
    if rows > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {rows}")
    expected = 2 * in_features if prologue == PROLOGUE_SILU_MUL else in_features
    if x.shape[1] != expected:
        raise ValueError(f"x has {x.shape[1]} features, the weight takes {expected}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"bias shape {tuple(bias.shape)} does not match {out_features} output features")
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    out = torch.empty((rows, out_features), dtype=weight.dtype, device=x.device)
    residual_out = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else out
    if rows == 0 or out_features == 0:
        return out, residual_out
    config = dict(config or gemv_config(rows, out_features, in_features))
    grid = (triton.cdiv(out_features, config["BLOCK_N"]),)
    gemv_kernel[grid](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else weight,
        weight, bias if bias is not None else weight, out, residual_out,
        rows, out_features, in_features, eps,
        x.stride(0), residual.stride(0) if residual is not None else 0, weight.stride(0), out.stride(0),
        residual_out.stride(0),
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        EVEN_N=out_features % config["BLOCK_N"] == 0, EVEN_K=in_features % config["BLOCK_K"] == 0,
        X_ROW=loads_x_as_row(config, weight),
        **config,
    )
    return out, residual_out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           config: dict | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x of at most MAX_ROWS rows."""
    return _launch(x, weight, bias, PROLOGUE_NONE, config=config)[0]


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                    bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                    config: dict | None = None):
    """linear(rms_norm(x [+ residual])); with a residual, (that, x + residual)."""
    if norm_weight.shape != (x.shape[-1],):
        raise ValueError(f"norm weight shape {tuple(norm_weight.shape)} does not match {x.shape[-1]} features")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} differs from x {tuple(x.shape)}")
        residual = residual if residual.stride(-1) == 1 else residual.contiguous()
    out, residual_out = _launch(x, weight, bias, PROLOGUE_RMS_NORM, norm_weight, eps, residual, config)
    return out if residual is None else (out, residual_out)


def silu_and_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        config: dict | None = None) -> torch.Tensor:
    """linear(silu(gate) * up) for x = [gate | up] of at most MAX_ROWS rows."""
    return _launch(x, weight, bias, PROLOGUE_SILU_MUL, config=config)[0]
