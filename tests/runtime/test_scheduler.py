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
