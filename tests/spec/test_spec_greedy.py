"""Greedy decoding with a draft is token-identical to the target alone (fp32, CPU), whatever the
batching, caching, preemption and sampling parameters."""

from __future__ import annotations

import pytest

from spec_helpers import make_llm, spec_totals, token_ids
from octavo import SamplingParams
from tiny_models import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def compare(pair, params=GREEDY, prompts=PROMPTS, k=3, **kwargs):
    """(target-only outputs, speculative outputs, speculative LLM)."""
    target, draft = pair
    alone = make_llm(target, **kwargs).generate(prompts, params, use_tqdm=False)
    llm = make_llm(target, draft, k=k, **kwargs)
    spec = llm.generate(prompts, params, use_tqdm=False)
    return alone, spec, llm


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_mixed_lengths_match_target(pair, prefix_caching):
    alone, spec, llm = compare(pair, enable_prefix_caching=prefix_caching)
    assert token_ids(spec) == token_ids(alone)
    drafted, accepted, emitted = spec_totals(llm)
    assert 0 < accepted < drafted  # partial acceptance: rollback was exercised
    steps = sum(o.metrics.spec_num_steps for o in spec)
    assert emitted == accepted + steps
    for output in spec:
        metrics = output.metrics
        assert 0.0 <= metrics.spec_acceptance_rate <= 1.0
        assert 1.0 <= metrics.spec_mean_accepted_length <= 4.0


def test_prefix_cache_shared_prompts(pair):
    shared = "Paged attention stores keys and values in fixed-size blocks, like virtual memory pages. "
    prompts = [shared + tail for tail in ("First,", "Second, the", "Third one is", "First,")]
    target, draft = pair
    alone = token_ids(make_llm(target).generate(prompts, GREEDY, use_tqdm=False))
    llm = make_llm(target, draft)
    first = llm.generate(prompts[:1], GREEDY, use_tqdm=False)
    rest = llm.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert token_ids(first + rest) == alone
    assert llm.llm_engine.kv_cache.prefix_hits > 0
    assert llm.llm_engine.proposer.kv.prefix_hits > 0


def test_draft_equal_to_target_accepts_everything(exact_pair):
    """Every draft accepted: the bonus token (whose K/V the draft never computed) is caught up
    next step. Small blocks put many accepted runs across block boundaries."""
    alone, spec, llm = compare(exact_pair, k=4, block_size=8)
    assert token_ids(spec) == token_ids(alone)
    drafted, accepted, _ = spec_totals(llm)
    assert drafted == accepted > 0
    assert all(o.metrics.spec_acceptance_rate == 1.0 for o in spec)


def test_forced_preemption(pair):
    alone, spec, llm = compare(pair, num_gpu_blocks=10, max_num_seqs=5)
    assert llm.llm_engine.stats.num_preemptions > 0
    assert token_ids(spec) == token_ids(alone)
    assert spec_totals(llm)[0] > 0


def test_chunked_prefill_and_draft_catch_up_in_chunks(pair):
    """A 7-token budget: target prompts and draft catch-ups both go in chunks."""
    alone, spec, llm = compare(pair, max_num_batched_tokens=7)
    assert token_ids(spec) == token_ids(alone)
    assert spec_totals(llm)[0] > 0


def test_stop_strings(pair):
    target, draft = pair
    plain = make_llm(target).generate(PROMPTS, GREEDY, use_tqdm=False)
    # Stop strings taken from the middle of each target output, so they end generation mid-way
    # (and mid-acceptance, when the stop lands inside an accepted run).
    stops = [o.outputs[0].text[8:11] for o in plain]
    params = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[s]) for s in stops]
    alone = make_llm(target).generate(PROMPTS, params, use_tqdm=False)
    spec = make_llm(target, draft).generate(PROMPTS, params, use_tqdm=False)
    assert [o.outputs[0].text for o in spec] == [o.outputs[0].text for o in alone]
    assert token_ids(spec) == token_ids(alone)
    assert [o.outputs[0].finish_reason for o in spec] == [o.outputs[0].finish_reason for o in alone]
    assert any(o.outputs[0].finish_reason == "stop" for o in spec)


def test_max_tokens_inside_an_accepted_run(exact_pair):
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (1, 2, 3, 6, 7)]
    alone, spec, _ = compare(exact_pair, params=params, k=4)
    assert token_ids(spec) == token_ids(alone)
    assert [len(o.outputs[0].token_ids) for o in spec] == [1, 2, 3, 6, 7]


def test_penalties_and_min_tokens_apply_at_draft_positions(pair):
    """Penalties see the drafts before each position, for the draft and the target alike; were
    they applied to the committed tokens only, greedy outputs would differ."""
    params = SamplingParams(temperature=0.0, max_tokens=24, repetition_penalty=1.5, presence_penalty=0.5,
                            frequency_penalty=0.7, min_tokens=10)
    alone, spec, llm = compare(pair, params=params)
    assert token_ids(spec) == token_ids(alone)
    assert spec_totals(llm)[1] > 0


def test_logprobs_are_the_targets(pair):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    alone, spec, _ = compare(pair, params=params, enable_prefix_caching=False)
    assert token_ids(spec) == token_ids(alone)
    for a, s in zip(alone, spec):
        assert len(s.outputs[0].logprobs) == len(a.outputs[0].logprobs)
        for pa, ps in zip(a.outputs[0].logprobs, s.outputs[0].logprobs):
            assert list(pa) == list(ps)
            for token_id in pa:
                assert ps[token_id].logprob == pytest.approx(pa[token_id].logprob, abs=1e-4)
                assert ps[token_id].rank == pa[token_id].rank
        assert s.outputs[0].cumulative_logprob == pytest.approx(a.outputs[0].cumulative_logprob, abs=1e-3)
        assert len(s.prompt_logprobs) == len(a.prompt_logprobs)


def record_proposals(llm) -> list[dict[str, list[int]]]:
    """Every step's proposals, per request (propose patched on the instance)."""
    proposer = llm.llm_engine.proposer
    log: list[dict[str, list[int]]] = []
    original = proposer.propose

    def recorded(plan):
        original(plan)
        log.append({r.request_id: list(r.spec_token_ids) for r, _ in plan if r.spec_token_ids})

    proposer.propose = recorded
    return log


def test_drafts_chained_on_the_device_equal_the_host_loop(pair):
    """The greedy draft loop that keeps proposals on the device proposes exactly what the loop
    reading each proposal back does, with requests of different k in one batch (max_tokens caps
    k near a request's end, so the batch's drafting set shrinks step by step)."""
    target, draft = pair
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (3, 5, 9, 24, 24, 13)]
    prompts = (PROMPTS * 2)[: len(params)]
    runs = []
    for on_device in (True, False):
        llm = make_llm(target, draft, k=4)
        proposer = llm.llm_engine.proposer
        proposer.on_device = on_device
        chained = [0]
        chain = proposer._argmax_on_device

        def counted(*args, chain=chain, chained=chained):
            chained[0] += 1
            return chain(*args)

        proposer._argmax_on_device = counted
        log = record_proposals(llm)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        runs.append((token_ids(outputs), log, chained[0], spec_totals(llm)))
    (device_out, device_log, device_calls, device_totals), (host_out, host_log, host_calls, host_totals) = runs
    assert device_calls > 0 and host_calls == 0
    assert device_log == host_log
    assert device_out == host_out
    assert device_totals == host_totals
    ks = [sorted({len(p) for p in step.values()}) for step in device_log]
    assert any(len(k) > 1 for k in ks), ks  # some step drafted different k for different requests
