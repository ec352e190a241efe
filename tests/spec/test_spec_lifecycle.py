"""Requests coming and going under speculation: aborts and preemption leave no blocks behind in
either cache, the first token never waits for draft work, adaptive k can turn drafting off."""

from __future__ import annotations

import random

import pytest

from spec_helpers import make_llm, spec_totals, token_ids
from octavo import SamplingParams
from octavo.runtime.spec_policy import SpecCostModel
from tiny_models import PROMPTS as SHARED_PROMPTS

PROMPTS = SHARED_PROMPTS + ["Kubernetes operators reconcile"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def count_draft_forwards(llm) -> list[int]:
    """A counter of the draft runner's forwards (patched on the instance)."""
    runner = llm.llm_engine.spec_decoder.draft_runner
    calls = [0]
    original = runner.execute

    def counted(sched, **kwargs):
        calls[0] += 1
        return original(sched, **kwargs)

    runner.execute = counted
    return calls


def assert_no_leaks(llm) -> None:
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    engine.kv_cache.check_no_leaks()
    engine.spec_decoder.check_no_leaks()


def test_aborts_with_pending_proposals_free_both_caches(pair):
    target, draft = pair
    llm = make_llm(target, draft, k=4)
    engine = llm.llm_engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, GREEDY)
    for _ in range(3):
        engine.step()
    assert engine.spec_decoder.sequences  # drafting is under way
    engine.spec_decoder.propose()  # proposals made, not yet verified
    pending = [r.request_id for r in engine.scheduler.running if r.spec_token_ids]
    assert pending
    assert engine.spec_decoder.draft_kv.num_free_blocks < engine.spec_decoder.draft_kv.num_blocks
    engine.abort_request(pending[:3])
    while engine.has_unfinished_requests():
        engine.step()
    assert_no_leaks(llm)


def test_random_aborts_under_preemption(pair):
    """A small cache (preemption) and aborts at random steps: the survivors' outputs are the
    target's, and every block of both caches comes back."""
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS, GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=3, num_gpu_blocks=12, max_num_seqs=6)
    engine = llm.llm_engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, GREEDY)
    rng = random.Random(0)
    aborted: set[str] = set()
    finished: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
        live = sorted(set(engine.groups) - aborted)
        if live and rng.random() < 0.15:
            victim = rng.choice(live)
            engine.abort_request(victim)
            aborted.add(victim)
    assert aborted and engine.stats.num_preemptions > 0 and spec_totals(llm)[0] > 0
    for request_id, tokens in finished.items():
        assert tokens == expected[int(request_id)]
    assert_no_leaks(llm)


def test_first_token_never_waits_for_the_draft(pair):
    target, draft = pair
    llm = make_llm(target, draft, k=3)
    engine = llm.llm_engine
    draft_forwards = count_draft_forwards(llm)
    engine.add_request("a", PROMPTS[1], GREEDY)
    outputs = engine.step()
    assert len(outputs[0].outputs[0].token_ids) == 1  # the first token, from the target's prefill
    assert draft_forwards[0] == 0 and not engine.spec_decoder.sequences
    engine.step()  # the draft catches up on the prompt, then proposes
    assert draft_forwards[0] == 3  # catch-up + 2 more proposal steps
    before = draft_forwards[0]
    engine.add_request("b", PROMPTS[0], GREEDY)
    outputs = engine.step()  # "b" may be admitted: no draft work delays its first token
    assert draft_forwards[0] == before
    assert [len(o.outputs[0].token_ids) for o in outputs if o.request_id == "b"] == [1]
    engine.abort_request(["a", "b"])
    assert_no_leaks(llm)


def test_adaptive_k_turns_drafting_off_when_it_cannot_pay(pair):
    """A compute-bound cost model (every token costs): k is 0 for every request, the draft never
    runs, and the output is plain decoding's."""
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS, GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=4, adaptive=True, cost=SpecCostModel(draft_cost_ratio=0.05, knee_tokens=1.0))
    draft_forwards = count_draft_forwards(llm)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected
    assert draft_forwards[0] == 0 and spec_totals(llm) == (0, 0, 0)


def test_measured_step_times_override_a_hopeful_model(pair):
    """The cost model promises cheap drafts, but measured steps say drafting costs 5x a plain
    step at this batch size: adaptive k stays at 0."""
    target, draft = pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    measured = llm.llm_engine.spec_decoder.measured
    for k, seconds in ((0, 0.01), (4, 0.05)):
        for batch in (1, 2, 4):
            measured.set_time(batch, k, seconds)
    draft_forwards = count_draft_forwards(llm)
    llm.generate(PROMPTS[:4], GREEDY, use_tqdm=False)
    assert draft_forwards[0] == 0


