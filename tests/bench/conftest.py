"""Fixtures of the benchmark tests: a tiny config for --config (dummy) runs, and `bench`, which
runs `octavo bench ...` in process and returns (exit code, result JSON, files written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def tiny_overrides() -> str:
    """llama-3.1-8b's config shrunk to a toy: same family, llama3 rope scaling, float32."""
    return json.dumps({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512, "bos_token_id": 1,
        "eos_token_id": 2, "torch_dtype": "float32",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 128},
    })


@pytest.fixture
def bench(tmp_path):
    def run(*argv: str) -> tuple[int, dict | None, list[str]]:
        from octavo.cli import main

        out = tmp_path / "out"
        code = main(["bench", *argv, "--out", str(out)])
        results = sorted(out.glob("*.json")) if out.exists() else []
        data = json.loads(results[-1].read_text()) if results else None
        return code, data, sorted(p.name for p in out.iterdir()) if out.exists() else []

    return run


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
