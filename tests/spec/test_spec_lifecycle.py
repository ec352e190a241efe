"""Requests coming and going under speculation: aborts and preemption leave no blocks behind in
either cache, the first token never waits for draft work; adaptive k in a running engine (its
decisions alone are tested in test_spec_controller.py)."""

from __future__ import annotations

import random

import pytest

from spec_helpers import make_llm, spec_totals, token_ids
from octavo import SamplingParams
from tiny_models import PROMPTS as SHARED_PROMPTS

PROMPTS = SHARED_PROMPTS + ["Kubernetes operators reconcile"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def count_draft_forwards(llm) -> list[int]:
    """A counter of the draft runner's forwards (patched on the instance)."""
    runner = llm.llm_engine.proposer.runner
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
    engine.proposer.check_no_leaks()


def test_aborts_with_pending_proposals_free_both_caches(pair):
    target, draft = pair
    llm = make_llm(target, draft, k=4, async_scheduling=False)  # every step read back: no placeholders
    engine = llm.llm_engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, GREEDY)
    for _ in range(3):
        engine.step()
    assert engine.proposer.sequences  # drafting is under way
    engine._propose(4)  # proposals made, not yet verified
    pending = [r.request_id for r in engine.scheduler.running if r.spec_token_ids]
    assert pending
    assert engine.proposer.kv.num_free_blocks < engine.proposer.kv.num_blocks
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
    if not outputs:  # asynchronous scheduling: the prefill's token is read back in the next step
        outputs = engine.step()
    assert len(outputs[0].outputs[0].token_ids) == 1  # the first token, from the target's prefill
    assert draft_forwards[0] == 0 and not engine.proposer.sequences
    engine.step()  # the draft catches up on the prompt, then proposes
    assert draft_forwards[0] == 3  # catch-up + 2 more proposal steps
    before = draft_forwards[0]
    engine.add_request("b", PROMPTS[0], GREEDY)
    first_of_b: list[int] = []
    for _ in range(2):  # "b" may be admitted: no draft work delays its first token
        outputs = engine.step()
        assert draft_forwards[0] == before
        first_of_b = [len(o.outputs[0].token_ids) for o in outputs if o.request_id == "b"]
        if first_of_b:
            break
    assert first_of_b == [1]
    engine.abort_request(["a", "b"])
    assert_no_leaks(llm)


def time_steps(llm, plain: float, speculative: float, k: int = 4, batch_sizes=(1, 2, 3, 4)) -> None:
    """Give adaptive k measured step times (a full window of each) at these batch sizes."""
    controller = llm.llm_engine.controller
    for batch in batch_sizes:
        bucket = controller._bucket(batch)
        bucket.plain.extend([plain] * bucket.plain.maxlen)
        bucket.spec.setdefault(k, type(bucket.plain)(maxlen=bucket.plain.maxlen)).extend([speculative] * bucket.plain.maxlen)


def test_adaptive_k_turns_drafting_off_when_it_cannot_pay(pair):
    """A compute-bound prior (every token costs): k is 0, the draft never runs, and the output is
    plain decoding's."""
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS, GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=4, adaptive=True, knee=1.0)
    draft_forwards = count_draft_forwards(llm)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected
    assert draft_forwards[0] == 0 and spec_totals(llm) == (0, 0, 0)


def test_measured_step_times_override_a_hopeful_prior(pair):
    """The prior promises cheap drafts, but measured steps say drafting costs 5x a plain step at
    these batch sizes: adaptive k stays at 0 (no probe: its budget is far from paid)."""
    target, draft = pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    time_steps(llm, plain=0.01, speculative=0.05)
    draft_forwards = count_draft_forwards(llm)
    llm.generate(PROMPTS[:4], GREEDY, use_tqdm=False)
    assert draft_forwards[0] == 0


def test_speculation_that_loses_is_probed_again_once_the_budget_pays_for_it(pair):
    """Measured times say drafting loses; with a budget that a few plain steps pay for, a probe
    of speculative steps runs anyway (the measurements may be a bad patch), exactly, and the
    probe's cost is remembered for the next interval."""
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS[:1], GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=4, adaptive=True,
                   speculative_config={"probe_budget": 1.0, "decide_every": 2, "probe_steps": 3})
    time_steps(llm, plain=1e-4, speculative=5e-4, batch_sizes=(1,))  # a probe: 1.5 ms
    draft_forwards = count_draft_forwards(llm)
    assert token_ids(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)) == expected
    assert draft_forwards[0] > 0 and spec_totals(llm)[0] > 0
    assert llm.llm_engine.controller._bucket(1).probe_cost is not None
    assert_no_leaks(llm)


def test_adaptive_k_speculates_when_it_pays(exact_pair):
    target, draft = exact_pair
    llm = make_llm(target, draft, k=4, adaptive=True)
    outputs = llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    drafted, accepted, _ = spec_totals(llm)
    assert drafted == accepted > 0
    assert llm.llm_engine.last_step.k <= 4
    assert all(o.metrics.spec_mean_accepted_length > 3 for o in outputs)


