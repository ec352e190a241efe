"""The controlled pair of octavo/bench/pairs.py: the construction on state dicts and on live
dummy-weight engines, the calibration's bracketing, and the export that takes it to a server."""

from __future__ import annotations

import json
import math

import pytest
import torch

from octavo.bench import pairs

REDUCED_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)


def test_state_dicts():
    state = {
        "model.embed_tokens.weight": torch.ones(4, 2),
        "model.layers.0.self_attn.o_proj.weight": torch.ones(2, 2),
        "model.layers.1.self_attn.o_proj.weight": torch.ones(2, 2),
        "model.layers.1.mlp.down_proj.weight": torch.ones(2, 2),
        "model.layers.1.mlp.gate_proj.weight": torch.ones(2, 2),
        "model.norm.weight": torch.ones(2),
        "lm_head.weight": torch.ones(4, 2),
    }
    target, draft = pairs.controlled_state_dicts(state, draft_layers=1, scale=0.25)
    assert sorted(draft) == ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight",
                             "model.norm.weight"]
    assert target["model.layers.1.self_attn.o_proj.weight"].max() == 0.25
    assert target["model.layers.1.mlp.down_proj.weight"].max() == 0.25
    assert target["model.layers.1.mlp.gate_proj.weight"].max() == 1.0  # reads, not writes: unscaled
    assert target["model.layers.0.self_attn.o_proj.weight"].max() == 1.0


def test_dummy_engine_pair_agreement_follows_the_scale(tmp_path):
    """From a bench config (reduced) with dummy weights: scale 0 means full agreement, a large
    scale much less; the rates come from the engine's own counters."""
    config = {**pairs.load_config("llama-3.1-8b"), **REDUCED_LLAMA}
    rates = {}
    for scale in (0.0, 1.0):
        pair = pairs.build_controlled_llm(config, draft_layers=1, scale=scale, num_speculative_tokens=3,
                                          workdir=tmp_path / str(scale), seed=0, dtype="float32", num_gpu_blocks=64)
        target, draft = pairs.engine_models(pair.llm)
        assert torch.equal(draft.lm_head.weight, target.lm_head.weight)
        assert torch.equal(draft.model.layers[0].mlp.down_proj.weight, target.model.layers[0].mlp.down_proj.weight)
        rates[scale] = pairs.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16)
    assert rates[0.0]["acceptance_rate"] == 1.0
    assert rates[1.0]["acceptance_rate"] < 0.9
    assert 1.0 <= rates[1.0]["tokens_per_verification"] < rates[0.0]["tokens_per_verification"]


def test_scale_can_change_between_runs(tmp_path):
    """Rescaling reuses the original weights: going 1 -> 0 -> 1 gives the first run's rate again."""
    config = {**pairs.load_config("llama-3.1-8b"), **REDUCED_LLAMA}
    pair = pairs.build_controlled_llm(config, draft_layers=1, scale=1.0, num_speculative_tokens=3,
                                      workdir=tmp_path, seed=0, dtype="float32", num_gpu_blocks=64)
    first = pairs.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16)
    pair.set_scale(0.0)
    assert pairs.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16)["acceptance_rate"] == 1.0
    pair.set_scale(1.0)
    assert pairs.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16) == first


def test_find_scale_brackets_and_interpolates():
    curve = lambda s: math.exp(-((s / 0.05) ** 2))  # noqa: E731  acceptance falling steeply with s
    scale, evaluations = pairs.find_scale(curve, target=0.7, tolerance=0.02, high=0.1, max_evals=7)
    assert abs(curve(scale) - 0.7) <= 0.02 and len(evaluations) <= 7
    assert evaluations[0]["scale"] == 0.1  # the bracket's top first
    # A curve still above the target at the first top: the bracket widens.
    slow = lambda s: math.exp(-s)  # noqa: E731
    scale, evaluations = pairs.find_scale(slow, target=0.7, tolerance=0.02, high=0.1, max_evals=8)
    assert evaluations[1]["scale"] == pytest.approx(0.4) and abs(slow(scale) - 0.7) <= 0.02
    # Out of measurements: the closest one measured, NaN (no drafts) counted as 0.
    scale, evaluations = pairs.find_scale(lambda s: math.nan if s > 0.05 else 0.9, 0.7, 0.01, max_evals=2)
    assert len(evaluations) == 2 and evaluations[0]["acceptance_rate"] == 0.0 and scale == evaluations[1]["scale"]


def test_bandwidth_ceiling():
    assert pairs.bandwidth_ceiling(1.0, 0.0, 4) == {"acceptance": 1.0, "k": 4, "speedup": 5.0}
    ceiling = pairs.bandwidth_ceiling(0.7, 0.25, 4)
    assert 1.0 < ceiling["speedup"] < 2.0 and pairs.bandwidth_ceiling(None, 0.25, 4) is None


def test_export_reloads_to_the_same_weights(tmp_path):
    """An engine's fused q/k/v and gate/up weights, written under Hugging Face names, load back into
    octavo as the same tensors (the controlled pair reaches the server this way)."""
    from octavo import LLM
    from octavo.bench.models import write_synthetic_tokenizer

    config = {**pairs.load_config("llama-3.1-8b"), **REDUCED_LLAMA, "num_hidden_layers": 2, "eos_token_id": 2}
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    kwargs = dict(max_model_len=64, max_num_seqs=2, num_gpu_blocks_override=16, device="cpu", dtype="float32")
    model = LLM(str(source), load_format="dummy", seed=5, **kwargs).llm_engine.model_runner.model
    out = tmp_path / "exported"
    written = pairs.save_checkpoint(model, config, out, max_shard_bytes=200_000)
    (out / "config.json").write_text(json.dumps(config))
    write_synthetic_tokenizer(str(out), config["vocab_size"], config["eos_token_id"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert "model.layers.0.self_attn.k_proj.weight" in index["weight_map"]
    assert "model.layers.0.mlp.up_proj.weight" in index["weight_map"]
    assert written == sum(p.numel() * p.element_size() for p in model.parameters())
    reloaded = LLM(str(out), load_format="auto", **kwargs).llm_engine.model_runner.model
    theirs = dict(reloaded.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, theirs[name]), name
