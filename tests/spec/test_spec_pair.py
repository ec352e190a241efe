"""bench/spec_pair.py: the controlled-agreement construction, on checkpoints and on live
dummy-weight engines."""

from __future__ import annotations

import torch

REDUCED_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)


def test_state_dicts(spec_pair):
    state = {
        "model.embed_tokens.weight": torch.ones(4, 2),
        "model.layers.0.self_attn.o_proj.weight": torch.ones(2, 2),
        "model.layers.1.self_attn.o_proj.weight": torch.ones(2, 2),
        "model.layers.1.mlp.down_proj.weight": torch.ones(2, 2),
        "model.layers.1.mlp.gate_proj.weight": torch.ones(2, 2),
        "model.norm.weight": torch.ones(2),
        "lm_head.weight": torch.ones(4, 2),
    }
    target, draft = spec_pair.controlled_state_dicts(state, draft_layers=1, later_layer_scale=0.25)
    assert sorted(draft) == ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight",
                             "model.norm.weight"]
    assert target["model.layers.1.self_attn.o_proj.weight"].max() == 0.25
    assert target["model.layers.1.mlp.down_proj.weight"].max() == 0.25
    assert target["model.layers.1.mlp.gate_proj.weight"].max() == 1.0  # reads, not writes: unscaled
    assert target["model.layers.0.self_attn.o_proj.weight"].max() == 1.0


def test_dummy_engine_pair_agreement_follows_the_scale(spec_pair, tmp_path):
    """From a bench config (reduced) with dummy weights: scale 0 means full agreement, a large
    scale much less; the rates come from the engine's own counters."""
    config = {**spec_pair.load_config("llama-3.1-8b"), **REDUCED_LLAMA}
    rates = {}
    for scale in (0.0, 1.0):
        llm = spec_pair.build_controlled_llm(config, draft_layers=1, later_layer_scale=scale,
                                             num_speculative_tokens=3, workdir=tmp_path / str(scale), seed=0,
                                             dtype="float32", num_gpu_blocks=64).llm
        engine = llm.llm_engine
        target, draft = engine.model_runner.model, engine.proposer.runner.model
        assert torch.equal(draft.lm_head.weight, target.lm_head.weight)
        assert torch.equal(draft.model.layers[0].mlp.down_proj.weight, target.model.layers[0].mlp.down_proj.weight)
        rates[scale] = spec_pair.measure_acceptance(llm, num_prompts=2, prompt_len=8, max_tokens=16)
    assert rates[0.0]["acceptance_rate"] == 1.0
    assert rates[1.0]["acceptance_rate"] < 0.9
    assert 1.0 <= rates[1.0]["tokens_per_verification"] < rates[0.0]["tokens_per_verification"]


def test_scale_can_change_between_runs(spec_pair, tmp_path):
    """Rescaling reuses the original weights: going 1 -> 0 -> 1 gives the first run's rate again."""
    config = {**spec_pair.load_config("llama-3.1-8b"), **REDUCED_LLAMA}
    pair = spec_pair.build_controlled_llm(config, draft_layers=1, later_layer_scale=1.0, num_speculative_tokens=3,
                                          workdir=tmp_path, seed=0, dtype="float32", num_gpu_blocks=64)
    first = spec_pair.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16)
    pair.set_scale(0.0)
    assert spec_pair.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16)["acceptance_rate"] == 1.0
    pair.set_scale(1.0)
    assert spec_pair.measure_acceptance(pair.llm, num_prompts=2, prompt_len=8, max_tokens=16) == first
    timing = spec_pair.decode_throughput(pair.llm, batch_size=2, k=0, prompt_len=8, max_tokens=8)
    assert timing["drafted"] == 0 and timing["output_tokens_per_s"] > 0
