"""Asynchronous scheduling (`async_scheduling=True`): each step is scheduled and launched before
the last one's tokens are read back. Outputs must be exactly what the synchronous engine gives,
token for token, whatever the sampling parameters, batching, caching or preemption."""

from __future__ import annotations

import pytest

from hf_reference import hf_greedy
from octavo import LLM, SamplingParams
from tiny_models import PROMPTS

MIXED = [
    SamplingParams(temperature=0.0, max_tokens=24),
    SamplingParams(temperature=1.0, top_p=0.9, seed=5, max_tokens=20),
    SamplingParams(temperature=0.0, max_tokens=30, stop=["e"], logprobs=2, prompt_logprobs=1),
    SamplingParams(temperature=0.8, n=3, seed=1, max_tokens=16),
    SamplingParams(temperature=0.0, min_tokens=6, max_tokens=12, include_stop_str_in_output=True, stop=[" "]),
]


def outputs_of(model_dir, async_scheduling: bool, prompts=PROMPTS, params=MIXED, **kwargs):
    llm = LLM(model=str(model_dir), dtype="float32", async_scheduling=async_scheduling, **kwargs)
    outputs = llm.generate(prompts, params if isinstance(params, SamplingParams) else
                           [params[i % len(params)] for i in range(len(prompts))], use_tqdm=False)
    return llm, outputs


def summary(outputs, logprob_digits: int = 4):
    """Tokens, text, finish reasons and log-probabilities (rounded: a different batch size may
    change fp32 reduction order in the last bits)."""
    def rounded(entries):
        return None if entries is None else [{t: round(lp.logprob, logprob_digits) for t, lp in step.items()}
                                             for step in entries if step is not None]
    return [(o.request_id, [(c.token_ids, c.text, c.finish_reason, c.stop_reason, rounded(c.logprobs))
                            for c in o.outputs], rounded(o.prompt_logprobs)) for o in outputs]


@pytest.mark.parametrize("settings", [
    {"num_gpu_blocks": 256},
    {"num_gpu_blocks": 256, "enable_prefix_caching": False, "max_num_batched_tokens": 7},  # chunked prefill
    {"num_gpu_blocks": 12, "enable_prefix_caching": False},  # preemption by recompute
    {"num_gpu_blocks": 256, "max_num_seqs": 2},
])
def test_outputs_equal_the_synchronous_engines(llama_dir, settings):
    _, sync = outputs_of(llama_dir, False, **settings)
    llm, overlapped = outputs_of(llama_dir, True, **settings)
    assert summary(overlapped) == summary(sync)
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    engine.kv_cache.check_no_leaks()


def test_greedy_is_token_exact_against_transformers_under_preemption(llama_dir):
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    llm, outputs = outputs_of(llama_dir, True, params=params, num_gpu_blocks=10, enable_prefix_caching=False)
    assert llm.llm_engine.stats.num_preemptions > 0
    ids = [llm.get_tokenizer().encode(p) for p in PROMPTS]
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(llama_dir, ids, 40, ignore_eos=True)


def test_penalties_read_every_token_so_their_steps_wait_for_the_last(llama_dir):
    params = [SamplingParams(temperature=0.0, max_tokens=20, repetition_penalty=1.5, ignore_eos=True),
              SamplingParams(temperature=0.7, seed=3, frequency_penalty=0.8, presence_penalty=0.4, max_tokens=20)]
    _, sync = outputs_of(llama_dir, False, params=params, num_gpu_blocks=256)
    _, overlapped = outputs_of(llama_dir, True, params=params, num_gpu_blocks=256)
    assert summary(overlapped) == summary(sync)


def test_a_step_is_launched_before_the_last_is_read_back_and_no_request_runs_past_its_end(llama_dir):
    """After a step, one is in flight; a request known to end (max_tokens) is not scheduled again,
    so the number of decode forwards is what the synchronous engine runs."""
    params = SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True)
    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks=256, async_scheduling=True)
    engine = llm.llm_engine
    engine.add_request("a", PROMPTS[0], params)
    outputs = engine.step()  # the prompt, launched: nothing read back yet
    assert outputs == [] and engine._inflight is not None
    computed = []
    while engine.has_unfinished_requests():
        engine.step()
        computed.append(engine.scheduler.running[0].num_computed_tokens if engine.scheduler.running else None)
    prompt = len(llm.get_tokenizer().encode(PROMPTS[0]))
    # The prompt, then 8 decode steps (the 9th token is sampled by the 8th and ends the request).
    assert engine.stats.num_steps == 1 + 8 + 1  # the last step only reads the 8th decode back
    assert max(c for c in computed if c is not None) == prompt + 8


def test_aborts_while_a_step_is_in_flight_free_everything(llama_dir):
    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks=256, async_scheduling=True)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params)
    for _ in range(4):
        engine.step()
    assert engine._inflight is not None
    engine.abort_request([str(i) for i in range(len(PROMPTS))])
    assert not engine.has_unfinished_requests()
    engine.add_request("after", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=5))
    finished = []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in finished] == ["after"] and len(finished[0].outputs[0].token_ids) == 5
    engine.kv_cache.check_no_leaks()


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_request_that_ends_on_its_first_token_still_caches_its_prompt(llama_dir, async_scheduling):
    """max_tokens=1: the request ends when its prompt's step is read back; the prompt's full
    blocks must reach the prefix cache all the same, so the same prompt again hits them."""
    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks=256, async_scheduling=async_scheduling)
    prompt = PROMPTS[3]
    params = SamplingParams(temperature=0.0, max_tokens=1)
    llm.generate([prompt], params, use_tqdm=False)
    again = llm.generate([prompt], params, use_tqdm=False)
    assert again[0].num_cached_tokens >= llm.llm_engine.kv_cache.block_size
