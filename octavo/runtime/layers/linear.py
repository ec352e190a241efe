"""Tensor-parallel layers (Megatron's splits). At tensor_parallel_size 1 each one is exactly the torch
layer it replaces: same parameter names and shapes, same arithmetic.

  ColumnParallelLinear    W split by output rows: each rank computes its slice of y = x W^T. A fused
                          layout (QKV, gate/up) splits every part, so rank r owns the q, k and v
                          (or gate and up) slices that belong together.
  RowParallelLinear       W split by input columns: each rank multiplies its slice of x (a column-
                          parallel output) and one all-reduce sums the partial products.
  VocabParallelEmbedding  rows split by token id: ids outside a rank's range give zeros and one
                          all-reduce puts each row together.
  ParallelLMHead          the same split of the vocabulary: each rank's logits are gathered to rank 0
                          once per step, for sampling.

A layer takes its group from `current_tp_group()` when built (see distributed.building_with). Each
parameter carries `weight_loader(param, loaded, part=None)`: `loaded` is the checkpoint tensor or a
safetensors slice (indexing one reads only what is asked), so a rank reads only its shard.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from octavo.kernels import ops
from octavo.runtime.distributed import TPGroup, current_tp_group
from octavo.runtime.tp_shapes import divide


def checkpoint_shape(loaded: Any) -> tuple[int, ...]:
    """Shape of a checkpoint tensor or a lazy safetensors slice."""
    return tuple(loaded.shape) if isinstance(loaded, torch.Tensor) else tuple(loaded.get_shape())


def copy_into(target: torch.Tensor, data: torch.Tensor, what: str) -> None:
    if tuple(target.shape) != tuple(data.shape):
        raise ValueError(f"{what}: the checkpoint's shard has shape {tuple(data.shape)} but the parameter "
                         f"expects {tuple(target.shape)}: the checkpoint does not match config.json")
    target.copy_(data)


def load_replicated(param: torch.Tensor, loaded: Any, part: Any = None) -> None:
    """Every rank holds the whole tensor (norms, biases of row-parallel layers)."""
    copy_into(param.data, loaded[:], "replicated parameter")


def _attach(param: nn.Parameter | None, loader) -> None:
    if param is not None:
        param.weight_loader = loader


class ColumnParallelLinear(nn.Linear):
    """y = x W^T + b with W's rows (and b) split across ranks. `shards` gives, per fused part, the
    first row of this rank's slice in the checkpoint's tensor for that part and its row count."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 shards: list[tuple[int, int]] | None = None) -> None:
        tp = current_tp_group()
        if shards is None:
            rows = divide(output_size, tp.size, "output features")
            shards = [(tp.rank * rows, rows)]
        super().__init__(input_size, sum(rows for _, rows in shards), bias=bias)
        self.tp = tp
        self.shards = shards
        _attach(self.weight, self.weight_loader)
        _attach(self.bias, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: Any, part: int | None = None) -> None:
        if part is None:
            if len(self.shards) != 1:
                raise ValueError("a fused column-parallel layer loads one part at a time (name the part)")
            part = 0
        offset = sum(rows for _, rows in self.shards[:part])
        start, rows = self.shards[part]
        copy_into(param.data[offset:offset + rows], loaded[start:start + rows], f"part {part} of a column-parallel layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)

    def forward_normed(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None):
        """self(rms_norm(x [+ residual])), one kernel where ops.py fuses the norm into the projection;
        with a residual, (that, x + residual)."""
        return ops.rms_norm_linear(x, norm_weight, eps, self.weight, self.bias, residual)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate and up): each part split evenly."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True) -> None:
        tp = current_tp_group()
        shards = []
        for size in output_sizes:
            rows = divide(size, tp.size, "output features")
            shards.append((tp.rank * rows, rows))
        super().__init__(input_size, sum(output_sizes), bias=bias, shards=shards)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul, split by heads. With fewer KV heads than ranks, each
    KV head is replicated: rank r holds KV head r * num_kv_heads // tp, the one its query heads
    attend with."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool) -> None:
        tp = current_tp_group()
        self.num_heads = divide(num_heads, tp.size, "num_attention_heads")
        if num_kv_heads >= tp.size:
            self.num_kv_heads = divide(num_kv_heads, tp.size, "num_key_value_heads")
            first_kv = tp.rank * self.num_kv_heads
        else:
            if tp.size % num_kv_heads:
                raise ValueError(f"tensor_parallel_size ({tp.size}) must be a multiple of num_key_value_heads "
                                 f"({num_kv_heads}) when larger")
            self.num_kv_heads = 1
            first_kv = tp.rank * num_kv_heads // tp.size
        self.head_dim = head_dim
        q = (tp.rank * self.num_heads * head_dim, self.num_heads * head_dim)
        kv = (first_kv * head_dim, self.num_kv_heads * head_dim)
        super().__init__(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias, shards=[q, kv, kv])


