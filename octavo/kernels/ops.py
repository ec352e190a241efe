"""The one switch between the Triton kernels and their torch references.

The engine calls only these functions. CUDA tensors take the Triton path (each kernel module
imported on first use); anything else, or OCTAVO_DISABLE_TRITON=1, takes the reference.

The projections (`linear`, `rms_norm_linear`, `silu_and_mul_linear`) go to gemv.py's Triton
kernels for at most OCTAVO_GEMV_MAX_ROWS rows (default 0: never, until a GPU measurement says
where they beat cuBLAS); otherwise to the norm or activation kernel and then F.linear (cuBLAS).
With OCTAVO_FUSED_DECODE_ROTARY=1 (default off, likewise unmeasured) a decode step's rotary
embedding and K/V write happen inside the decode attention kernel (paged_decode_attention_rotary).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from octavo.kernels.attention_ref import (paged_attention_ref, paged_decode_attention_ref,
                                          paged_decode_attention_rotary_ref)
from octavo.kernels.cache_ref import rotary_and_write_kv_ref, write_kv_cache_ref
from octavo.kernels.elementwise_ref import rms_norm_ref, rotary_ref, silu_and_mul_ref

_TRITON_DISABLED = os.environ.get("OCTAVO_DISABLE_TRITON", "0") == "1"
GEMV_MAX_ROWS = int(os.environ.get("OCTAVO_GEMV_MAX_ROWS", "0"))
if not 0 <= GEMV_MAX_ROWS <= 16:  # gemv.MAX_ROWS (not imported here: it needs Triton)
    raise ValueError(f"OCTAVO_GEMV_MAX_ROWS must be between 0 and 16, got {GEMV_MAX_ROWS}")
FUSED_DECODE_ROTARY = os.environ.get("OCTAVO_FUSED_DECODE_ROTARY", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and not _TRITON_DISABLED


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    if use_triton(key):
        from octavo.kernels.cache import write_kv_cache as kernel

        return kernel(key, value, k_cache, v_cache, slot_mapping)
    return write_kv_cache_ref(key, value, k_cache, v_cache, slot_mapping)


def _into(out, result):
    """The reference paths return a new tensor: copy it to the caller's output when one is given."""
    return result if out is None else out.copy_(result)


def paged_attention(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
                    alibi_slopes=None, sliding_window=None, out=None):
    if use_triton(query):
        from octavo.kernels.attention import paged_attention as kernel

        return kernel(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
                      alibi_slopes, sliding_window, out)
    return _into(out, paged_attention_ref(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
                                          scale, alibi_slopes, sliding_window))


def paged_decode_attention(query, k_cache, v_cache, block_tables, seq_lens, scale,
                           alibi_slopes=None, sliding_window=None, out=None):
    if use_triton(query):
        from octavo.kernels.attention import paged_decode_attention as kernel

        return kernel(query, k_cache, v_cache, block_tables, seq_lens, scale, alibi_slopes,
                      sliding_window, out)
    return _into(out, paged_decode_attention_ref(query, k_cache, v_cache, block_tables, seq_lens, scale,
                                                 alibi_slopes, sliding_window))


def paged_decode_attention_rotary(query, key, value, positions, cos_sin_cache, slot_mapping, k_cache, v_cache,
                                  block_tables, seq_lens, scale, sliding_window=None, out=None):
    if use_triton(query):
        from octavo.kernels.attention import paged_decode_attention_rotary as kernel

        return kernel(query, key, value, positions, cos_sin_cache, slot_mapping, k_cache, v_cache, block_tables,
                      seq_lens, scale, sliding_window, out)
    return _into(out, paged_decode_attention_rotary_ref(query, key, value, positions, cos_sin_cache, slot_mapping,
                                                        k_cache, v_cache, block_tables, seq_lens, scale,
                                                        sliding_window))


def rms_norm(x, weight, eps, residual=None):
    if use_triton(x):
        from octavo.kernels.norm import rms_norm as kernel

        return kernel(x, weight, eps, residual)
    return rms_norm_ref(x, weight, eps, residual)


def rotary(query, key, positions, cos_sin_cache):
    if use_triton(query):
        from octavo.kernels.rotary import rotary as kernel

        return kernel(query, key, positions, cos_sin_cache)
    return rotary_ref(query, key, positions, cos_sin_cache)


def rotary_and_write_kv(query, key, value, positions, cos_sin_cache, k_cache, v_cache, slot_mapping):
    if use_triton(query):
        from octavo.kernels.rotary import rotary_and_write_kv as kernel

        return kernel(query, key, value, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
    return rotary_and_write_kv_ref(query, key, value, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)


def silu_and_mul(x):
    if use_triton(x):
        from octavo.kernels.activation import silu_and_mul as kernel

        return kernel(x)
    return silu_and_mul_ref(x)


def use_gemv(x: torch.Tensor) -> bool:
    """Whether a projection of these rows runs as gemv.py's kernel."""
    return use_triton(x) and x.dim() == 2 and 0 < x.shape[0] <= GEMV_MAX_ROWS


def linear(x, weight, bias=None):
    if use_gemv(x):
        from octavo.kernels.gemv import linear as kernel

        return kernel(x, weight, bias)
    return F.linear(x, weight, bias)


def rms_norm_linear(x, norm_weight, eps, weight, bias=None, residual=None):
    """linear(rms_norm(x [+ residual])); with a residual, (that, x + residual)."""
    if use_gemv(x):
        from octavo.kernels.gemv import rms_norm_linear as kernel

        return kernel(x, norm_weight, eps, weight, bias, residual)
    if residual is None:
        return F.linear(rms_norm(x, norm_weight, eps), weight, bias)
    normed, residual = rms_norm(x, norm_weight, eps, residual)
    return F.linear(normed, weight, bias), residual


def silu_and_mul_linear(x, weight, bias=None):
    """linear(silu(gate) * up) for x = [gate | up]."""
    if use_gemv(x):
        from octavo.kernels.gemv import silu_and_mul_linear as kernel

        return kernel(x, weight, bias)
    return F.linear(silu_and_mul(x), weight, bias)
