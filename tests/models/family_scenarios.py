"""Engine scenarios every model family must pass token-exact against transformers (fp32, CPU):
batches of different lengths, prefix caching on and off, prefix-cache hits, chunked prefill,
preemption by recompute, prompt logprobs, speculation. test_gpt2.py and test_bloom.py run them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_reference import hf_greedy, hf_prompt_logprobs
from octavo import LLM, SamplingParams
from tiny_models import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def run(model_dir: Path, prompts=PROMPTS, params=GREEDY, **kwargs):
    llm = LLM(model=str(model_dir), dtype="float32", **kwargs)
    return llm, llm.generate(prompts, params, use_tqdm=False)


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def reference(model_dir: Path, llm, prompts=PROMPTS, max_tokens: int = 24, ignore_eos: bool = False):
    tokenizer = llm.get_tokenizer()
    return hf_greedy(model_dir, [tokenizer.encode(p) for p in prompts], max_tokens, ignore_eos=ignore_eos)


def greedy_matches_transformers(model_dir: Path, prefix_caching: bool) -> None:
    llm, outputs = run(model_dir, enable_prefix_caching=prefix_caching, num_gpu_blocks=256)
    assert len({len(o.prompt_token_ids) for o in outputs}) == len(PROMPTS)  # all lengths differ
    assert token_ids(outputs) == reference(model_dir, llm)
    assert all(o.finished for o in outputs)


def prefix_cache_hits_stay_exact(model_dir: Path) -> None:
    shared = "Paged attention stores keys and values in fixed-size blocks, like virtual memory pages. "
    prompts = [shared + tail for tail in ("First,", "Second, the", "Third one is")]
    llm = LLM(model=str(model_dir), dtype="float32", num_gpu_blocks=256)
    first = llm.generate(prompts[:1], GREEDY, use_tqdm=False)
    rest = llm.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert llm.llm_engine.kv_cache.prefix_hits > 0
    assert all(o.num_cached_tokens > 0 for o in rest)
    assert token_ids(first + rest) == reference(model_dir, llm, prompts)


def chunked_prefill_stays_exact(model_dir: Path) -> None:
    llm, outputs = run(model_dir, max_num_batched_tokens=7, num_gpu_blocks=256)
    assert token_ids(outputs) == reference(model_dir, llm)


def preemption_stays_exact(model_dir: Path) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    # 10 blocks of 16 tokens cannot hold five sequences of 40-60 tokens at once.
    llm, outputs = run(model_dir, params=params, num_gpu_blocks=10, enable_prefix_caching=False)
    assert llm.llm_engine.stats.num_preemptions > 0
    assert token_ids(outputs) == reference(model_dir, llm, max_tokens=40, ignore_eos=True)


def prompt_logprobs_match(model_dir: Path) -> None:
    """Every position's distribution, not only the argmax: the prompt's log-probabilities agree
    with transformers' to float32 rounding."""
    prompt = PROMPTS[3]
    llm, outputs = run(model_dir, prompts=[prompt], num_gpu_blocks=64,
                       params=SamplingParams(max_tokens=1, prompt_logprobs=0))
    ids = outputs[0].prompt_token_ids
    ours = torch.tensor([entry[token].logprob for entry, token in zip(outputs[0].prompt_logprobs[1:], ids[1:])])
    torch.testing.assert_close(ours, hf_prompt_logprobs(model_dir, ids), rtol=1e-4, atol=1e-4)


def speculation_stays_exact(target_dir: Path, draft_dir: Path) -> None:
    """A draft identical to the target has every proposal accepted (multi-token verification);
    an unrelated random draft has nearly all rejected (rollback). Both must leave greedy output
    exactly the target's."""
    # Fixed k: on a CPU adaptive k would rarely speculate.
    llm = LLM(model=str(target_dir), dtype="float32", num_gpu_blocks=256,
              speculative_config={"model": str(draft_dir), "num_speculative_tokens": 3, "adaptive": False})
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    stats = llm.llm_engine.stats
    assert stats.spec_draft_tokens > 0
    if draft_dir == target_dir:
        assert stats.spec_accepted_tokens > 0
    assert token_ids(outputs) == reference(target_dir, llm)
