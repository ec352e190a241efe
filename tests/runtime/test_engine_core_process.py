"""The engine core in its own process (FrontEngine + engine_core): its outputs are token-exact
with the in-process engine's, stop strings end requests in the front, aborts free the core's
blocks, a crashing core fails requests instead of hanging, and the core follows its front out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from octavo import AsyncLLMEngine, SamplingParams
from octavo.runtime.config import EngineArgs
from octavo.runtime.core_client import EngineCoreDeadError
from octavo.runtime.engine import LLMEngine
from octavo.runtime.engine_core import CORE_FAULT_AFTER_STEPS_ENV
from octavo.runtime.front_engine import FrontEngine, build_engine, multiprocessing_enabled
from octavo.runtime.sampling_params import RequestOutputKind

TIMEOUT_S = 120
PROMPTS = ["Machine learning is", "Paged attention", "def add(a, b):", "The quick brown fox"]


def engine_args(llama_dir, **changes) -> EngineArgs:
    return EngineArgs(model=str(llama_dir), dtype="float32", num_gpu_blocks_override=128, **changes)


@pytest.fixture(scope="module")
def in_process(llama_dir):
    return LLMEngine.from_engine_args(engine_args(llama_dir))


@pytest.fixture(scope="module")
def front(llama_dir):
    engine = build_engine(engine_args(llama_dir, enable_multiprocessing=True))
    assert isinstance(engine, FrontEngine)
    yield engine
    engine.shutdown()
    assert not engine.client.process.is_alive()


def run_all(engine, requests: list[tuple[str, SamplingParams]]) -> dict[str, list]:
    """Every request to its end; each request's outputs, in order."""
    seen: dict[str, list] = {}
    for index, (prompt, params) in enumerate(requests):
        engine.add_request(str(index), prompt, params)
        seen[str(index)] = []
    deadline = time.monotonic() + TIMEOUT_S
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "the engine did not finish in time"
        for output in engine.step():
            seen[output.request_id].append(output)
    return seen


def summary(outputs: dict[str, list]) -> dict:
    """Everything exact but log-probability values, equal to 1e-5: the core may take requests
    that arrive together in different steps, and a different batch moves float sums in the last
    bits (token ids and ranks stay exact)."""
    def value(x):
        return None if x is None else pytest.approx(x, rel=1e-5, abs=1e-6)

    def completion(c):
        logprobs = None if c.logprobs is None else [
            {t: (value(lp.logprob), lp.rank, lp.decoded_token) for t, lp in entry.items()} for entry in c.logprobs]
        return (c.index, c.text, list(c.token_ids), c.finish_reason, c.stop_reason, value(c.cumulative_logprob),
                logprobs)

    def prompt_logprobs(o):
        return None if o.prompt_logprobs is None else [
            None if entry is None else {t: (value(lp.logprob), lp.rank, lp.decoded_token) for t, lp in entry.items()}
            for entry in o.prompt_logprobs]
    return {rid: [(o.finished, [completion(c) for c in o.outputs], prompt_logprobs(o)) for o in outs]
            for rid, outs in outputs.items()}


CASES = {
    "greedy": [(p, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)) for p in PROMPTS],
    "seeded-sampling": [(p, SamplingParams(temperature=0.9, top_p=0.9, seed=7 + i, max_tokens=20, ignore_eos=True))
                        for i, p in enumerate(PROMPTS)],
    "n>1": [(PROMPTS[0], SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=16, ignore_eos=True))],
    "logprobs": [(p, SamplingParams(temperature=0.0, max_tokens=8, logprobs=3, prompt_logprobs=2, ignore_eos=True))
                 for p in PROMPTS[:2]],
    "delta": [(p, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                 output_kind=RequestOutputKind.DELTA)) for p in PROMPTS[:2]],
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_match_the_in_process_engine_token_for_token(case, in_process, front):
    expected = summary(run_all(in_process, CASES[case]))
    got = summary(run_all(front, CASES[case]))
    assert got == expected
    assert all(outs[-1][0] for outs in got.values())  # every request ended


def test_stop_strings_end_requests_in_the_front_as_in_process(in_process, front):
    greedy = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    reference = run_all(in_process, [(PROMPTS[0], greedy)])["0"][-1].outputs[0].text
    stop = reference[10:13]  # a string the greedy text reaches mid-way
    assert stop and len(reference) > 13
    requests = [(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, stop=[stop])),
                (PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, stop=[stop],
                                            include_stop_str_in_output=True)),
                (PROMPTS[0], SamplingParams(n=2, temperature=1.0, seed=11, max_tokens=30, ignore_eos=True,
                                            stop=["e"]))]
    expected = summary(run_all(in_process, requests))
    got = summary(run_all(front, requests))
    assert got == expected
    assert got["0"][-1][1][0][4] == stop and got["0"][-1][1][0][3] == "stop"
    wait_for_idle_core(front)


