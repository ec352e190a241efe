"""Fixtures for the speculative decoding tests: controlled target/draft pairs built from the tiny
checkpoints (octavo/bench/pairs.py's construction), a tiny-vocabulary pair for distribution tests,
and helpers to build engines with and without a draft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_models import build_checkpoint, controlled_pair

PAIR_SCALE = 0.12  # later-layer scale of the default pair: about half of greedy drafts accepted


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on shared cores: one intra-op thread is fastest and avoids oversubscription."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def spec_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spec")


@pytest.fixture(scope="session")
def pair(spec_root) -> tuple[Path, Path]:
    """(target, draft): a 2-layer tiny Llama and its 1-layer controlled draft."""
    base = build_checkpoint(spec_root, "llama", seed=0)
    return controlled_pair(base, spec_root / "pair", 1, PAIR_SCALE)


@pytest.fixture(scope="session")
def exact_pair(spec_root) -> tuple[Path, Path]:
    """Scale 0: the target computes the draft's function, so every draft is accepted."""
    base = build_checkpoint(spec_root, "llama", seed=0)
    return controlled_pair(base, spec_root / "exact", 1, 0.0)


# ---- a tiny-vocabulary pair ---------------------------------------------------------------------
LETTERS = [chr(ord("a") + i) for i in range(21)]
TINY_VOCAB = ["<pad>", "<s>", "</s>"] + LETTERS  # 24 ids


def tiny_vocab_checkpoint(root: Path, seed: int, num_layers: int, std: float = 0.3) -> Path:
    """A Llama with a 24-token word-level vocabulary and sharp random weights: distributions
    peaked enough that a wrong acceptance rule shows in a few hundred samples."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    path = root / f"tiny-vocab-{seed}-{num_layers}"
    if (path / "config.json").exists():
        return path
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TINY_VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vocab_pair(spec_root) -> tuple[Path, Path]:
    """A target and an independently drawn draft (same tokenizer): they disagree a lot."""
    return tiny_vocab_checkpoint(spec_root, 0, 2), tiny_vocab_checkpoint(spec_root, 1, 1)
