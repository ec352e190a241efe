"""BloomForCausalLM through the engine: ALiBi in the paged attention (non-power-of-two head counts
included), the embedding LayerNorm and the head-interleaved fused QKV, token-exact against
transformers."""

from __future__ import annotations

import shutil

import pytest
import torch

import family_scenarios as scenarios
from family_checkpoints import bloom_config, build_family_checkpoint
from octavo import LLM, SamplingParams
from octavo.runtime.layers.alibi import alibi_slopes


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_matches_transformers(bloom_dir, prefix_caching):
    scenarios.greedy_matches_transformers(bloom_dir, prefix_caching)


def test_prefix_cache_hits_stay_exact(bloom_dir):
    scenarios.prefix_cache_hits_stay_exact(bloom_dir)


def test_chunked_prefill_stays_exact(bloom_dir):
    scenarios.chunked_prefill_stays_exact(bloom_dir)


def test_preemption_stays_exact(bloom_dir):
    scenarios.preemption_stays_exact(bloom_dir)


def test_prompt_logprobs_match(bloom_dir):
    scenarios.prompt_logprobs_match(bloom_dir)


@pytest.mark.parametrize("draft", ["itself", "unrelated"])
def test_speculation_stays_exact(bloom_dir, family_root, draft):
    if draft == "itself":
        draft_dir = bloom_dir
    else:
        draft_dir = build_family_checkpoint(family_root, "bloom", seed=1, tag="-draft", n_layer=1)
    scenarios.speculation_stays_exact(bloom_dir, draft_dir)


@pytest.mark.parametrize("num_heads", [4, 12])
def test_other_head_counts_match_transformers(family_root, num_heads):
    """4 heads: the plain geometric slopes. 12: eight geometric, four interpolated (6 heads, the
    shared fixture, has two interpolated)."""
    model_dir = build_family_checkpoint(family_root, "bloom", seed=num_heads, tag=f"-h{num_heads}", n_head=num_heads)
    scenarios.greedy_matches_transformers(model_dir, prefix_caching=True)


def test_residual_after_layernorm_matches_transformers(family_root):
    model_dir = build_family_checkpoint(family_root, "bloom", seed=5, tag="-post-ln",
                                        apply_residual_connection_post_layernorm=True)
    scenarios.greedy_matches_transformers(model_dir, prefix_caching=True)


@pytest.mark.parametrize("num_heads", list(range(1, 65)) + [80, 96, 112, 128])
def test_alibi_slopes_match_transformers(num_heads):
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    if not hasattr(bloom, "_get_alibi_slopes"):  # private, and absent from some releases (5.17)
        pytest.skip("this transformers has no _get_alibi_slopes")
    _get_alibi_slopes = bloom._get_alibi_slopes

    expected = _get_alibi_slopes(num_heads, torch.device("cpu"))
    ours = alibi_slopes(num_heads)
    assert ours.dtype == torch.float32 and ours.shape == (num_heads,)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)


def test_slopes_stay_float32_in_half_precision():
    from octavo.runtime.models.bloom import BloomForCausalLM

    model = BloomForCausalLM(bloom_config(64), max_positions=2048).to(torch.bfloat16)
    for attn in model.attention_layers:
        assert attn.alibi_slopes.dtype == torch.float32
        assert torch.equal(attn.alibi_slopes, alibi_slopes(6))
    assert model.transformer.h[0].self_attention.qkv_proj.weight.dtype == torch.bfloat16


def test_interleaved_qkv_is_reordered_on_load(bloom_dir):
    """The fused projection's rows arrive per head (q, k, v); after loading, our parameter's q rows
    are exactly the checkpoint's q rows of every head, in head order."""
    from safetensors.torch import load_file

    tensors = load_file(bloom_dir / "model.safetensors")
    name = next(n for n in tensors if n.endswith("h.0.self_attention.query_key_value.weight"))
    checkpoint = tensors[name].reshape(6, 3, 16, 96)  # heads, (q, k, v), head_dim, hidden
    llm = LLM(model=str(bloom_dir), dtype="float32", num_gpu_blocks=16)
    ours = llm.llm_engine.model_runner.model.transformer.h[0].self_attention.qkv_proj.weight.cpu()  # on CUDA too
    q, k, v = ours.reshape(3, 6, 16, 96)
    assert torch.equal(q, checkpoint[:, 0]) and torch.equal(k, checkpoint[:, 1]) and torch.equal(v, checkpoint[:, 2])


def test_hub_style_checkpoint_loads_the_same(bloom_dir, tmp_path):
    """BigScience's checkpoints name tensors without "transformer."; they load the same."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(bloom_dir / "model.safetensors")
    renamed = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    for item in bloom_dir.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, tmp_path / item.name)
    save_file(renamed, tmp_path / "model.safetensors")
    _, original = scenarios.run(bloom_dir, num_gpu_blocks=128)
    _, hub_style = scenarios.run(tmp_path, num_gpu_blocks=128)
    assert scenarios.token_ids(hub_style) == scenarios.token_ids(original)


def test_dummy_weights_from_config_alone(bloom_dir, tmp_path):
    (tmp_path / "config.json").write_text((bloom_dir / "config.json").read_text())
    llm = LLM(model=str(tmp_path), load_format="dummy", dtype="float32", num_gpu_blocks=64)
    model = llm.llm_engine.model_runner.model
    assert torch.all(model.transformer.word_embeddings_layernorm.weight == 1)
    assert torch.all(model.transformer.h[0].input_layernorm.weight == 1)
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, SamplingParams(max_tokens=5, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5
