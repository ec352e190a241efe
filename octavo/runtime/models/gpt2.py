"""GPT-2 (GPT2LMHeadModel): learned absolute positions, pre-LayerNorm blocks, tanh-GELU MLP,
LM head tied to the token embedding.

    x = wte[token] + wpe[position]
    per block: x = x + c_proj(attn(c_attn(ln_1(x))));  x = x + c_proj(gelu(c_fc(ln_2(x))))
    logits = ln_f(x) @ wte^T

The checkpoint stores every projection as a Conv1D, whose weight is [in, out]; here they are
nn.Linear ([out, in]) and `load_weight` transposes them. c_attn's output is [q | k | v], each
head-major, so it splits like Llama's fused QKV.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from octavo.runtime.layers.attention import AttentionMetadata, PagedAttention

# Checkpoint activation names -> F.gelu's `approximate`. The three tanh names are the same
# function (written differently in transformers); "gelu" is the exact erf form.
_GELU_APPROXIMATE = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
_CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, config: Any, layer_index: int) -> None:
        super().__init__()
        hidden = config.n_embd
        self.num_heads = config.n_head
        self.head_dim = hidden // self.num_heads
        if self.head_dim * self.num_heads != hidden:
            raise ValueError(f"n_embd ({hidden}) is not a multiple of n_head ({self.num_heads})")
        scale = self.head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_index + 1
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.c_proj = nn.Linear(hidden, hidden)
        self.paged_attn = PagedAttention(self.num_heads, self.num_heads, self.head_dim, scale)

    def forward(self, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.c_attn(hidden).chunk(3, dim=-1)
        shape = (num_tokens, self.num_heads, self.head_dim)
        out = self.paged_attn(q.reshape(shape), k.reshape(shape), v.reshape(shape), meta)
        return self.c_proj(out)


class GPT2MLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        inner = getattr(config, "n_inner", None) or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)
        act = config.activation_function
        if act not in _GELU_APPROXIMATE:
            raise ValueError(f"activation_function {act!r} is not supported for GPT-2 "
                             f"(supported: {', '.join(sorted(_GELU_APPROXIMATE))})")
        self.approximate = _GELU_APPROXIMATE[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class GPT2Block(nn.Module):
    def __init__(self, config: Any, layer_index: int) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = GPT2Attention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), meta)
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            hidden = block(hidden, meta)
        return self.ln_f(hidden)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 and its sizes (gpt2 .. gpt2-xl), DistilGPT2 and other GPT2LMHeadModel checkpoints."""

    def __init__(self, config: Any, max_positions: int) -> None:
        super().__init__()
        if max_positions > config.n_positions:
            # The position table has n_positions rows: a later position has no embedding at all.
            raise ValueError(f"max_model_len ({max_positions}) exceeds GPT-2's {config.n_positions} learned "
                             f"positions: set max_model_len <= {config.n_positions}")
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (an encoder-decoder) is not supported")
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = None if getattr(config, "tie_word_embeddings", True) else (
            nn.Linear(config.n_embd, config.vocab_size, bias=False))

    @property
    def attention_layers(self) -> list[PagedAttention]:
        return [block.attn.paged_attn for block in self.transformer.h]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.transformer(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    @torch.no_grad()
    def load_weight(self, name: str, tensor: torch.Tensor) -> list[str]:
        """Copy one checkpoint tensor in; returns the parameter names it wrote.

        Accepts names with or without the "transformer." prefix (OpenAI's original checkpoints
        were saved from the bare GPT2Model), skips the saved causal-mask buffers, and transposes
        Conv1D weights."""
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return []  # the causal mask, persisted by old transformers versions
        if name == "lm_head.weight" and self.lm_head is None:
            return []  # tied: the embedding is the head
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        params = dict(self.named_parameters())
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
        if name.endswith(_CONV1D_WEIGHTS):
            tensor = tensor.t()
        param = params[name]
        if param.shape != tensor.shape:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(param.shape)}: config.json does not match the weights")
        param.copy_(tensor)
        return [name]