def test_dropped_speculation_is_timed_again_after_explore_steps(pair, caplog):
    """Measured steps say drafting loses at batch size 1; after explore_steps plain steps the
    engine still times one speculative step there (the measurements may have been a bad patch),
    and logs when the bucket's decision changes."""
    target, draft = pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    engine = llm.llm_engine
    measured = engine.spec_decoder.measured
    measured.explore_steps = 3
    for k, seconds in ((0, 0.01), (4, 0.05)):
        measured.set_time(1, k, seconds)
    draft_forwards = count_draft_forwards(llm)
    engine.add_request("only", {"prompt_token_ids": [5, 6, 7, 8]},
                       SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    with caplog.at_level("INFO", logger="octavo"):
        for _ in range(4):  # the prompt, then 3 timed plain decode steps
            engine.step()
        assert draft_forwards[0] == 0
        while engine.has_unfinished_requests():
            engine.step()
    assert draft_forwards[0] > 0
    assert any("adaptive k: batch size 1-1 now drafts k=0" in r.message for r in caplog.records)
    assert_no_leaks(llm)


def test_a_bucket_timed_only_with_drafts_gets_a_probe_of_timed_plain_steps(pair):
    """Speculative steps were timed at batch size 1, plain ones never: the next probe_steps
    decode steps run without drafts. The first is no sample (it follows the prompt, not a plain
    step); each later one is, once the step after it starts (a step's time is its whole cycle);
    the first sample of a key is warm-up."""
    target, draft = pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    engine = llm.llm_engine
    measured = engine.spec_decoder.measured
    assert measured.probe_steps == 4
    measured.set_time(1, 4, 0.05)
    draft_forwards = count_draft_forwards(llm)
    engine.add_request("only", {"prompt_token_ids": [5, 6, 7, 8]},
                       SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    engine.step()  # the prompt
    for _ in range(4):
        engine.step()  # the probe: plain decode steps at batch size 1
    assert draft_forwards[0] == 0
    assert measured.samples.get((1, 0), 0) == 2 and (1, 0) in measured.seconds
    engine.step()  # closes the probe's last step
    assert measured.samples[(1, 0)] == 3
    while engine.has_unfinished_requests():
        engine.step()


def test_adaptive_k_speculates_when_it_pays(exact_pair):
    target, draft = exact_pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    outputs = llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    drafted, accepted, _ = spec_totals(llm)
    assert drafted == accepted > 0
    assert max(llm.llm_engine.spec_decoder.last_k.values(), default=4) <= 4
    assert all(o.metrics.spec_mean_accepted_length > 3 for o in outputs)


@pytest.mark.parametrize("k", [1, 5])
def test_k_extremes(pair, k):
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS[:3], GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=k)
    assert token_ids(llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False)) == expected
    assert_no_leaks(llm)