def test_many_concurrent_requests_match(in_process, front):
    requests = [(f"{PROMPTS[i % 4]} {i}", SamplingParams(temperature=0.0 if i % 2 else 0.8, seed=i,
                                                       max_tokens=4 + i % 9, ignore_eos=True))
                for i in range(40)]
    assert summary(run_all(front, requests)) == summary(run_all(in_process, requests))


def wait_for_idle_core(front) -> None:
    """Step until the core reports no sequence and no KV block in use (bounded)."""
    deadline = time.monotonic() + TIMEOUT_S
    while front.stats.num_running or front.stats.num_waiting or front.stats.kv_cache_usage:
        assert time.monotonic() < deadline, f"the core still holds work: {front.stats}"
        front.step()


def test_abort_mid_stream_frees_the_cores_blocks(front):
    front.add_request("long", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True))
    deadline = time.monotonic() + TIMEOUT_S
    while not front.stats.kv_cache_usage:
        assert time.monotonic() < deadline
        front.step()
    front.abort_request("long")
    assert front.has_unfinished_requests(), "until the core answers the abort"
    deadline = time.monotonic() + TIMEOUT_S
    while front.has_unfinished_requests():
        assert time.monotonic() < deadline
        front.step()
    assert front.stats.kv_cache_usage == 0 and front.stats.num_running == 0 and front.stats.num_waiting == 0


