"""BLOOM (BloomForCausalLM): no position embeddings at all, ALiBi biases in attention instead;
a LayerNorm right after the word embedding; tanh-GELU MLP; LM head tied to the embedding.

    x = LN_emb(wte[token])
    per block: a = dense(attn_alibi(qkv(LN_1(x)))) + x;  x = mlp(LN_2(a)) + a
    logits = ln_f(x) @ wte^T

Checkpoints store the fused query_key_value projection head-interleaved: output rows are
[head 0: q k v][head 1: q k v]... `load_weight` reorders them once into [all q | all k | all v]
so the forward splits contiguous blocks like every other model here; the parameter is called
qkv_proj to say that its layout is ours, not the checkpoint's.

ALiBi is relative (slope * -(query_pos - key_pos)); transformers adds slope * key_pos instead,
which differs by a per-query constant and so gives the same softmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from octavo.runtime.layers.alibi import alibi_slopes
from octavo.runtime.layers.attention import AttentionMetadata, PagedAttention


class BloomAttention(nn.Module):
    def __init__(self, config: Any, slopes: torch.Tensor) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.n_head
        self.head_dim = hidden // self.num_heads
        if self.head_dim * self.num_heads != hidden:
            raise ValueError(f"hidden_size ({hidden}) is not a multiple of n_head ({self.num_heads})")
        self.qkv_proj = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.paged_attn = PagedAttention(self.num_heads, self.num_heads, self.head_dim, self.head_dim ** -0.5,
                                         alibi_slopes=slopes)

    def forward(self, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).chunk(3, dim=-1)
        shape = (num_tokens, self.num_heads, self.head_dim)
        out = self.paged_attn(q.reshape(shape), k.reshape(shape), v.reshape(shape), meta)
        return self.dense(out)


class BloomMLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class BloomBlock(nn.Module):
    def __init__(self, config: Any, slopes: torch.Tensor) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.self_attention = BloomAttention(config, slopes)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = BloomMLP(config)
        # False in every released BLOOM; kept because the config field changes the graph.
        self.residual_after_norm = bool(getattr(config, "apply_residual_connection_post_layernorm", False))

    def forward(self, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        normed = self.input_layernorm(hidden)
        residual = normed if self.residual_after_norm else hidden
        hidden = self.self_attention(normed, meta) + residual
        normed = self.post_attention_layernorm(hidden)
        residual = normed if self.residual_after_norm else hidden
        return self.mlp(normed) + residual


class BloomModel(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        slopes = alibi_slopes(config.n_head)
        self.h = nn.ModuleList(BloomBlock(config, slopes) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        for block in self.h:
            hidden = block(hidden, meta)
        return self.ln_f(hidden)


class BloomForCausalLM(nn.Module):
    """BLOOM and BLOOMZ, every size. No position table, so max_positions limits nothing here."""

    def __init__(self, config: Any, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.transformer = BloomModel(config)
        self.lm_head = None if getattr(config, "tie_word_embeddings", True) else (
            nn.Linear(config.hidden_size, config.vocab_size, bias=False))

    def _apply(self, fn, recurse=True):
        # model.to(dtype) would round the slopes to half precision with the weights; the kernels
        # read them as float32, so keep them exact.
        super()._apply(fn, recurse)
        for attn in self.attention_layers:
            attn.alibi_slopes = attn.alibi_slopes.float()
        return self

    @property
    def attention_layers(self) -> list[PagedAttention]:
        return [block.self_attention.paged_attn for block in self.transformer.h]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.transformer(input_ids, meta)  # positions enter through the ALiBi bias only

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.transformer.word_embeddings.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    @torch.no_grad()
    def load_weight(self, name: str, tensor: torch.Tensor) -> list[str]:
        """Copy one checkpoint tensor in; returns the parameter names it wrote.

        Accepts names with or without the "transformer." prefix (BigScience's checkpoints were
        saved from the bare BloomModel) and de-interleaves query_key_value."""
        if name == "lm_head.weight" and self.lm_head is None:
            return []  # tied: the embedding is the head
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        if ".query_key_value." in name:
            name = name.replace(".query_key_value.", ".qkv_proj.")
            tensor = self._deinterleave_qkv(tensor)
        params = dict(self.named_parameters())
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
        param = params[name]
        if param.shape != tensor.shape:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(param.shape)}: config.json does not match the weights")
        param.copy_(tensor)
        return [name]

    def _deinterleave_qkv(self, tensor: torch.Tensor) -> torch.Tensor:
        """[heads * 3 * head_dim, ...] (per head: q, k, v) -> [3 * heads * head_dim, ...] (q, k, v)."""
        heads = self.config.n_head
        head_dim = self.config.hidden_size // heads
        rest = tensor.shape[1:]
        return tensor.reshape(heads, 3, head_dim, *rest).transpose(0, 1).reshape(3 * heads * head_dim, *rest)