def test_a_decode_step_is_timed_over_its_whole_cycle_in_steady_state(pair, monkeypatch):
    """A sample is a step's cycle, from its start to the next step's start (what happens between
    two steps, streaming the tokens a step emitted, is charged to that step), and only in steady
    state: the first decode step after the prompt (a long draft catch-up) and a cycle that ends
    with a new request waiting are counted, never timed."""
    from types import SimpleNamespace

    from octavo.runtime import spec_decode

    clock = [0.0]
    monkeypatch.setattr(spec_decode, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    target, draft = pair
    llm = make_llm(target, draft, k=2)  # fixed k: every decode step drafts 2
    engine = llm.llm_engine
    measured = engine.spec_decoder.measured
    engine.add_request("a", {"prompt_token_ids": [5, 6, 7, 8]},
                       SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))
    gaps = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0]
    for gap in gaps:  # the prompt, then decode steps; the clock moves only between steps
        engine.step()
        clock[0] += gap
    assert engine.has_unfinished_requests()
    key = (1, 2)
    # Decode steps start at the second step. Their cycles: 1.0 (the catch-up, no sample), 2.0
    # (the key's first sample: warm-up, discarded), 3.0, 5.0, and 8.0 once the next step starts.
    engine.step()  # closes the 8.0-long cycle
    assert measured.samples[key] == 4
    assert list(measured.recent[key]) == [3.0, 5.0, 8.0]
    # What each of those steps emitted is kept too: k = 2 verified, 1 to 3 tokens for the request.
    assert len(measured.realized[1]) == 4 and all(k == 2 and 1 <= t <= 3 for k, t in measured.realized[1])
    clock[0] += 13.0
    engine.add_request("b", {"prompt_token_ids": [9, 10, 11]},
                       SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    engine.step()  # the cycle that ended with "b" waiting is counted, not timed
    assert measured.samples[key] == 4
    engine.abort_request(["a", "b"])
    assert_no_leaks(llm)


def one_request_timed(pair, plain: float, speculative: float):
    """An adaptive engine (k <= 4) whose batch-size-1 bucket is timed (plain decoding, k = 4),
    with one greedy request waiting: (the LLM, the request)."""
    target, draft = pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    engine = llm.llm_engine
    engine.spec_decoder.measured.set_time(1, 0, plain)
    engine.spec_decoder.measured.set_time(1, 4, speculative)
    engine.add_request("a", {"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0.0, max_tokens=8))
    return llm, engine.scheduler.waiting[0]


def test_speculation_that_did_not_deliver_is_dropped_whatever_the_estimates_say(pair):
    """Measured step times and a 0.7 acceptance estimate predict that k = 4 pays; the bucket's
    last timed speculative steps emitted one token per request each, which at those times is a
    loss, so the step's k is 0. Once speculation delivers again, k is 4 again."""
    llm, request = one_request_timed(pair, plain=0.010, speculative=0.014)
    engine = llm.llm_engine
    decoder = engine.spec_decoder
    measured = decoder.measured

    def step_k() -> int:
        decoder._step_plans.clear()  # a fresh decision
        return decoder._batch_k(1, [request], {"a": 4}, spec_due=False)[0]

    assert step_k() == 4
    for _ in range(measured.realized_min):
        measured.observe(1, 4, 0.014, tokens=1)
    assert measured.realized_gain(1) == pytest.approx(0.010 / 0.014)
    assert step_k() == 0
    for _ in range(measured.realized_window):
        measured.observe(1, 4, 0.014, tokens=3)
    assert step_k() == 4
    engine.abort_request("a")
    assert_no_leaks(llm)


def test_decisions_for_plain_decoding_hold_longer_each_time(pair):
    """Measured times say speculation pays only with a near-perfect draft and the requests'
    estimates are low: each fresh decision is k = 0, and each holds twice as many steps as the
    one before (decide_every, then doubling up to max_plain_hold), so the batch is walked
    ever more rarely. A decision for k > 0 starts the doubling over."""
    llm, request = one_request_timed(pair, plain=0.010, speculative=0.030)  # pays above about 0.9 acceptance
    engine = llm.llm_engine
    decoder = engine.spec_decoder
    decoder._estimate(request).prior = 0.3

    holds = []
    for _ in range(7):
        decoder._step_plans.clear()  # the last decision ran out
        step_k, hold = decoder._batch_k(1, [request], {"a": 4}, spec_due=False)
        assert step_k == 0
        holds.append(hold)
    d = decoder.decide_every
    assert holds == [d, 2 * d, 4 * d, 8 * d, 16 * d, min(32 * d, decoder.max_plain_hold),
                     min(64 * d, decoder.max_plain_hold)]
    assert decoder._step_plans[1] == (0, holds[-1] - 1)
    decoder._estimate(request).prior = 0.99
    decoder._estimate(request).trials = 0.0
    decoder._step_plans.clear()
    assert decoder._batch_k(1, [request], {"a": 4}, spec_due=False) == (4, d)
    decoder._estimate(request).prior = 0.3
    decoder._step_plans.clear()
    assert decoder._batch_k(1, [request], {"a": 4}, spec_due=False) == (0, d)
    engine.abort_request("a")
    assert_no_leaks(llm)


def test_a_plain_decision_skips_the_batch_walk_but_not_for_seeded_sampled_requests(pair, monkeypatch):
    """Measured steps say no draft can pay at this batch size: the decision holds for
    decide_every steps and those steps never look at the requests (a launch-bound step is well
    under a millisecond). A seeded sampled request still drafts with its own k from the cost
    model, so its output is the same whatever this machine measured."""
    from octavo.runtime.spec_decode import SpecDecoder

    target, draft = pair
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)

    def run(hopeless: bool, with_seeded: bool) -> tuple[list[list[int]], int, int]:
        llm = make_llm(target, draft, k=4, adaptive=True)
        decoder = llm.llm_engine.spec_decoder
        if hopeless:
            for batch in (1, 2, 4):
                decoder.measured.set_time(batch, 0, 0.01)
                decoder.measured.set_time(batch, 4, 0.05)
        walks = [0]
        original = SpecDecoder._ready

        def counted(self, request):
            walks[0] += 1
            return original(self, request)

        monkeypatch.setattr(SpecDecoder, "_ready", counted)
        forwards = count_draft_forwards(llm)
        params = [GREEDY, GREEDY] + ([seeded] if with_seeded else [])
        outputs = llm.generate(PROMPTS[: len(params)], params, use_tqdm=False)
        monkeypatch.setattr(SpecDecoder, "_ready", original)
        assert_no_leaks(llm)
        return token_ids(outputs), walks[0], forwards[0]

    _, walks, forwards = run(hopeless=True, with_seeded=False)
    assert walks == 0 and forwards == 0
    tokens_measured, walks, forwards = run(hopeless=True, with_seeded=True)
    assert walks > 0 and forwards > 0
    tokens_model, _, _ = run(hopeless=False, with_seeded=True)
    assert tokens_measured[2] == tokens_model[2]


@pytest.mark.parametrize("budget", [1.0, 0.02])
def test_coasting_through_plain_steps_changes_no_decision(pair, monkeypatch, budget):
    """Where plain decoding holds, the decoder coasts: steps skip the checks and the per-step
    timing, and the run's timings are handed over when it ends. On a clock where a step costs
    1 ms plain and 5 ms drafting, every decision (k per step, probes, measured times) is the
    same with coasting as without, and the outputs are the target's; with coasting most steps
    never ask whether a probe is due. With a small probe budget the probe clock falls due long
    before the budget lets a probe start: the decoder coasts through that wait as well."""
    from octavo.runtime import spec_decode
    from octavo.runtime.spec_policy import MeasuredStepCost

    target, draft = pair

    def run(coast: bool) -> tuple[list[list[int]], list[int], dict, int]:
        llm = make_llm(target, draft, k=4, adaptive=True)
        engine = llm.llm_engine
        decoder = engine.spec_decoder
        decoder.measured = MeasuredStepCost(decoder.cost, explore_steps=24, explore_budget=budget)
        clock = [0.0]

        class FakeTime:
            @staticmethod
            def perf_counter() -> float:  # called once a step, when the last step's cycle ends
                clock[0] += 0.001 * (5 if decoder._step_k > 0 else 1)
                return clock[0]

        monkeypatch.setattr(spec_decode, "time", FakeTime)
        if not coast:
            monkeypatch.setattr(decoder, "_start_coast", lambda batch_size: None)
        due_checks = [0]
        original_due = decoder.measured.spec_step_due

        def counted_due(batch_size):
            due_checks[0] += 1
            return original_due(batch_size)

        monkeypatch.setattr(decoder.measured, "spec_step_due", counted_due)
        waits = [0]  # coasts started while the probe clock was due and the budget held it back
        original_quiet = decoder.measured.quiet_steps

        def counted_quiet(batch_size, limit):
            measured, bucket = decoder.measured, decoder.measured.bucket(batch_size)
            steps = original_quiet(batch_size, limit)
            clock_due = measured.since_spec.get(bucket, 0) + 1 >= measured.explore_after.get(bucket, 24)
            waits[0] += steps >= 2 and clock_due
            return steps

        monkeypatch.setattr(decoder.measured, "quiet_steps", counted_quiet)
        drafted: list[int] = []
        original_step = engine.step

        def step():
            before = engine.stats.spec_draft_tokens
            outputs = original_step()
            drafted.append(engine.stats.spec_draft_tokens - before)
            return outputs

        monkeypatch.setattr(engine, "step", step)
        params = SamplingParams(temperature=0.0, max_tokens=160, ignore_eos=True)
        outputs = llm.generate(PROMPTS[:3], params, use_tqdm=False)
        assert_no_leaks(llm)
        decoder.propose()  # what the next step does first: the last run's timings are handed over
        monkeypatch.undo()
        measured = decoder.measured
        state = {"points": measured.points, "samples": measured.samples, "since_spec": measured.since_spec,
                 "explore_after": measured.explore_after, "elapsed": measured.elapsed}
        return token_ids(outputs), drafted, state, due_checks[0], waits[0]

    tokens, drafted, state, checks, waits = run(coast=True)
    tokens_stepwise, drafted_stepwise, state_stepwise, checks_stepwise, _ = run(coast=False)
    assert (waits > 0) == (budget < 1.0)
    assert tokens == tokens_stepwise
    assert drafted == drafted_stepwise and sum(drafted) > 0  # the same probes on the same steps
    assert state["points"] == state_stepwise["points"] and state["samples"] == state_stepwise["samples"]
    assert state["since_spec"] == state_stepwise["since_spec"]
    assert state["explore_after"] == state_stepwise["explore_after"]
    assert state["elapsed"] == pytest.approx(state_stepwise["elapsed"])
    assert checks < checks_stepwise / 3
    target_only = make_llm(target).generate(PROMPTS[:3], SamplingParams(temperature=0.0, max_tokens=160,
                                                                         ignore_eos=True), use_tqdm=False)
    assert tokens == token_ids(target_only)
