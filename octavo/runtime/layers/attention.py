"""Paged attention as a layer: write this step's K/V into the cache, then attend through the block
tables. The kernel call (Triton on CUDA, torch reference elsewhere) is in octavo.kernels.ops.

`attention_breaks(fn)`: while it is active, every layer's `attend` calls fn(layer, query, meta)
instead. Piecewise CUDA graphs (piecewise_graphs.py) end a graph there: attention, whose work
depends on the step's context lengths, runs between the graphs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from octavo.kernels import ops


@dataclass
class AttentionMetadata:
    """The flat batch's layout, built once per step by the model runner and shared by all layers."""

    slot_mapping: torch.Tensor  # [T] int64, cache slot of every new token (-1: padding)
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32, context length after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32
    decode_only: bool  # every request has exactly one new token


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 alibi_slopes: torch.Tensor | None = None, sliding_window: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        if alibi_slopes is not None:
            self.register_buffer("alibi_slopes", alibi_slopes.float(), persistent=False)
        else:
            self.alibi_slopes = None
        # Bound by the model runner once the cache is allocated.
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """query [T, H, D], key/value [T, Hkv, D] -> [T, H * D]."""
        ops.write_kv_cache(key, value, self.k_cache, self.v_cache, meta.slot_mapping)
        return self.attend(query, meta)

    def attend(self, query: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """query [T, H, D] -> [T, H * D], this step's K/V already in the cache (a rotary model stores
        them in its rotary kernel: ops.rotary_and_write_kv). Under attention_breaks: the break's."""
        if _BREAK is not None:
            return _BREAK(self, query, meta)
        return self.run(query, meta)

    def attend_rotary(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor,
                      cos_sin_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """A rotary model's attention from its unrotated query, key and value ([T, H(kv), D]): rotate
        them, store the key and value, attend. One kernel for a decode step when ops.py fuses the
        rotary into the decode kernel (and no attention break is active); two otherwise."""
        if meta.decode_only and _BREAK is None and ops.FUSED_DECODE_ROTARY and self.alibi_slopes is None:
            out = ops.paged_decode_attention_rotary(query, key, value, positions, cos_sin_cache, meta.slot_mapping,
                                                    self.k_cache, self.v_cache, meta.block_tables, meta.seq_lens,
                                                    self.scale, self.sliding_window)
            return out.reshape(out.shape[0], self.num_heads * self.head_dim)
        query = ops.rotary_and_write_kv(query, key, value, positions, cos_sin_cache, self.k_cache, self.v_cache,
                                        meta.slot_mapping)
        return self.attend(query, meta)

    def run(self, query: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor | None = None) -> torch.Tensor:
        """The attention itself (never a break), written to `out` ([T, H, D]) when given."""
        if meta.decode_only:
            out = ops.paged_decode_attention(query, self.k_cache, self.v_cache, meta.block_tables,
                                             meta.seq_lens, self.scale, self.alibi_slopes,
                                             self.sliding_window, out=out)
        else:
            out = ops.paged_attention(query, self.k_cache, self.v_cache, meta.block_tables,
                                      meta.query_start_loc, meta.seq_lens, self.scale,
                                      self.alibi_slopes, self.sliding_window, out=out)
        return out.reshape(out.shape[0], self.num_heads * self.head_dim)


_BREAK: Callable[[PagedAttention, torch.Tensor, AttentionMetadata], torch.Tensor] | None = None


@contextlib.contextmanager
def attention_breaks(fn: Callable[[PagedAttention, torch.Tensor, AttentionMetadata], torch.Tensor]) -> Iterator[None]:
    """Route every PagedAttention.attend to fn(layer, query, meta) inside the block (one at a time)."""
    global _BREAK
    if _BREAK is not None:
        raise RuntimeError("attention_breaks is already active")
    _BREAK = fn
    try:
        yield
    finally:
        _BREAK = None
