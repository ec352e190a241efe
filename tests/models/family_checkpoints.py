"""Tiny random GPT-2 and BLOOM checkpoints (built with transformers, saved with save_pretrained,
the shared locally trained tokenizer beside them). transformers' outputs, the oracle, come from
tests/hf_reference.py."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tiny_models import build_tokenizer


def gpt2_config(vocab_size: int, **overrides):
    from transformers import GPT2Config

    # Five heads: like gpt2-xl (25), not a power of two.
    values = dict(vocab_size=vocab_size, n_embd=80, n_layer=2, n_head=5, n_positions=1024,
                  activation_function="gelu_new", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return GPT2Config(**values)


def bloom_config(vocab_size: int, **overrides):
    from transformers import BloomConfig

    # Six heads: the ALiBi slopes take the interpolated (non-power-of-two) form.
    values = dict(vocab_size=vocab_size, hidden_size=96, n_layer=2, n_head=6, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return BloomConfig(**values)


_CONFIGS = {"gpt2": gpt2_config, "bloom": bloom_config}


def build_family_checkpoint(root: Path, family: str, seed: int = 0, tag: str = "", **overrides) -> Path:
    """Save a random tiny model of the family with the shared tokenizer; returns its directory.

    Every parameter is random, biases and LayerNorm gains included: a bias loaded into the wrong
    rows (BLOOM's interleaved QKV) or a weight not transposed (GPT-2's Conv1D) changes the output.
    Projections are scaled so each layer's output outweighs the residual it is added to: with
    small weights a tied-head model mostly predicts its input token again, and attention (ALiBi
    slopes, QKV layout) barely reaches the greedy tokens."""
    from transformers import AutoModelForCausalLM

    path = root / f"{family}-{seed}{tag}"
    if (path / "config.json").exists():
        return path
    tokenizer = build_tokenizer()
    config = _CONFIGS[family](len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    projection_std = 3.0 / config.hidden_size ** 0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("wte.weight", "wpe.weight", "word_embeddings.weight")):
                param.normal_(0.0, 0.5)
            elif param.dim() > 1:
                param.normal_(0.0, projection_std)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05)
            else:
                param.normal_(1.0, 0.1)  # LayerNorm gains
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
