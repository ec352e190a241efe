"""AsyncLLMEngine: cumulative streaming, abort by call or by cancellation, bad input failing alone."""

from __future__ import annotations

import asyncio

import pytest

from octavo import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

TIMEOUT = 60


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async-scheduling"])
def engine(llama_dir, request):
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=str(llama_dir), dtype="float32",
                                                             num_gpu_blocks_override=128,
                                                             async_scheduling=request.param))
    yield engine
    engine.shutdown()


async def collect(engine, prompt, params, request_id):
    outputs = []
    async for out in engine.generate(prompt, params, request_id):
        outputs.append(out)
    return outputs


async def test_streams_cumulative_outputs_whose_deltas_rebuild_the_text(engine):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    outputs = await asyncio.wait_for(collect(engine, "Machine learning is", params, "a"), TIMEOUT)
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
    texts = [o.outputs[0].text for o in outputs]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    rebuilt = "".join(b[len(a):] for a, b in zip([""] + texts, texts))
    assert rebuilt == texts[-1]
    assert len(outputs[-1].outputs[0].token_ids) == 20


async def test_cancelled_consumer_aborts_and_frees_blocks(engine):
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    first_output = asyncio.Event()

    async def consume():
        async for _ in engine.generate("Paged attention", params, "cancel-me"):
            first_output.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_output.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_idle(engine)
    engine.engine.kv_cache.check_no_leaks()


async def test_abort_ends_the_stream(engine):
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    seen = []

    async def consume():
        async for out in engine.generate("Kubernetes", params, "abort-me"):
            seen.append(out)
            if len(seen) == 2:
                await engine.abort("abort-me")

    await asyncio.wait_for(consume(), TIMEOUT)
    assert 2 <= len(seen) < 400
    await wait_until_idle(engine)
    engine.engine.kv_cache.check_no_leaks()


async def test_bad_prompt_fails_alone_while_others_finish(engine):
    params = SamplingParams(temperature=0.0, max_tokens=8)
    good = asyncio.create_task(collect(engine, "Machine learning is", params, "good"))
    with pytest.raises(ValueError, match="max_model_len"):
        await asyncio.wait_for(collect(engine, {"prompt_token_ids": [3] * 1000}, params, "bad"), TIMEOUT)
    outputs = await asyncio.wait_for(good, TIMEOUT)
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) >= 1


async def test_concurrent_requests_match_sequential_ones(engine):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [f"Request number {i} says" for i in range(8)]
    together = await asyncio.wait_for(
        asyncio.gather(*(collect(engine, p, params, f"c{i}") for i, p in enumerate(prompts))), TIMEOUT)
    for i in (0, 5):
        alone = await asyncio.wait_for(collect(engine, prompts[i], params, f"s{i}"), TIMEOUT)
        assert alone[-1].outputs[0].token_ids == together[i][-1].outputs[0].token_ids


async def test_a_step_wakes_the_event_loop_once_for_all_its_outputs(engine, monkeypatch):
    """Every call_soon_threadsafe writes to the loop's wake-up socket (a system call that hands
    the GIL over): a step's outputs for several requests go in one."""
    loop = asyncio.get_running_loop()
    wakeups = []
    real = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        wakeups.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    results = await asyncio.wait_for(
        asyncio.gather(*(collect(engine, f"Wake-up test {i} says", params, f"w{i}") for i in range(4))), TIMEOUT)
    delivered = sum(len(outputs) for outputs in results)
    assert delivered == 40
    # Four requests admitted within a step or two of each other share at least 8 of their 10 steps.
    assert len(wakeups) <= delivered - 3 * 8


