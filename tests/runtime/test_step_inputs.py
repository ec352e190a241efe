"""The runner's step inputs (#21, persistent batch): prepare() with its numpy arithmetic and the
block-table rows kept across steps builds exactly the flat batch the list-by-list version built,
over random steps where requests come, go, grow, are preempted (their blocks freed, a new list)
and roll back rejected drafts (truncated: a new, shorter list, then grown again). The list-by-list
version is kept here as the reference. Host staging: same values on the device, and on CUDA the
copies do not wait for work already queued."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from octavo.runtime.block_table import BlockTableRows
from octavo.runtime.host_staging import ALIGN, slab_layout, slab_views, stage, to_device, write_slab
from octavo.runtime.kv_cache import KVCacheManager
from octavo.runtime.model_runner import ModelRunner
from octavo.runtime.request import Request
from octavo.runtime.sampling_params import SamplingParams
from octavo.runtime.scheduler import ScheduledRequest, SchedulerOutput

BLOCK = 4


def reference_prepare(sched: SchedulerOutput, block_size: int) -> dict:
    """The flat batch built from Python lists (octavo before the persistent block table)."""
    input_ids, positions, slots, starts, seq_lens, logits_positions = [], [], [], [0], [], []
    sample_rows, prompt_rows = {}, {}
    for item in sched.scheduled:
        req = item.request
        first = req.num_computed_tokens
        last = first + item.num_new_tokens
        tokens = req.all_token_ids[first:last]
        if len(tokens) < item.num_new_tokens:
            tokens = tokens + req.spec_token_ids[: item.num_new_tokens - len(tokens)]
        offset = len(input_ids)
        input_ids.extend(tokens)
        positions.extend(range(first, last))
        slots.extend(req.block_ids[p // block_size] * block_size + p % block_size for p in range(first, last))
        starts.append(len(input_ids))
        seq_lens.append(last)
        if req.needs_prompt_logprobs:
            lo = max(first, len(req.prompt_logprobs) - 1)
            hi = min(last, req.num_prompt_tokens - 1)
            if hi > lo:
                prompt_rows[req.request_id] = (lo, list(range(len(logits_positions), len(logits_positions) + hi - lo)))
                logits_positions.extend(offset + p - first for p in range(lo, hi))
        if item.completes_sequence:
            count = item.num_spec_tokens + 1
            sample_rows[req.request_id] = list(range(len(logits_positions), len(logits_positions) + count))
            logits_positions.extend(range(len(input_ids) - count, len(input_ids)))
    width = max(len(item.request.block_ids) for item in sched.scheduled)
    tables = [item.request.block_ids + [0] * (width - len(item.request.block_ids)) for item in sched.scheduled]
    return {"input_ids": input_ids, "positions": positions, "slot_mapping": slots, "query_start_loc": starts,
            "seq_lens": seq_lens, "block_tables": tables, "logits_indices": logits_positions,
            "decode_only": all(item.num_new_tokens == 1 for item in sched.scheduled),
            "sample_rows": sample_rows, "prompt_rows": prompt_rows}


def new_request(rng: random.Random, index: int) -> Request:
    params = SamplingParams(max_tokens=50, prompt_logprobs=rng.choice([None, None, 2]))
    return Request(f"r{index}", [rng.randrange(100) for _ in range(rng.randrange(1, 30))], params)


def random_step(rng: random.Random, kv: KVCacheManager, live: list[Request]) -> list[ScheduledRequest]:
    """Advance the live requests as an engine would (the last step's tokens appended, drafts
    rejected, a preemption now and then), then pick this step's requests and token counts."""
    scheduled = []
    for req in list(live):
        if req.num_computed_tokens >= req.num_tokens:  # the last step sampled: its token arrives
            req.append_token(rng.randrange(100))
        action = rng.random()
        if action < 0.05:  # preempted: blocks freed, recomputed from the start later
            kv.free(req)
            req.num_computed_tokens = 0
        elif action < 0.15 and req.num_computed_tokens > BLOCK:  # drafts rejected: KV rolled back
            keep = rng.randrange(1, req.num_computed_tokens)
            kv.truncate(req, keep)
            req.num_computed_tokens = keep
        if rng.random() < 0.25:  # not scheduled this step (budget), keeps its row and blocks
            continue
        remaining = req.num_tokens - req.num_computed_tokens
        spec = rng.choice([0, 0, 2]) if remaining == 1 else 0
        count = remaining if remaining <= 1 else rng.randrange(1, remaining + 1)  # chunked prefill
        req.spec_token_ids = [rng.randrange(100) for _ in range(spec)]
        assert kv.allocate(req, req.num_computed_tokens + count + spec)
        scheduled.append(ScheduledRequest(req, count + spec, spec))
    return scheduled


