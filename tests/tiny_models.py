"""Tiny checkpoints built locally for the tests: random weights, a byte-level BPE tokenizer trained
here with `tokenizers`, everything saved with save_pretrained. Nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

CORPUS = [
    "Machine learning is the study of algorithms that improve through experience.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Paged attention stores keys and values in fixed-size blocks, like virtual memory pages.",
    "Continuous batching admits new requests at every step instead of waiting for a batch.",
    "Ünïcödé: naïve café, crème brûlée, 東京, Привет мир, emoji 🚀🔥, ½ ¾ — “quotes”.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Speculative decoding lets a small draft model propose tokens that a large model verifies.",
    "Kubernetes operators reconcile custom resources into deployments and services.",
] * 4

# Prompts of different lengths that the token-exact tests share.
PROMPTS = [
    "Machine learning is",
    "The quick brown fox jumps over the lazy dog. Pack my box with",
    "Paged",
    "Continuous batching admits new requests at every step instead of waiting for a batch, and",
    "def add(a, b):",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    bos_id = tok.token_to_id("<s>")
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_family_config(family: str, vocab_size: int, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    common.update(overrides)
    if family == "llama":
        common.setdefault("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 128})
        common.setdefault("rope_theta", 500000.0)
        return LlamaConfig(**common)
    if family == "mistral":
        common.setdefault("sliding_window", 24)
        return MistralConfig(**common)
    if family == "qwen2":
        common.setdefault("tie_word_embeddings", True)
        return Qwen2Config(**common)
    raise ValueError(family)


def build_checkpoint(root: Path, family: str, seed: int = 0, max_shard_size: str | None = None,
                     **overrides) -> Path:
    """Save a random tiny model of the family with the shared tokenizer; returns its directory."""
    import torch
    from transformers import AutoModelForCausalLM

    path = root / f"{family}-{seed}" if not max_shard_size else root / f"{family}-{seed}-sharded"
    if (path / "config.json").exists():
        return path
    tokenizer = build_tokenizer()
    config = llama_family_config(family, len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():  # larger-than-default weights: sharper, less tie-prone logits
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(path)
    return path


def controlled_pair(target_dir: Path, out: Path, draft_layers: int, scale: float) -> tuple[Path, Path]:
    """octavo/bench/pairs.py's controlled pair made from a saved checkpoint (read into memory: small
    models only): out/target and out/draft with weights, config and the target's tokenizer."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from octavo.bench.pairs import controlled_state_dicts, write_pair_dirs

    state: dict = {}
    for file in sorted(Path(target_dir).glob("*.safetensors")):
        state.update(load_file(str(file)))
    dirs = write_pair_dirs(json.loads((Path(target_dir) / "config.json").read_text()), out, draft_layers)
    for directory, weights in zip(dirs, controlled_state_dicts(state, draft_layers, scale)):
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"),
                  metadata={"format": "pt"})
        for file in Path(target_dir).iterdir():
            if file.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "generation")):
                shutil.copy(file, directory / file.name)
    return dirs
