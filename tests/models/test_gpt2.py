"""GPT2LMHeadModel through the engine: token-exact against transformers, and the 1024-position
limit of the learned position table enforced."""

from __future__ import annotations

import shutil

import pytest
import torch

import family_scenarios as scenarios
from family_checkpoints import build_family_checkpoint, gpt2_config
from hf_reference import hf_greedy
from octavo import LLM, SamplingParams


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_matches_transformers(gpt2_dir, prefix_caching):
    scenarios.greedy_matches_transformers(gpt2_dir, prefix_caching)


def test_prefix_cache_hits_stay_exact(gpt2_dir):
    scenarios.prefix_cache_hits_stay_exact(gpt2_dir)


def test_chunked_prefill_stays_exact(gpt2_dir):
    scenarios.chunked_prefill_stays_exact(gpt2_dir)


def test_preemption_stays_exact(gpt2_dir):
    scenarios.preemption_stays_exact(gpt2_dir)


def test_prompt_logprobs_match(gpt2_dir):
    scenarios.prompt_logprobs_match(gpt2_dir)


@pytest.mark.parametrize("draft", ["itself", "unrelated"])
def test_speculation_stays_exact(gpt2_dir, family_root, draft):
    if draft == "itself":
        draft_dir = gpt2_dir
    else:
        draft_dir = build_family_checkpoint(family_root, "gpt2", seed=1, tag="-draft", n_layer=1)
    scenarios.speculation_stays_exact(gpt2_dir, draft_dir)


def test_config_variants_match_transformers(family_root):
    """Exact-erf GELU, a non-default MLP width and per-layer attention scaling (GPT-2 configs that
    other checkpoints use) change the graph; each must follow transformers."""
    variant = build_family_checkpoint(family_root, "gpt2", seed=2, tag="-variant", activation_function="gelu",
                                      n_inner=96, scale_attn_by_inverse_layer_idx=True)
    scenarios.greedy_matches_transformers(variant, prefix_caching=True)


def test_prompt_past_1024_positions_is_refused(gpt2_dir):
    llm = LLM(model=str(gpt2_dir), dtype="float32", num_gpu_blocks=160)
    assert llm.llm_engine.max_model_len == 1024
    too_long = {"prompt_token_ids": [7] * 1100}
    with pytest.raises(ValueError, match=r"1100 tokens but max_model_len is 1024"):
        llm.llm_engine.add_request("long", too_long, SamplingParams(max_tokens=4))
    failed, fine = llm.generate([too_long, "Paged"], SamplingParams(max_tokens=4), use_tqdm=False)
    assert failed.outputs[0].finish_reason == "error" and "max_model_len is 1024" in failed.error
    assert fine.error is None and len(fine.outputs[0].token_ids) == 4


def test_generation_stops_at_the_last_position(gpt2_dir):
    """A prompt of 1010 tokens may grow to 1024 and no further; the tokens up to there are exact."""
    prompt = torch.randint(3, 300, (1010,), generator=torch.Generator().manual_seed(0)).tolist()
    llm = LLM(model=str(gpt2_dir), dtype="float32", num_gpu_blocks=160)
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True),
                       use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(prompt) + len(out.outputs[0].token_ids) == 1024
    assert out.outputs[0].token_ids == hf_greedy(gpt2_dir, [prompt], 14, ignore_eos=True)[0]


def test_max_model_len_beyond_the_position_table_is_refused(gpt2_dir):
    with pytest.raises(ValueError, match=r"max_model_len \(2048\) exceeds the model's maximum \(1024"):
        LLM(model=str(gpt2_dir), dtype="float32", max_model_len=2048)


def test_model_refuses_more_positions_than_its_table():
    from octavo.runtime.models.gpt2 import GPT2LMHeadModel

    with pytest.raises(ValueError, match=r"exceeds GPT-2's 1024 learned positions"):
        GPT2LMHeadModel(gpt2_config(64), max_positions=2048)


def test_unsupported_activation_names_the_supported_ones():
    from octavo.runtime.models.gpt2 import GPT2LMHeadModel

    with pytest.raises(ValueError, match=r"'swish' is not supported for GPT-2 .*gelu_new"):
        GPT2LMHeadModel(gpt2_config(64, activation_function="swish"), max_positions=1024)


def test_hub_style_checkpoint_loads_the_same(gpt2_dir, tmp_path):
    """OpenAI's checkpoints on the hub name tensors without "transformer." and carry the causal
    mask buffers (h.N.attn.bias, h.N.attn.masked_bias); they load into the same model."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(gpt2_dir / "model.safetensors")
    renamed = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    for layer in range(2):
        renamed[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 1024, 1024, dtype=torch.bool))
        renamed[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    assert all(not name.startswith("transformer.") for name in renamed)
    for item in gpt2_dir.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, tmp_path / item.name)
    save_file(renamed, tmp_path / "model.safetensors")
    _, original = scenarios.run(gpt2_dir, num_gpu_blocks=128)
    _, hub_style = scenarios.run(tmp_path, num_gpu_blocks=128)
    assert scenarios.token_ids(hub_style) == scenarios.token_ids(original)


def test_dummy_weights_from_config_alone(gpt2_dir, tmp_path):
    (tmp_path / "config.json").write_text((gpt2_dir / "config.json").read_text())
    llm = LLM(model=str(tmp_path), load_format="dummy", dtype="float32", num_gpu_blocks=64)
    model = llm.llm_engine.model_runner.model
    assert torch.all(model.transformer.h[0].ln_1.weight == 1) and torch.all(model.transformer.h[0].ln_1.bias == 0)
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, SamplingParams(max_tokens=5, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5
