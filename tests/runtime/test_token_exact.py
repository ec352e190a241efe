"""Greedy output is token-exact against transformers (fp32, CPU) for every Llama-family model,
whatever the batching, caching, chunking or preemption."""

from __future__ import annotations

import pytest

from hf_reference import hf_greedy
from octavo import LLM, SamplingParams
from tiny_models import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def run(model_dir, prompts=PROMPTS, params=GREEDY, **kwargs):
    llm = LLM(model=str(model_dir), dtype="float32", **kwargs)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return llm, outputs


def reference(model_dir, llm, prompts=PROMPTS, max_tokens=24, ignore_eos=False):
    tokenizer = llm.get_tokenizer()
    ids = [tokenizer.encode(p) for p in prompts]
    return hf_greedy(model_dir, ids, max_tokens, ignore_eos=ignore_eos)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_matches_transformers(family_dirs, family, prefix_caching):
    model_dir = family_dirs[family]
    llm, outputs = run(model_dir, enable_prefix_caching=prefix_caching, num_gpu_blocks=256)
    expected = reference(model_dir, llm)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert all(o.finished for o in outputs)


def test_prefix_cache_hits_keep_outputs_exact(llama_dir):
    shared = "Paged attention stores keys and values in fixed-size blocks, like virtual memory pages. "
    prompts = [shared + tail for tail in ("First,", "Second, the", "Third one is")]
    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks=256)
    first = llm.generate(prompts[:1], GREEDY, use_tqdm=False)
    rest = llm.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert llm.llm_engine.kv_cache.prefix_hits > 0
    assert all(o.num_cached_tokens > 0 for o in rest)
    expected = reference(llama_dir, llm, prompts)
    assert [o.outputs[0].token_ids for o in first + rest] == expected


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_chunked_prefill_forced_small(family_dirs, family):
    model_dir = family_dirs[family]
    llm, outputs = run(model_dir, max_num_batched_tokens=7, num_gpu_blocks=256)
    assert [o.outputs[0].token_ids for o in outputs] == reference(model_dir, llm)


def test_preemption_by_recompute_is_exact(llama_dir):
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    # 10 blocks of 16 tokens cannot hold five sequences of ~60 tokens: some must be preempted.
    llm, outputs = run(llama_dir, params=params, num_gpu_blocks=10, enable_prefix_caching=False)
    assert llm.llm_engine.stats.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outputs] == reference(llama_dir, llm, max_tokens=40, ignore_eos=True)


def test_alone_equals_inside_a_batch_of_32(qwen2_dir):
    prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(32)]
    llm, batch = run(qwen2_dir, prompts=prompts, num_gpu_blocks=512)
    for index in (0, 13, 31):
        alone = llm.generate(prompts[index], GREEDY, use_tqdm=False)[0]
        assert alone.outputs[0].token_ids == batch[index].outputs[0].token_ids


def test_sharded_safetensors_load_the_same_model(checkpoints):
    from tiny_models import build_checkpoint

    plain = build_checkpoint(checkpoints, "llama", seed=3)
    sharded = build_checkpoint(checkpoints, "llama", seed=3, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    _, a = run(plain, num_gpu_blocks=128)
    _, b = run(sharded, num_gpu_blocks=128)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]


def test_dummy_weights_from_config_alone(tmp_path, llama_dir):
    (tmp_path / "config.json").write_text((llama_dir / "config.json").read_text())
    llm = LLM(model=str(tmp_path), load_format="dummy", dtype="float32", num_gpu_blocks=64)
    assert llm.get_tokenizer() is None
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, SamplingParams(max_tokens=5, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5 and out.outputs[0].text == ""