class RowParallelLinear(nn.Linear):
    """y = x W^T + b with W's columns split across ranks: x is this rank's slice of the input
    features (a column-parallel layer's output); one all-reduce sums the partial products, then
    the (replicated) bias is added once."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True) -> None:
        tp = current_tp_group()
        columns = divide(input_size, tp.size, "input features")
        super().__init__(columns, output_size, bias=bias)
        self.tp = tp
        self.first_column = tp.rank * columns
        _attach(self.weight, self.weight_loader)
        _attach(self.bias, load_replicated)

    def weight_loader(self, param: nn.Parameter, loaded: Any, part: Any = None) -> None:
        data = loaded[:, self.first_column:self.first_column + self.in_features]
        copy_into(param.data, data, "a row-parallel layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return ops.linear(x, self.weight, self.bias)
        return self.summed(ops.linear(x, self.weight))

    def forward_silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """self(silu(gate) * up) for gate_up = [gate | up] (a merged column-parallel output), one
        kernel where ops.py fuses the activation into the projection."""
        if self.tp.size == 1:
            return ops.silu_and_mul_linear(gate_up, self.weight, self.bias)
        return self.summed(ops.silu_and_mul_linear(gate_up, self.weight))

    def summed(self, partial: torch.Tensor) -> torch.Tensor:
        """The ranks' partial products added up, then the (replicated) bias once."""
        out = self.tp.all_reduce(partial)
        return out if self.bias is None else out + self.bias


def vocab_shard(vocab_size: int, tp: TPGroup) -> tuple[int, int]:
    """(first id, rows) of this rank's slice of the vocabulary: ceil(vocab / tp) rows per rank, the
    last rank's tail past the vocabulary padded."""
    rows = -(-vocab_size // tp.size)
    return tp.rank * rows, rows


def _load_vocab_rows(param: nn.Parameter, loaded: Any, first: int, vocab_size: int) -> None:
    rows = param.shape[0]
    real = max(0, min(rows, vocab_size - first))
    if checkpoint_shape(loaded)[0] != vocab_size:
        raise ValueError(f"the checkpoint's vocabulary has {checkpoint_shape(loaded)[0]} rows but config.json "
                         f"says vocab_size={vocab_size}")
    copy_into(param.data[:real], loaded[first:first + real], "a vocabulary-parallel table")
    param.data[real:].zero_()


class VocabParallelEmbedding(nn.Embedding):
    """The token embedding, rows split by token id across ranks."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        tp = current_tp_group()
        self.first_id, rows = vocab_shard(num_embeddings, tp)
        super().__init__(rows, embedding_dim)
        self.tp = tp
        self.vocab_size = num_embeddings
        _attach(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: Any, part: Any = None) -> None:
        _load_vocab_rows(param, loaded, self.first_id, self.vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.first_id
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out, first_of_forward=True)


class ParallelLMHead(nn.Module):
    """The output projection, rows split like VocabParallelEmbedding's (so a tied head is the
    embedding's own shard). Not an nn.Embedding: a decode step streams all of it."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        tp = current_tp_group()
        self.first_id, rows = vocab_shard(vocab_size, tp)
        self.weight = nn.Parameter(torch.empty(rows, hidden_size))
        self.tp = tp
        self.vocab_size = vocab_size
        _attach(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: Any, part: Any = None) -> None:
        _load_vocab_rows(param, loaded, self.first_id, self.vocab_size)


def parallel_logits(hidden: torch.Tensor, weight: torch.Tensor, tp: TPGroup, vocab_size: int) -> torch.Tensor:
    """Float32 logits [rows, vocab] on rank 0 from this rank's vocabulary shard of the head (the
    other ranks take part in the gather and get their own shard back)."""
    if tp.size == 1:
        return F.linear(hidden, weight).float()
    logits = tp.gather_last_dim(F.linear(hidden, weight))
    return logits[..., :vocab_size].float() if tp.rank == 0 else logits.float()
