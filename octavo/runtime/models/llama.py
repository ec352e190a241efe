"""The Llama family: Llama (incl. 3.1's rope scaling), Mistral (sliding window) and Qwen2 (QKV
bias). One decoder, three configs.

Per layer: x -> RMSNorm -> fused QKV -> rotary -> paged attention -> o_proj -> + residual ->
RMSNorm -> fused gate/up -> SiLU(gate) * up -> down -> + residual. The residual add is fused
into the next norm, and each norm and the activation into the projection after it
(ops.rms_norm_linear, ops.silu_and_mul_linear: separate kernels unless ops.py fuses them).

Tensor parallel (layers/linear.py): QKV and gate/up are column-split (each rank owns whole heads
and a slice of the MLP), o_proj and down_proj row-split with one all-reduce each; the embedding
and the LM head are split by vocabulary. At tensor_parallel_size 1 every layer is plain torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from octavo.kernels import ops
from octavo.runtime.distributed import current_tp_group
from octavo.runtime.layers.attention import AttentionMetadata, PagedAttention
from octavo.runtime.layers.linear import (MergedColumnParallelLinear, ParallelLMHead, QKVParallelLinear,
                                          RowParallelLinear, VocabParallelEmbedding, load_replicated,
                                          parallel_logits)
from octavo.runtime.layers.rotary import cos_sin_cache


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return ops.rms_norm(x, self.weight, self.eps, residual)


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, rotary_cache: torch.Tensor, qkv_bias: bool, sliding_window: int | None) -> None:
        super().__init__()
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads, total_kv_heads, qkv_bias)
        # This rank's heads (all of them at tensor_parallel_size 1).
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size,
                                        bias=getattr(config, "attention_bias", False) and not qkv_bias_only(config))
        self.rotary_cache = rotary_cache
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim ** -0.5,
                                   sliding_window=sliding_window)

    def forward(self, positions: torch.Tensor, qkv: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """qkv: self.qkv_proj of the normed hidden state, which the decoder layer computes (the norm
        fuses into the projection there)."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        num_tokens = qkv.shape[0]
        out = self.attn.attend_rotary(q.reshape(num_tokens, self.num_heads, self.head_dim),
                                      k.reshape(num_tokens, self.num_kv_heads, self.head_dim),
                                      v.reshape(num_tokens, self.num_kv_heads, self.head_dim),
                                      positions, self.rotary_cache, meta)
        return self.o_proj(out)


def qkv_bias_only(config: Any) -> bool:
    """Qwen2 has biases on q/k/v but not on o_proj."""
    return getattr(config, "model_type", "") == "qwen2"


class LlamaMLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias)
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported for Llama-family models (only silu)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward_silu_and_mul(self.gate_up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_cache: torch.Tensor, qkv_bias: bool, sliding_window: int | None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rotary_cache, qkv_bias, sliding_window)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, positions, hidden, residual, meta):
        # Each norm goes into the projection after it (ops.rms_norm_linear), the activation into
        # down_proj: at a few rows on a GPU that is one kernel each (kernels/gemv.py).
        norm, attention, mlp = self.input_layernorm, self.self_attn, self.mlp
        if residual is None:
            residual = hidden
            qkv = attention.qkv_proj.forward_normed(hidden, norm.weight, norm.eps)
        else:
            qkv, residual = attention.qkv_proj.forward_normed(hidden, norm.weight, norm.eps, residual)
        hidden = attention(positions, qkv, meta)
        norm = self.post_attention_layernorm
        gate_up, residual = mlp.gate_up_proj.forward_normed(hidden, norm.weight, norm.eps, residual)
        return mlp.down_proj.forward_silu_and_mul(gate_up), residual


class LlamaModel(nn.Module):
    def __init__(self, config: Any, max_positions: int, qkv_bias: bool, sliding_window: int | None) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        rotary_dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
        self.register_buffer("rotary_cache", cos_sin_cache(config, rotary_dim, max_positions), persistent=False)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, self.rotary_cache, qkv_bias, sliding_window)
            for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def _apply(self, fn, recurse=True):
        # Keep the layers' reference to the rotary table pointing at the moved buffer, and keep it
        # in float32 whatever dtype the weights take.
        table = self.rotary_cache
        super()._apply(fn, recurse)
        self.rotary_cache = table.to(self.rotary_cache.device)
        for layer in self.layers:
            layer.self_attn.rotary_cache = self.rotary_cache
        return self

    def forward(self, input_ids, positions, meta):
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Also serves MistralForCausalLM and Qwen2ForCausalLM."""

    # load_weight takes lazy safetensors slices: a tensor-parallel rank reads only its shard.
    loads_lazy_slices = True

    def __init__(self, config: Any, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.tp = current_tp_group()
        model_type = getattr(config, "model_type", "llama")
        qkv_bias = model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
        sliding_window = getattr(config, "sliding_window", None)
        if model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
            sliding_window = None
        self.model = LlamaModel(config, max_positions, qkv_bias, sliding_window)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head = None
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)

    @property
    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def forward(self, input_ids, positions, meta):
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return parallel_logits(hidden, weight, self.tp, self.config.vocab_size)

    # ---- checkpoint names -> fused parameters ------------------------------------------------
    _STACKED = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    @torch.no_grad()
    def load_weight(self, name: str, tensor: Any) -> list[str]:
        """Copy this rank's shard of one checkpoint tensor (a tensor or a lazy safetensors slice)
        in through the parameter's weight_loader; returns the parameter names it wrote."""
        if "rotary_emb.inv_freq" in name:
            return []
        if name == "lm_head.weight" and self.lm_head is None:
            return []  # tied: the embedding is the head
        params = dict(self.named_parameters())
        parts = name.split(".")
        for index, part in enumerate(parts):
            if part in self._STACKED:
                fused, shard = self._STACKED[part]
                fused_name = ".".join(parts[:index] + [fused] + parts[index + 1:])
                param = params[fused_name]
                param.weight_loader(param, tensor, shard)
                return [fused_name]
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
        param = params[name]
        getattr(param, "weight_loader", load_replicated)(param, tensor)
        return [name]
