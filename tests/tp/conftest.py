"""Fixtures for the tensor-parallel tests (CPU, gloo, 2 processes): tiny checkpoints beyond the
shared ones, and engines that always stop their worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_models import build_tokenizer, llama_family_config


@pytest.fixture(autouse=True)
def one_thread():
    """Rank 0 and its worker share two busy cores: one intra-op thread each."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tp")


@pytest.fixture(scope="session")
def single_kv_head_dir(tp_root) -> Path:
    """One KV head for two ranks (replicated), and a vocabulary (387 rows, 384 tokens) that two
    ranks split unevenly (the last shard padded)."""
    from transformers import AutoModelForCausalLM

    path = tp_root / "llama-1kv"
    tokenizer = build_tokenizer()
    config = llama_family_config("llama", 387, num_key_value_heads=1)
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