def test_prompt_checks_fail_in_the_front_at_once(front):
    with pytest.raises(ValueError, match="max_model_len"):
        front.add_request("too-long", [1] * front.max_model_len, SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        front.add_request("empty", [], SamplingParams())


def test_a_ring_ends_the_fronts_wait_for_the_core(front):
    """wake() (AsyncLLMEngine calls it for every request it queues) ends receive's wait at once,
    rung before the wait or during it from another thread, so a new request goes to the core
    while the core computes, not after its step; a shut-down client ignores rings."""
    assert not front.has_unfinished_requests()
    for ring_from_another_thread in (False, True):
        if ring_from_another_thread:
            threading.Thread(target=front.wake).start()
        else:
            front.wake()
        started = time.monotonic()
        assert front.client.receive(60.0) == []
        assert time.monotonic() - started < 30.0, "the ring did not end the wait"
    front.wake()
    front.wake()  # two rings before one wait: one wait ends, nothing is left to end the next early
    front.client.receive(60.0)
    started = time.monotonic()
    assert front.client.receive(0.2) == []
    assert time.monotonic() - started >= 0.15


def test_the_flag_and_the_environment_choose_the_mode(llama_dir, monkeypatch):
    for name in ("OCTAVO_ENABLE_MULTIPROCESSING", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.delenv(name, raising=False)
    assert not multiprocessing_enabled(engine_args(llama_dir))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert multiprocessing_enabled(engine_args(llama_dir))
    assert not multiprocessing_enabled(engine_args(llama_dir, enable_multiprocessing=False))
    monkeypatch.setenv("OCTAVO_ENABLE_MULTIPROCESSING", "0")
    assert not multiprocessing_enabled(engine_args(llama_dir))


async def test_async_engine_streams_through_the_core(llama_dir, in_process):
    engine = AsyncLLMEngine.from_engine_args(engine_args(llama_dir, enable_multiprocessing=True))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)

        async def collect(request_id):
            return [o async for o in engine.generate(PROMPTS[0], params, request_id)]

        streams = await asyncio.wait_for(asyncio.gather(collect("a"), collect("b")), TIMEOUT_S)
        expected = run_all(in_process, [(PROMPTS[0], params)])["0"][-1].outputs[0]
        for outputs in streams:
            assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
            assert outputs[-1].outputs[0].token_ids == expected.token_ids
            assert outputs[-1].outputs[0].text == expected.text
        assert engine.stats.generation_tokens == 40
    finally:
        engine.shutdown()


async def test_a_crashing_core_fails_requests_and_the_engine(llama_dir, monkeypatch):
    monkeypatch.setenv(CORE_FAULT_AFTER_STEPS_ENV, "3")
    engine = AsyncLLMEngine.from_engine_args(engine_args(llama_dir, enable_multiprocessing=True))
    died = []
    heard = threading.Event()
    engine.add_death_callback(lambda exc: (died.append(exc), heard.set()))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
        with pytest.raises(Exception, match="injected engine core fault") as failure:
            await asyncio.wait_for(_drain(engine.generate(PROMPTS[0], params, "doomed")), TIMEOUT_S)
        assert "EngineDeadError" in type(failure.value).__name__
        # The callbacks run on the engine thread after the streams hear of the death.
        assert await asyncio.to_thread(heard.wait, 30)
        assert isinstance(died[0], EngineCoreDeadError)
        assert not engine.is_running
    finally:
        engine.shutdown()


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def test_the_core_exits_when_its_front_is_killed(llama_dir, tmp_path):
    """A front process that dies by SIGKILL leaves no core behind (bounded wait)."""
    pid_file = tmp_path / "core.pid"
    script = textwrap.dedent(f"""
        import time
        from octavo.runtime.config import EngineArgs
        from octavo.runtime.front_engine import FrontEngine
        engine = FrontEngine(EngineArgs(model={str(llama_dir)!r}, dtype="float32", num_gpu_blocks_override=32))
        open({str(pid_file)!r}, "w").write(str(engine.client.process.pid))
        time.sleep(600)
    """)
    front = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (pid_file.exists() and pid_file.read_text()):
            assert front.poll() is None, "the front process failed to start its core"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        core_pid = int(pid_file.read_text())
        os.kill(front.pid, signal.SIGKILL)
        front.wait(10)
        deadline = time.monotonic() + 30
        while _alive(core_pid):
            assert time.monotonic() < deadline, "the core outlived its front by 30 s"
            time.sleep(0.1)
    finally:
        if front.poll() is None:
            front.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_request_whose_text_fails_in_the_front_fails_alone(front, monkeypatch):
    """A detokenizer error in one request fails that request (failed_requests, aborted in the core);
    another request in the same steps finishes."""
    from octavo.runtime import tokenizer as tokenizer_module

    add = tokenizer_module.IncrementalDetokenizer.add

    def faulty_add(self, token_ids):
        if self.prompt_token_ids_for_test == "doomed":
            raise RuntimeError("injected detokenizer fault")
        return add(self, token_ids)

    monkeypatch.setattr(tokenizer_module.IncrementalDetokenizer, "prompt_token_ids_for_test", None, raising=False)
    monkeypatch.setattr(tokenizer_module.IncrementalDetokenizer, "add", faulty_add)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    front.add_request("doomed", PROMPTS[0], params)
    front.groups["doomed"].children[0].detokenizer.prompt_token_ids_for_test = "doomed"
    front.add_request("healthy", PROMPTS[1], params)
    finished = {}
    deadline = time.monotonic() + TIMEOUT_S
    while front.has_unfinished_requests():
        assert time.monotonic() < deadline
        finished.update((o.request_id, o) for o in front.step() if o.finished)
    assert set(front.failed_requests) == {"doomed"} and "injected" in str(front.failed_requests["doomed"])
    front.failed_requests.clear()
    assert len(finished["healthy"].outputs[0].token_ids) == 10 and "doomed" not in finished
    wait_for_idle_core(front)


# ---- structured outputs: the spec travels in the AddRequest; the core compiles and masks ----
REGEX = r"[a-e]{2,5}-[0-9]{1,3}"
SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 6},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["word", "n"]}


def constrained_requests() -> list[tuple[str, SamplingParams]]:
    from octavo.runtime.sampling_params import GuidedDecodingParams, StructuredOutputsParams

    specs = [StructuredOutputsParams(regex=REGEX), StructuredOutputsParams(choice=["alpha", "beta gamma"]),
             StructuredOutputsParams(json=SCHEMA)]
    requests = []
    for i, spec in enumerate(specs):
        requests += [(PROMPTS[i], SamplingParams(temperature=0.0, max_tokens=60, structured_outputs=spec)),
                     (PROMPTS[i + 1], SamplingParams(temperature=1.0, seed=i, n=2, max_tokens=60, logprobs=2,
                                                     guided_decoding=spec)),
                     (PROMPTS[i], SamplingParams(temperature=0.9, seed=5 + i, max_tokens=60, stop=["zz"],
                                                 structured_outputs=spec))]
    requests.append((PROMPTS[3], SamplingParams(seed=1, max_tokens=30, ignore_eos=True,
                                                guided_decoding=GuidedDecodingParams(choice=["yes", "no"]))))
    requests.append((PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)))  # unconstrained
    return requests