def test_seeded_sampled_requests_draft_at_the_cap_whatever_adaptive_k_decides(pair):
    """Adaptive k decodes plainly (drafting measured 5x slower), yet a seeded sampled request
    drafts the most k allows every step: its output depends on k, so k must not depend on
    timings. The greedy requests beside it draft nothing."""
    target, draft = pair
    llm = make_llm(target, draft, k=3, adaptive=True)
    time_steps(llm, plain=0.01, speculative=0.05)
    engine = llm.llm_engine
    engine.add_request("seeded", PROMPTS[0], SamplingParams(temperature=1.0, seed=7, max_tokens=40, ignore_eos=True))
    engine.add_request("greedy", PROMPTS[1], GREEDY)
    drafted: dict[str, list[int]] = {"seeded": [], "greedy": []}
    original = engine.proposer.propose

    def recorded(plan):
        original(plan)
        for request, _ in plan:
            drafted[request.request_id].append(len(request.spec_token_ids))

    engine.proposer.propose = recorded
    while engine.has_unfinished_requests():
        engine.step()
    assert drafted["greedy"] == []
    assert len(drafted["seeded"]) >= 4 and set(drafted["seeded"][:4]) == {3}  # the cap shrinks near max_tokens
    assert_no_leaks(llm)


@pytest.mark.parametrize("k", [1, 5])
def test_k_extremes(pair, k):
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS[:3], GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=k)
    assert token_ids(llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False)) == expected
    assert_no_leaks(llm)


def test_each_step_is_recorded_and_timed_over_its_whole_cycle_in_steady_state(pair, monkeypatch):
    """The engine emits a StepRecord per step (and to OCTAVO_STEP_TRACE, one JSON line each).
    A step's time sample is its cycle, from its start to the next step's start (what happens
    between two steps, streaming what a step emitted, is charged to it), taken only in steady
    state: not the first decode step after the prompt (the draft's catch-up), not a cycle that
    ends with a new request admitted."""
    import json
    from types import SimpleNamespace

    from octavo.runtime import engine as engine_module

    clock = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0],
                                                                monotonic=engine_module.time.monotonic))
    trace = engine_module.StepTrace.ENV
    monkeypatch.setenv(trace, str(pair[0].parent / "trace.jsonl"))
    target, draft = pair
    # Fixed k: every decode step drafts 2. In order: the prefill step is read back in its own step.
    llm = make_llm(target, draft, k=2, async_scheduling=False)
    engine = llm.llm_engine
    engine.add_request("a", {"prompt_token_ids": [5, 6, 7, 8]},
                       SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))
    for gap in [0.5, 1.0, 2.0, 3.0, 5.0, 8.0]:  # the prompt, then decode steps; time moves between steps
        engine.step()
        clock[0] += gap
    engine.step()  # closes the 8.0-long cycle
    bucket = engine.controller._bucket(1)
    # Decode cycles: 1.0 (the catch-up after the prompt: no sample), then 2.0, 3.0, 5.0, 8.0.
    assert list(bucket.spec[2]) == [2.0, 3.0, 5.0, 8.0] and not bucket.plain
    clock[0] += 13.0
    engine.add_request("b", {"prompt_token_ids": [9, 10, 11]},
                       SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    engine.step()  # admits "b": the cycle that ended here is no sample
    assert list(bucket.spec[2]) == [2.0, 3.0, 5.0, 8.0]
    engine.abort_request(["a", "b"])
    assert_no_leaks(llm)
    records = [json.loads(line) for line in open(pair[0].parent / "trace.jsonl")]
    assert len(records) == 8 and records[0]["num_prefill_tokens"] == 4 and records[0]["k"] == 0
    assert all(r["k"] == 2 and r["num_drafted"] == 2 and r["num_emitted"] == r["num_accepted"] + 1 for r in records[2:7])
    (pair[0].parent / "trace.jsonl").unlink()


def test_plain_steps_overlap_and_drafting_steps_read_back_first(pair):
    """Asynchronous scheduling with a draft: when adaptive k says 0, a step is launched before the
    last one's tokens are read back (the requests hold placeholders meanwhile); a step that drafts
    reads them back first. Alternating the two keeps greedy output equal to the target's alone."""
    target, draft = pair
    expected = token_ids(make_llm(target).generate(PROMPTS, GREEDY, use_tqdm=False))
    llm = make_llm(target, draft, k=3, adaptive=True)
    engine = llm.llm_engine
    pattern = iter([0, 0, 3, 0, 3, 3, 0, 0, 0, 3] * 100)
    engine.controller.step_k = lambda batch_size: next(pattern)
    placeholders_at_draft: list[int] = []
    propose = engine.proposer.propose

    def checked(plan):
        placeholders_at_draft.append(sum(request.num_placeholders for request, _ in plan))
        return propose(plan)

    engine.proposer.propose = checked
    overlapped = 0
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, GREEDY)
    finished: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
        overlapped += any(request.num_placeholders for request in engine.scheduler.running)
    assert [finished[str(i)] for i in range(len(PROMPTS))] == expected
    assert overlapped and placeholders_at_draft and not any(placeholders_at_draft)
    assert spec_totals(llm)[0] > 0