def test_deliver_hands_each_loop_its_batch_in_one_call():
    from octavo.runtime.async_engine import deliver

    loops = [asyncio.new_event_loop() for _ in range(2)]
    try:
        queues = [[asyncio.Queue() for _ in range(2)] for _ in loops]
        calls = []
        for loop in loops:
            real = loop.call_soon_threadsafe
            loop.call_soon_threadsafe = lambda cb, *a, _real=real: (calls.append(cb), _real(cb, *a))[1]
        deliver({loop: [(queues[i][0], f"{i}a"), (queues[i][1], f"{i}b"), (queues[i][0], f"{i}c")]
                 for i, loop in enumerate(loops)})
        assert len(calls) == 2
        for i, loop in enumerate(loops):
            loop.run_until_complete(asyncio.sleep(0))
            assert [queues[i][0].get_nowait(), queues[i][0].get_nowait(), queues[i][1].get_nowait()] == \
                [f"{i}a", f"{i}c", f"{i}b"]
        loops[0].close()
        deliver({loops[0]: [(queues[0][0], "late")]})  # a closed loop: dropped, never raised
    finally:
        for loop in loops:
            loop.close()


async def wait_until_idle(engine, timeout: float = TIMEOUT) -> None:
    """Poll (bounded) until the engine thread has processed the abort."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while engine.engine.has_unfinished_requests() or engine.engine.kv_cache.num_free_blocks != engine.engine.kv_cache.num_blocks:
        if loop.time() > deadline:
            raise TimeoutError("engine did not go idle")
        await asyncio.sleep(0.01)



async def test_the_step_after_first_tokens_runs_with_a_short_gil_switch_interval(engine, monkeypatch):
    """The event loop must get the GIL within half a millisecond to stream a first token, even
    while the next step runs host work (a draft's catch-up); every other step keeps Python's
    interval, so the engine's GPU waits still overlap the streaming."""
    import sys

    from octavo.runtime.async_engine import FIRST_TOKEN_SWITCH_INTERVAL_S

    default = sys.getswitchinterval()
    assert FIRST_TOKEN_SWITCH_INTERVAL_S == 0.0005 < default
    intervals = []
    step = engine.engine.step

    first_token_step = []

    def recording_step():
        intervals.append(sys.getswitchinterval())
        outputs = step()
        if any(len(o.outputs[0].token_ids) == 1 for o in outputs):
            first_token_step.append(len(intervals) - 1)
        return outputs

    monkeypatch.setattr(engine.engine, "step", recording_step)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    await asyncio.wait_for(collect(engine, "Machine learning is", params, "interval"), TIMEOUT)
    # The step that delivered the first token (the prompt's, or the one after it under
    # asynchronous scheduling), the short one after it, then the default again.
    assert len(first_token_step) == 1 and len(intervals) >= first_token_step[0] + 3
    expected = [default] * len(intervals)
    expected[first_token_step[0] + 1] = 0.0005
    assert intervals == expected
    assert sys.getswitchinterval() == default


async def test_profile_calls_run_on_the_engine_thread_and_never_wait_on_a_stopped_one(llama_dir, tmp_path):
    """start_profile / stop_profile go through the engine thread (between steps) and return; once
    the loop has stopped, a call is answered with EngineDeadError at once instead of waiting."""
    from octavo.runtime.async_engine import EngineDeadError
    from octavo.runtime.profiler import ProfilerNotConfigured

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(llama_dir), dtype="float32", num_gpu_blocks_override=64,
        profiler_config={"profiler": "torch", "torch_profiler_dir": str(tmp_path)}))
    try:
        await asyncio.wait_for(engine.start_profile(), TIMEOUT)
        await asyncio.wait_for(collect(engine, "a b", SamplingParams(max_tokens=3, temperature=0.0), "p"), TIMEOUT)
        await asyncio.wait_for(engine.stop_profile(), TIMEOUT)
        assert len(engine.engine.profiler.traces) == 1
    finally:
        engine.shutdown()
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(engine.stop_profile(), 5)

    plain = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=str(llama_dir), dtype="float32",
                                                            num_gpu_blocks_override=64))
    try:
        with pytest.raises(ProfilerNotConfigured):
            await asyncio.wait_for(plain.start_profile(), TIMEOUT)
        assert plain.is_running  # the refusal reached the caller, not the loop
    finally:
        plain.shutdown()