def test_structured_outputs_through_the_core_match_the_in_process_engine(in_process, front):
    import json
    import re

    requests = constrained_requests()
    expected = summary(run_all(in_process, requests))
    got = run_all(front, requests)
    assert summary(got) == expected
    finished = 0
    for (_, params), outputs in zip(requests, got.values()):
        spec = params.structured_outputs
        for choice in outputs[-1].outputs:
            if spec is None or choice.finish_reason != "stop":
                continue
            finished += 1
            if spec.regex is not None:
                assert re.fullmatch(spec.regex, choice.text), choice.text
            elif spec.choice is not None:
                assert choice.text in spec.choice
            else:
                value = json.loads(choice.text)
                assert set(value) == {"word", "n"} and 0 <= value["n"] <= 99, value
    assert finished >= 6  # the constraint checks above ran
    assert front.stats.grammars_compiled >= 4  # compiled (and enforced) in the core
    wait_for_idle_core(front)


def test_a_grammar_that_fails_to_compile_in_the_core_fails_its_request_alone(front):
    from octavo.runtime.sampling_params import StructuredOutputsParams
    from octavo.runtime.structured.compiler import GrammarError

    front.add_request("bad-grammar", PROMPTS[0], SamplingParams(
        max_tokens=5, structured_outputs=StructuredOutputsParams(regex="a(")))
    front.add_request("fine", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    finished = {}
    deadline = time.monotonic() + TIMEOUT_S
    while front.has_unfinished_requests():
        assert time.monotonic() < deadline
        finished.update((o.request_id, o) for o in front.step() if o.finished)
    error = front.failed_requests.pop("bad-grammar")
    assert isinstance(error, GrammarError) and "invalid regex" in str(error)  # the request's fault, as in-process
    assert not front.failed_requests and len(finished["fine"].outputs[0].token_ids) == 5
    wait_for_idle_core(front)


async def test_the_async_engine_checks_a_spec_in_the_front(llama_dir):
    from octavo.runtime.sampling_params import StructuredOutputsParams
    from octavo.runtime.structured.compiler import GrammarError

    engine = AsyncLLMEngine.from_engine_args(engine_args(llama_dir, enable_multiprocessing=True))
    try:
        assert isinstance(engine.engine, FrontEngine)
        with pytest.raises(GrammarError, match="invalid JSON schema"):
            await engine.check_structured_outputs(StructuredOutputsParams(json={"type": "nonsense"}), TIMEOUT_S)
        await engine.check_structured_outputs(StructuredOutputsParams(json=SCHEMA), TIMEOUT_S)  # compiles: no error
    finally:
        engine.shutdown()


def test_llm_with_multiprocessing_constrains_and_fails_a_bad_grammar_alone(llama_dir):
    import re

    from octavo import LLM
    from octavo.runtime.sampling_params import StructuredOutputsParams

    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks_override=64, enable_multiprocessing=True)
    try:
        assert isinstance(llm.llm_engine, FrontEngine)
        good, bad = llm.generate(PROMPTS[:2], [
            SamplingParams(temperature=1.0, seed=2, max_tokens=40, structured_outputs=StructuredOutputsParams(
                regex=REGEX)),
            SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(regex="a("))], use_tqdm=False)
        assert good.error is None and good.outputs[0].finish_reason == "stop"
        assert re.fullmatch(REGEX, good.outputs[0].text), good.outputs[0].text
        assert "invalid regex" in bad.error
    finally:
        llm.llm_engine.shutdown()


def test_start_and_stop_profile_profile_the_cores_steps(llama_dir, tmp_path):
    from test_profiler import step_ranges

    from octavo import LLM

    # In order (one step per token: the counts below); asynchronous scheduling adds a last read-back step.
    llm = LLM(model=str(llama_dir), device="cpu", num_gpu_blocks_override=64, enable_multiprocessing=True,
              async_scheduling=False,
              profiler_config={"profiler": "torch", "torch_profiler_dir": str(tmp_path / "unlimited")})
    limited = LLM(model=str(llama_dir), device="cpu", num_gpu_blocks_override=64, enable_multiprocessing=True,
                  async_scheduling=False,
                  profiler_config={"profiler": "torch", "torch_profiler_dir": str(tmp_path / "limited"),
                                   "delay_iterations": 2, "max_iterations": 3})
    try:
        params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        llm.start_profile()
        llm.generate(["a b c"], params, use_tqdm=False)
        assert llm.llm_engine.profiler.traces == []  # unlimited: still recording
        llm.stop_profile()  # the core is idle: the trace is written before stop_profile returns
        (trace,) = llm.llm_engine.profiler.traces
        assert trace.parent == tmp_path / "unlimited" and step_ranges(trace) == 6
        limited.start_profile()
        limited.generate(["a b c"], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True), use_tqdm=False)
        (trace,) = limited.llm_engine.profiler.traces  # ended by its limit in the core, reported with the steps
        assert step_ranges(trace) == 3
    finally:
        llm.llm_engine.shutdown()
        limited.llm_engine.shutdown()
