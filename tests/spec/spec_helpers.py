"""Engines with and without a draft, for comparing their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from octavo import LLM

# What adaptive k's prior would believe of a GPU with a small draft: speculation pays at small batches.
CHEAP_DRAFT = 0.05


def make_llm(target, draft=None, k: int = 3, adaptive: bool = False, draft_cost_ratio: float | None = CHEAP_DRAFT,
             knee: float = 256.0, **kwargs) -> LLM:
    """An LLM on the tiny target, speculating with `draft` (fixed k unless adaptive; adaptive k's
    prior with the draft cost given, a cheap draft unless None: the tiny pair's own weights)."""
    options = dict(dtype="float32", num_gpu_blocks=256, max_num_seqs=16)
    options.update(kwargs)
    if draft is not None:
        options["speculative_config"] = {"model": str(draft), "num_speculative_tokens": k, "adaptive": adaptive,
                                         **options.get("speculative_config", {})}
    llm = LLM(str(target), **options)
    if draft is not None and draft_cost_ratio is not None:
        llm.llm_engine.controller.draft_cost_ratio = draft_cost_ratio
        llm.llm_engine.controller.knee = knee
    return llm


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def spec_totals(llm) -> tuple[int, int, int]:
    stats = llm.llm_engine.stats
    return stats.spec_draft_tokens, stats.spec_accepted_tokens, stats.spec_emitted_tokens


def pad_vocabulary(source: Path, out: Path, vocab_size: int) -> Path:
    """A copy of `source` whose embedding and LM head have extra rows no token uses."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            (out / file.name).write_bytes(file.read_bytes())
    config = json.loads((source / "config.json").read_text())
    old = config["vocab_size"]
    config["vocab_size"] = vocab_size
    (out / "config.json").write_text(json.dumps(config))
    state = load_file(str(source / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            extra = torch.zeros(vocab_size - old, state[name].shape[1])
            state[name] = torch.cat([state[name], extra]).contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
