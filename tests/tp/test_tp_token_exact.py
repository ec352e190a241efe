"""Tensor parallel (2 processes, gloo, fp32) gives the same greedy tokens as one process for the
Llama family: split heads and MLP, replicated KV heads, a split (and padded) vocabulary, a tied
head, chunked prefill and prefix caching all through the same path."""

from __future__ import annotations

import math

import pytest

from octavo import SamplingParams
from tp_helpers import make_llm, token_ids
from tiny_models import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def generate_both(model_dir, prompts=PROMPTS, params=GREEDY, **kwargs):
    with make_llm(model_dir, 1, **kwargs) as llm:
        single = llm.generate(prompts, params, use_tqdm=False)
    with make_llm(model_dir, 2, **kwargs) as llm:
        assert llm.llm_engine.workers is not None
        split = llm.generate(prompts, params, use_tqdm=False)
    return single, split


def test_llama_tp2_matches_tp1_with_logprobs(llama_dir):
    params = SamplingParams(temperature=0.0, max_tokens=24, logprobs=3, prompt_logprobs=2)
    single, split = generate_both(llama_dir, params=params)
    assert token_ids(split) == token_ids(single)
    # The gathered logits are the whole vocabulary: the same log-probabilities, up to rounding.
    for a, b in zip(single, split):
        for pos_a, pos_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert list(pos_a) == list(pos_b)
            for token in pos_a:
                assert math.isclose(pos_a[token].logprob, pos_b[token].logprob, abs_tol=1e-4)
        for pos_a, pos_b in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]):
            assert set(pos_a) == set(pos_b)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_family_tp2_matches_tp1_chunked(family_dirs, family):
    """Mistral (sliding window) and Qwen2 (QKV bias, tied head), with prefill in chunks of 7
    tokens so that steps mix prefill and decode."""
    single, split = generate_both(family_dirs[family], max_num_batched_tokens=7)
    assert token_ids(split) == token_ids(single)
    assert all(o.finished for o in split)


def test_single_kv_head_replicated_across_ranks(single_kv_head_dir):
    greedy = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    # A seeded sampled request draws the same tokens too: the logits agree to rounding.
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=16, ignore_eos=True)
    with make_llm(single_kv_head_dir, 1) as llm:
        single = llm.generate(PROMPTS, greedy, use_tqdm=False)
        single_sampled = llm.generate(PROMPTS[:2], seeded, use_tqdm=False)
    with make_llm(single_kv_head_dir, 2) as llm:
        runner = llm.llm_engine.model_runner
        attn = runner.model.model.layers[0].self_attn
        assert (attn.num_heads, attn.num_kv_heads) == (2, 1)  # of 4 and 1: the KV head replicated
        assert runner.model.model.embed_tokens.weight.shape[0] == 194  # ceil(387 / 2)
        split = llm.generate(PROMPTS, greedy, use_tqdm=False)
        split_sampled = llm.generate(PROMPTS[:2], seeded, use_tqdm=False)
    assert token_ids(split) == token_ids(single)
    assert token_ids(split_sampled) == token_ids(single_sampled)