@pytest.mark.parametrize("seed", range(6))
def test_prepare_matches_the_list_built_batch_over_random_steps(seed):
    rng = random.Random(seed)
    kv = KVCacheManager(num_blocks=4096, block_size=BLOCK, enable_prefix_caching=False)
    runner = SimpleNamespace(block_size=BLOCK, device=torch.device("cpu"), block_rows=BlockTableRows(num_rows=4, width=2))
    live: list[Request] = []
    index = 0
    for _ in range(60):
        for _ in range(rng.randrange(0, 4)):
            live.append(new_request(rng, index))
            index += 1
        for req in [r for r in live if rng.random() < 0.08]:  # finished: blocks freed, row left behind
            kv.free(req)
            live.remove(req)
        scheduled = random_step(rng, kv, live)
        if not scheduled:
            continue
        sched = SchedulerOutput(scheduled=scheduled)
        want = reference_prepare(sched, BLOCK)
        got = ModelRunner.prepare(runner, sched)
        host = got.host
        for name in ("input_ids", "positions", "slot_mapping", "query_start_loc", "seq_lens", "block_tables",
                     "logits_indices"):
            assert host[name].tolist() == want[name], name
        assert host["decode_only"] == want["decode_only"]
        assert got.sample_rows == want["sample_rows"] and got.prompt_rows == want["prompt_rows"]
        assert got.input_ids.dtype == torch.long and got.meta.block_tables.dtype == torch.int32
        for item in scheduled:  # a chunk of a prompt: advance as the engine does
            item.request.num_computed_tokens += item.num_new_tokens - item.num_spec_tokens


def test_block_rows_follow_growth_in_place_and_rewrite_replaced_lists():
    rows = BlockTableRows(num_rows=2, width=2)
    a = SimpleNamespace(request_id="a", block_ids=[5, 6])
    b = SimpleNamespace(request_id="b", block_ids=[7])
    first = rows.rows_for([a, b])
    assert rows.table[first].tolist() == [[5, 6], [7, 0]]
    a.block_ids.extend([8, 9, 10])  # grows in place past the width
    b.block_ids = [3]  # freed and allocated again: another list
    again = rows.rows_for([a, b])
    assert again.tolist() == first.tolist()
    assert rows.table[again, :5].tolist() == [[5, 6, 8, 9, 10], [3, 0, 0, 0, 0]]
    a.block_ids = a.block_ids[:1]  # truncated: the tail is cleared
    c = SimpleNamespace(request_id="c", block_ids=[1, 2])  # no free row: b's row is taken back
    third = rows.rows_for([a, c])
    assert rows.table[third, :5].tolist() == [[5, 0, 0, 0, 0], [1, 2, 0, 0, 0]]
    assert "b" not in rows.row_of
    many = [SimpleNamespace(request_id=f"n{i}", block_ids=[i]) for i in range(9)]  # more than the rows
    placed = rows.rows_for(many)
    assert rows.table[placed, 0].tolist() == list(range(9))


STAGED = [torch.arange(5), torch.tensor([1, 2], dtype=torch.int32), torch.zeros(0, dtype=torch.long),
          torch.arange(6, dtype=torch.int32).view(2, 3), torch.tensor([True, False]),
          torch.tensor([1.5, -2.0], dtype=torch.bfloat16), torch.tensor(7), torch.arange(12).view(3, 4)[:, 1]]


def test_a_slab_holds_each_tensor_at_an_aligned_offset_and_gives_it_back():
    """The host half of staging (pinned memory aside), on any machine: bytes in, views out."""
    offsets, total = slab_layout(STAGED)
    assert all(offset % ALIGN == 0 for offset in offsets) and total % ALIGN == 0
    slab = torch.full((total,), 255, dtype=torch.uint8)
    write_slab(slab, STAGED, offsets)
    for src, dst in zip(STAGED, slab_views(slab.clone(), STAGED, offsets)):
        assert dst.dtype == src.dtype and dst.shape == src.shape and torch.equal(dst, src)


def test_staging_keeps_values_dtypes_and_shapes():
    tensors = STAGED
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = stage(tensors, device)
    for src, dst in zip(tensors, out):
        assert dst.device.type == device.type and dst.dtype == src.dtype and dst.shape == src.shape
        assert torch.equal(dst.cpu(), src)
    assert to_device([3, 4], torch.long, device).cpu().tolist() == [3, 4]
    assert to_device(torch.tensor([1, 2]), torch.float32, device).cpu().tolist() == [1.0, 2.0]
    for dtype in (torch.bfloat16, torch.float16, torch.float64):  # dtypes the numpy fast path leaves to torch
        listed = to_device([1.5, -2.0], dtype, device)
        assert listed.dtype == dtype and listed.cpu().tolist() == [1.5, -2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_staged_copies_do_not_wait_for_queued_work():
    """A copy from pageable memory waits for the stream to drain; a staged one is queued behind
    the running kernel (the stream is still busy when it returns) and lands in order."""
    device = torch.device("cuda")
    values = torch.arange(1000)
    # Once first: a fresh page-locked allocation (cudaHostAlloc) may synchronise; the caching
    # allocator then hands the same blocks out again, as it does step after step in the engine.
    stage([values, values.to(torch.int32)], device)
    to_device(list(range(7)), torch.long, device)
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time at ~2 GHz
    staged = stage([values, values.to(torch.int32)], device)
    listed = to_device(list(range(7)), torch.long, device)
    assert not torch.cuda.current_stream().query(), "a staged copy waited for the queued kernel"
    torch.cuda.synchronize()
    assert torch.equal(staged[0].cpu(), values) and listed.cpu().tolist() == list(range(7))
