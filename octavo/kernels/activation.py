"""silu(gate) * up in Triton (same signature and rounding as elementwise_ref.silu_and_mul_ref)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, inner, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inner + cols, mask=mask, other=0.0)
    # Two roundings, as in the reference: silu's result in the input dtype, then the product.
    silu = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty)
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> [..., I]: silu(gate) * up, gate being the first half."""
    if x.shape[-1] % 2:
        raise ValueError(f"last dim {x.shape[-1]} must be even (gate and up halves)")
    inner = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((*x.shape[:-1], inner), dtype=x.dtype, device=x.device)
    out2 = out.view(-1, inner)
    if x2.shape[0] and inner:
        block = min(triton.next_power_of_2(inner), 2048)
        grid = (x2.shape[0], triton.cdiv(inner, block))
        _silu_and_mul_kernel[grid](x2, out2, inner, x2.stride(0), out2.stride(0), BLOCK=block,
                                   num_warps=4)
    return out
