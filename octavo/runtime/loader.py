"""Model sources -> a local directory -> parameters.

A source is a local HF-format directory, the name of an embedded demo model, or a hub id
(resolved with huggingface_hub; never exercised here: no hub access). Weights come from
safetensors files (sharded through model.safetensors.index.json) or, with load_format="dummy",
are drawn at random from config.json alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

logger = logging.getLogger("octavo")

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def resolve_model_path(model: str | None, revision: str | None = None,
                       download_dir: str | None = None, load_format: str = "auto") -> str:
    """Where the model's files are on disk. None means the embedded demo target."""
    from octavo.runtime import demo

    if model is None:
        return str(demo.DEMO_TARGET_DIR)
    demo_dir = demo.resolve_demo(model)
    if demo_dir is not None:
        return str(demo_dir)
    if os.path.isdir(model):
        return os.path.abspath(model)
    if os.path.exists(model):
        raise ValueError(f"model {model!r} is a file; pass the directory holding config.json")
    from huggingface_hub import snapshot_download

    patterns = [p for p in _HUB_PATTERNS if load_format != "dummy" or not p.endswith(".safetensors")]
    try:
        return snapshot_download(repo_id=model, revision=revision, cache_dir=download_dir,
                                 allow_patterns=patterns)
    except Exception as exc:  # the hub's errors vary by version; the message is what matters
        raise ValueError(f"cannot find model {model!r}: not a local directory and the hub lookup "
                         f"failed ({type(exc).__name__}: {exc})") from exc


def load_hf_config(path: str):
    """config.json through transformers, never with remote code."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path} has no config.json: not a Hugging Face model directory")
    return AutoConfig.from_pretrained(path, trust_remote_code=False)


def safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    files = sorted(str(p) for p in Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} has no *.safetensors weights (use load_format='dummy' for random weights)")
    return files


def iterate_weights(path: str, lazy: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, one shard open at a time. With lazy=True the
    tensor is a safetensors slice, read only where indexed (`t[a:b]`, `t[:, a:b]`, `t[:]`): a
    tensor-parallel rank reads its shard and nothing more."""
    from safetensors import safe_open

    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, (f.get_slice(name) if lazy else f.get_tensor(name))


def load_weights(model: torch.nn.Module, path: str, partial: bool = False) -> None:
    """Copy checkpoint tensors into the model through its `load_weight(name, tensor)` hook, then
    check that every parameter was written (partial=True: those the checkpoint lacks keep what
    they hold, e.g. dummy weights). A model with `loads_lazy_slices` gets lazy slices."""
    loaded: set[str] = set()
    for name, tensor in iterate_weights(path, lazy=getattr(model, "loads_lazy_slices", False)):
        loaded.update(model.load_weight(name, tensor))
    missing = [n for n, _ in model.named_parameters() if n not in loaded]
    if partial:
        if not loaded:
            raise ValueError(f"the partial checkpoint at {path} holds no tensor of this model's parameters")
        logger.info("partial checkpoint at %s: %d parameters loaded, %d random", path, len(loaded), len(missing))
    elif missing:
        raise ValueError(f"checkpoint at {path} lacks weights for: {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))


@torch.no_grad()
def init_dummy_weights(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Random weights of the right shapes (benchmarks with no checkpoint): norms at 1, biases
    at 0, everything else normal(0, std), seeded."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif "norm" in name or "ln_" in name:
            param.fill_(1.0)
        else:
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, std, generator=generators[param.device])
