"""Prompt lookup (n-gram) speculation: the lookup itself, and end to end through the engine with
no draft model (greedy output identical to plain decoding; sampled output from the target)."""

from __future__ import annotations

import numpy as np
import pytest

from spec_helpers import make_llm, spec_totals, token_ids
from octavo import LLM, SamplingParams
from octavo.runtime.spec.proposers.ngram import lookup


def test_lookup_takes_what_followed_the_latest_longest_match():
    tokens = np.array([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3])
    assert lookup(tokens, 2, 1, 4) == [7, 8]  # suffix [2, 3]: its latest earlier occurrence ends at 6
    assert lookup(tokens, 5, 3, 4) == []  # no earlier [5, 2, 3] nor [8, 5, 2, 3]
    assert lookup(np.array([4, 4, 4]), 3, 1, 2) == [4]  # runs are found, cut at the context's end
    assert lookup(np.array([6]), 3, 1, 2) == []


def ngram_llm(target, **config) -> LLM:
    return LLM(str(target), dtype="float32", num_gpu_blocks=256, max_num_seqs=16,
               speculative_config={"method": "ngram", "num_speculative_tokens": 3, "adaptive": False, **config})


REPEATING = [{"prompt_token_ids": [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]},
             {"prompt_token_ids": [11, 12, 13, 11, 12, 13, 11, 12]},
             {"prompt_token_ids": [20, 21, 22, 23]}]


@pytest.mark.parametrize("spelling", ["method", "vllm-legacy"])
def test_greedy_output_is_plain_decodings(pair, spelling):
    target, _ = pair
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    expected = token_ids(make_llm(target).generate(REPEATING, params, use_tqdm=False))
    if spelling == "method":
        llm = ngram_llm(target, prompt_lookup_max=3)
    else:  # vLLM's older flat arguments
        llm = LLM(str(target), dtype="float32", num_gpu_blocks=256, speculative_model="[ngram]",
                  num_speculative_tokens=3, ngram_prompt_lookup_max=3)
        llm.llm_engine.controller.config.adaptive = False
    assert token_ids(llm.generate(REPEATING, params, use_tqdm=False)) == expected
    drafted, accepted, _ = spec_totals(llm)
    assert drafted > 0 and accepted > 0
    assert llm.llm_engine.proposer.kv_bytes_per_block() == 0  # no model, no cache


def test_sampled_requests_verify_point_mass_guesses(pair):
    """Seeded sampled requests reproduce, and their tokens are the target's (n-gram guesses of a
    greedy-looking text are often rejected at temperature 1, which must not break anything)."""
    target, _ = pair
    params = [SamplingParams(temperature=1.0, top_k=5, max_tokens=24, seed=s, ignore_eos=True, logprobs=1)
              for s in range(3)]
    llm = ngram_llm(target)
    first = llm.generate(REPEATING, params, use_tqdm=False)
    again = llm.generate(REPEATING, params, use_tqdm=False)
    assert token_ids(first) == token_ids(again)
    assert spec_totals(llm)[0] > 0
    for output in first:
        for step in output.outputs[0].logprobs:
            assert len(step) >= 1
