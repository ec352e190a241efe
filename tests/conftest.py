"""Shared fixtures: tiny local checkpoints (built once per session) and a KV-leak check that runs
after every test on every engine the test created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import build_checkpoint  # noqa: E402  (after the environment defaults)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def llama_dir(checkpoints) -> Path:
    return build_checkpoint(checkpoints, "llama")


@pytest.fixture(scope="session")
def mistral_dir(checkpoints) -> Path:
    return build_checkpoint(checkpoints, "mistral")


@pytest.fixture(scope="session")
def qwen2_dir(checkpoints) -> Path:
    return build_checkpoint(checkpoints, "qwen2")


@pytest.fixture(scope="session")
def family_dirs(llama_dir, mistral_dir, qwen2_dir) -> dict[str, Path]:
    return {"llama": llama_dir, "mistral": mistral_dir, "qwen2": qwen2_dir}


@pytest.fixture(autouse=True)
def no_leaked_kv_blocks(monkeypatch):
    """Every engine built during the test must end with every KV block free (after its
    unfinished requests, if any, are aborted)."""
    try:
        from octavo.runtime.engine import LLMEngine
    except ImportError:
        yield
        return
    engines: list = []
    original_init = LLMEngine.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        engines.append(self)

    monkeypatch.setattr(LLMEngine, "__init__", recording_init)
    yield
    for engine in engines:
        if getattr(engine, "_leak_check_done", False):
            continue
        engine.abort_request(list(engine.groups))
        engine.kv_cache.check_no_leaks()
        proposer = getattr(engine, "proposer", None)
        if proposer is not None:
            proposer.check_no_leaks()
