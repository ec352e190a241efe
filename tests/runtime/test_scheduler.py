"""Scheduling decisions: token budget, chunked prefill that does not starve decodes, FCFS,
preemption of the newest request."""

from __future__ import annotations

from octavo.runtime.config import SchedulerConfig
from octavo.runtime.kv_cache import KVCacheManager
from octavo.runtime.request import Request
from octavo.runtime.sampling_params import SamplingParams
from octavo.runtime.scheduler import Scheduler


def make(budget=16, max_seqs=8, blocks=64, chunked=True):
    kv = KVCacheManager(num_blocks=blocks, block_size=4, enable_prefix_caching=False)
    config = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=256,
                             enable_chunked_prefill=chunked)
    return Scheduler(config, kv)


def finish_step(out):
    """What the engine does after a forward: advance, and append a token where one was sampled."""
    for item in out.scheduled:
        completes = item.completes_sequence
        item.request.num_computed_tokens += item.num_new_tokens
        if completes:
            item.request.append_token(1)


def test_long_prompt_is_chunked_and_decodes_keep_running():
    sched = make(budget=16)
    short = Request("short", [1, 2, 3], SamplingParams())
    sched.add_request(short)
    finish_step(sched.schedule())  # short's prefill: now decoding
    long = Request("long", list(range(100)), SamplingParams())
    sched.add_request(long)
    for _ in range(5):
        out = sched.schedule()
        counts = {i.request.request_id: i.num_new_tokens for i in out.scheduled}
        assert counts["short"] == 1  # the decode is never starved
        assert counts["long"] == 15  # the prompt gets what the budget leaves
        assert out.num_batched_tokens <= 16
        finish_step(out)


def test_fcfs_admission_and_max_num_seqs():
    sched = make(budget=100, max_seqs=2)
    reqs = [Request(str(i), [1] * 5, SamplingParams()) for i in range(3)]
    for r in reqs:
        sched.add_request(r)
    out = sched.schedule()
    assert [i.request.request_id for i in out.scheduled] == ["0", "1"]
    assert list(sched.waiting) == [reqs[2]]


def test_preempts_the_newest_running_request_when_blocks_run_out():
    sched = make(budget=100, blocks=4)
    a = Request("a", [1] * 8, SamplingParams())
    b = Request("b", [1] * 8, SamplingParams())
    sched.add_request(a)
    sched.add_request(b)
    finish_step(sched.schedule())  # both prefilled: 2 blocks each, cache full
    out = sched.schedule()  # each needs a third block: b is preempted for a
    assert out.preempted == [b]
    assert [i.request.request_id for i in out.scheduled] == ["a"]
    assert b.num_computed_tokens == 0 and b.block_ids == [] and sched.waiting[0] is b


def run_to_completion(sched, requests, max_steps=500):
    """Drive the scheduler like the engine does, finishing requests at max_tokens; the preemptions."""
    from octavo.runtime.request import RequestStatus

    for r in requests:
        sched.add_request(r)
    preemptions = 0
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return preemptions
        out = sched.schedule()
        preemptions += len(out.preempted)
        finish_step(out)
        for item in out.scheduled:
            r = item.request
            if r.num_output_tokens >= r.sampling_params.max_tokens and not r.is_finished:
                sched.finish_request(r, RequestStatus.FINISHED_LENGTH)
    raise AssertionError("the scheduler did not finish the requests")


def make_reserving(ratio, blocks=24):
    kv = KVCacheManager(num_blocks=blocks, block_size=4, enable_prefix_caching=False)
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256,
                             enable_chunked_prefill=True, kv_reserve_ratio=ratio)
    return Scheduler(config, kv)


def test_admission_that_reserves_the_remaining_output_never_preempts():
    # Six requests of 8 prompt + 16 output tokens (6 blocks each at the end) in a 24-block cache:
    # all six prompts fit at once (12 blocks), but they cannot all grow to the end.
    def requests():
        return [Request(str(i), [1] * 8, SamplingParams(max_tokens=16)) for i in range(6)]

    assert run_to_completion(make_reserving(0.0), requests()) > 0
    assert run_to_completion(make_reserving(1.0), requests()) == 0


def test_reserving_admission_holds_a_prompt_back_until_the_running_ones_can_finish():
    sched = make_reserving(1.0)
    for i in range(6):
        sched.add_request(Request(str(i), [1] * 8, SamplingParams(max_tokens=16)))
    out = sched.schedule()
    # Each admitted request reserves 6 blocks of the 24: four are admitted, two wait.
    assert len(out.scheduled) == 4 and sched.num_waiting == 2


def test_a_request_alone_is_admitted_whatever_it_would_reserve():
    sched = make_reserving(1.0, blocks=4)
    r = Request("big", [1] * 8, SamplingParams(max_tokens=100))
    sched.add_request(r)
    assert [i.request for i in sched.schedule().scheduled] == [r]


def test_the_engines_admission_question_counts_the_reserve():
    # The engine drafts only when no prompt can be admitted: a prompt held back by the reserve
    # must not stop speculation.
    sched = make_reserving(1.0)
    for i in range(6):
        sched.add_request(Request(str(i), [1] * 8, SamplingParams(max_tokens=16)))
    assert sched.can_admit()
    finish_step(sched.schedule())  # four admitted; their reserve covers the rest of the cache
    assert sched.has_slot() and not sched.can_admit()
