"""y = x W^T (+ bias) for a few rows of x (a decode step's GEMMs) in Triton, with the elementwise
op before it fused into its loads: RMSNorm (optionally of x + residual) ahead of the QKV and
gate/up projections, silu(gate) * up ahead of the down projection. Same signatures and rounding
as small_linear_ref.py.

Why: a batch-1 decode step of an 8B model on an H100 is ~6 ms of weight reads cut into ~11 kernels
a layer; the norms, the activation and cuBLAS's split-K reduce each cost more in launch latency
than in work (bench/results/2026-12-07-peer-h100-0631eab.md). Here each projection is one kernel:
  * the grid is (column tiles, K splits): enough programs to keep the weight streaming from HBM
    even where N is small (o_proj, down);
  * split K is combined by the last program of a column tile to finish (arrival.py), not by a
    second kernel; partial sums are added in split order, so results are deterministic;
  * RMSNorm is a per-row scale: x * g enters the product, and 1 / rms(x), from the sums of squares
    each program gathers over its own K range (combined with the splits), scales the result. No
    pass over x before the product. With a residual, the first column tile's programs also write
    x + residual (the next layer's residual stream), each its K range. One rounding fewer than
    the unfused ops (x * g in the weights' dtype, not norm(x) then g * norm(x)): within bf16's.
All of a call's rows (at most MAX_ROWS, padded to a power of two of at least 16, tl.dot's
smallest) are one tile: the weight is read once. ops.py decides up to how many rows the engine
uses it (cuBLAS above).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from octavo.kernels import pdl
from octavo.kernels.arrival import arrival_counters

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_ROWS = 64

PROLOGUE_NONE, PROLOGUE_RMS_NORM, PROLOGUE_SILU_MUL = 0, 1, 2


# The row count changes from step to step: one compiled variant for all of them (Triton would
# specialise 1 and multiples of 16), so a step outside the captured graphs never waits on a compile.
@triton.jit(do_not_specialize=["M"])
def _small_linear_kernel(
    x_ptr, residual_ptr, norm_w_ptr, w_ptr, bias_ptr, out_ptr, residual_out_ptr, part_ptr, part_sq_ptr,
    counters_ptr, M, N, K, eps, k_per_split, split_k,
    stride_xm, stride_rm, stride_wn, stride_om, stride_rom,
    PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl.wait_for_previous_kernel(USE_PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    row_mask = rows < M
    act_dtype = x_ptr.dtype.element_ty
    w_dtype = w_ptr.dtype.element_ty

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    squares = tl.zeros([BLOCK_M], dtype=tl.float32)  # RMSNorm: the rows' sums of squares over this K range
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < k_end
        w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=col_mask[:, None] & k_mask[None, :],
                    other=0.0)
        x_mask = row_mask[:, None] & k_mask[None, :]
        if PROLOGUE == 2:
            # silu(gate) * up, rounded twice as ops.silu_and_mul does; x is [M, 2K].
            gate = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=x_mask, other=0.0).to(tl.float32)
            up = tl.load(x_ptr + rows[:, None] * stride_xm + K + ks[None, :], mask=x_mask, other=0.0)
            silu = (gate / (1.0 + tl.exp(-gate))).to(act_dtype)
            a = (silu.to(tl.float32) * up.to(tl.float32)).to(w_dtype)
        else:
            a = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=x_mask, other=0.0)
            if PROLOGUE == 1:
                if HAS_RESIDUAL:
                    r = tl.load(residual_ptr + rows[:, None] * stride_rm + ks[None, :], mask=x_mask, other=0.0)
                    a = (a.to(tl.float32) + r.to(tl.float32)).to(act_dtype)
                    if pid_n == 0:  # the residual stream, each K range written once
                        tl.store(residual_out_ptr + rows[:, None] * stride_rom + ks[None, :], a, mask=x_mask)
                af = a.to(tl.float32)
                squares += tl.sum(af * af, 1)
                # The norm's weight here, its 1 / rms (a per-row scalar) on the sums at the end.
                g = tl.load(norm_w_ptr + ks, mask=k_mask, other=0.0)
                a = (af * g.to(tl.float32)[None, :]).to(w_dtype)
            else:
                a = a.to(w_dtype)
        acc += tl.dot(a, tl.trans(w), input_precision=DOT_PRECISION)

    out_mask = row_mask[:, None] & col_mask[None, :]
    if SPLIT:
        tl.store(part_ptr + (pid_k * M + rows)[:, None] * N + cols[None, :], acc, mask=out_mask)
        sq_row = (pid_k * tl.num_programs(0) + pid_n) * M + rows
        if PROLOGUE == 1:
            tl.store(part_sq_ptr + sq_row, squares, mask=row_mask)
        # All threads' stores before the release; the last program's acquire makes them visible.
        tl.debug_barrier()
        counter = counters_ptr + pid_n
        if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == split_k - 1:
            tl.store(counter, 0)  # every split of this tile has arrived: ready for the next launch
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            squares = tl.zeros([BLOCK_M], dtype=tl.float32)
            for split in range(0, split_k):  # in split order: deterministic sums
                acc += tl.load(part_ptr + (split * M + rows)[:, None] * N + cols[None, :], mask=out_mask,
                               other=0.0, cache_modifier=".cg")
                if PROLOGUE == 1:
                    squares += tl.load(part_sq_ptr + (split * tl.num_programs(0) + pid_n) * M + rows,
                                       mask=row_mask, other=0.0, cache_modifier=".cg")
            _store_output(acc, squares, K, eps, bias_ptr, out_ptr, rows, cols, col_mask, out_mask, stride_om,
                          PROLOGUE, HAS_BIAS)
    else:
        _store_output(acc, squares, K, eps, bias_ptr, out_ptr, rows, cols, col_mask, out_mask, stride_om,
                      PROLOGUE, HAS_BIAS)


@triton.jit
def _store_output(acc, squares, K, eps, bias_ptr, out_ptr, rows, cols, col_mask, out_mask, stride_om,
                  PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr):
    if PROLOGUE == 1:
        acc = acc * tl.rsqrt(squares / K + eps)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def small_linear_config(rows: int, out_features: int, in_features: int, device: torch.device,
                        block_n: int = 64, block_k: int = 128, programs_per_sm: int = 3,
                        num_warps: int = 4, num_stages: int = 4) -> dict:
    """Tile sizes and the K split for one call: aim at a few programs per multiprocessor (so the
    weight streams at full bandwidth) without splits shorter than two K tiles."""
    if _INTERPRET or device.type != "cuda":
        block_n, block_k, programs, num_stages = 16, 16, 8, 1
    else:
        programs = programs_per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    col_tiles = triton.cdiv(out_features, block_n)
    k_tiles = triton.cdiv(in_features, block_k)
    split = max(1, min(programs // col_tiles, k_tiles // 2))
    k_per_split = triton.cdiv(k_tiles, split) * block_k
    split = triton.cdiv(in_features, k_per_split)  # none empty
    return dict(BLOCK_N=block_n, BLOCK_K=block_k, split_k=split, k_per_split=k_per_split,
                num_warps=num_warps, num_stages=num_stages)


def _launch(x, weight, bias, prologue, norm_weight=None, eps=0.0, residual=None, config=None):
    rows = x.shape[0]
    out_features, in_features = weight.shape
    if rows > MAX_ROWS:
        raise ValueError(f"small_linear takes at most {MAX_ROWS} rows, got {rows}")
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError("x and weight must be contiguous in their last dimension")
    expected = 2 * in_features if prologue == PROLOGUE_SILU_MUL else in_features
    if x.shape[1] != expected:
        raise ValueError(f"x has {x.shape[1]} features, the weight takes {expected}")
    out = torch.empty((rows, out_features), dtype=weight.dtype, device=x.device)
    residual_out = torch.empty_like(x) if residual is not None else out
    if rows == 0:
        return out, residual_out
    config = dict(config or small_linear_config(rows, out_features, in_features, x.device))
    k_per_split, split = config.pop("k_per_split"), config.pop("split_k")
    col_tiles = triton.cdiv(out_features, config["BLOCK_N"])
    part = torch.empty((split, rows, out_features), dtype=torch.float32, device=x.device) if split > 1 else out
    part_sq = (torch.empty((split, col_tiles, rows), dtype=torch.float32, device=x.device)
               if split > 1 and prologue == PROLOGUE_RMS_NORM else part)
    counters = arrival_counters(col_tiles, x.device) if split > 1 else out
    _small_linear_kernel[(col_tiles, split)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else weight,
        weight, bias if bias is not None else weight, out, residual_out, part, part_sq, counters,
        rows, out_features, in_features, eps, k_per_split, split,
        x.stride(0), residual.stride(0) if residual is not None else 0, weight.stride(0), out.stride(0),
        residual_out.stride(0),
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, SPLIT=split > 1,
        BLOCK_M=max(16, triton.next_power_of_2(rows)),
        DOT_PRECISION="ieee" if weight.dtype == torch.float32 else None,
        **config, **pdl.launch_args(x.device),
    )
    return out, residual_out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           config: dict | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x of at most MAX_ROWS rows. `config`: small_linear_config's
    (the default is its own choice; the kernels bench tries others)."""
    return _launch(x, weight, bias, PROLOGUE_NONE, config=config)[0]


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                    bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                    config: dict | None = None):
    """linear(rms_norm(x [+ residual])); with a residual, also returns x + residual."""
    if norm_weight.shape != (x.shape[1],):
        raise ValueError(f"norm weight shape {tuple(norm_weight.shape)} does not match {x.shape[1]} features")
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1):
        raise ValueError(f"residual shape {tuple(residual.shape)} differs from x {tuple(x.shape)}")
    out, residual_out = _launch(x, weight, bias, PROLOGUE_RMS_NORM, norm_weight, eps, residual, config)
    return out if residual is None else (out, residual_out)


def silu_and_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        config: dict | None = None) -> torch.Tensor:
    """linear(silu(gate) * up) for x = [gate | up]."""
    return _launch(x, weight, bias, PROLOGUE_SILU_MUL, config=config)[0]
