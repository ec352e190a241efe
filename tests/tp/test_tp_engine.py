"""The tensor-parallel engine around the math: dummy weights, a speculative pair, the errors that
name their fix before any process starts, and a worker that dies mid-generation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from octavo import EngineArgs, SamplingParams
from octavo.runtime.distributed import WorkerDiedError
from tiny_models import controlled_pair
from tp_helpers import make_llm, token_ids

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
PROMPTS = ["Machine learning is", "The quick brown fox jumps over", "def add(a, b):"]


DUMMY_SCRIPT = """
import gc, sys
import torch
from octavo import LLM, SamplingParams

llm = LLM(model=sys.argv[1], tensor_parallel_size=2, load_format="dummy", dtype="float32", num_gpu_blocks=64)
model = llm.llm_engine.model_runner.model
layer = model.model.layers[0]
# Each rank holds its shard: 2 of 4 query heads, 1 of 2 KV heads, half the MLP and vocabulary.
assert layer.self_attn.qkv_proj.weight.shape == (4 * 16, 64)
assert layer.mlp.gate_up_proj.weight.shape == (128, 64)
assert layer.mlp.down_proj.weight.shape == (64, 64)
assert model.lm_head.weight.shape == (192, 64)
assert llm.llm_engine.model_runner.kv_shape[1] == 1
outputs = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}, {"prompt_token_ids": [9] * 20}],
                       SamplingParams(max_tokens=5, ignore_eos=True), use_tqdm=False)
assert [len(o.outputs[0].token_ids) for o in outputs] == [5, 5]
assert all(0 <= t < 384 for o in outputs for t in o.outputs[0].token_ids)
worker = llm.llm_engine.workers.processes[1]
del llm, model, layer, outputs
gc.collect()
worker.join(timeout=10)
assert not worker.is_alive(), "the dropped engine's worker is still running"
assert not torch.distributed.is_initialized(), "the dropped engine's process group is still there"
print("ok")
"""


def test_dummy_weights_tp2_smoke_and_drop(tmp_path, llama_dir):
    """Random weights from config.json alone, sharded per rank; then the engine is dropped without
    shutdown(): its worker stops and the process group is freed for the next engine. (In a fresh
    interpreter: the tests' leak check keeps every engine they build alive.)"""
    (tmp_path / "config.json").write_text((llama_dir / "config.json").read_text())
    result = subprocess.run([sys.executable, "-c", DUMMY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("draft_tp", [1, 2])
def test_speculative_pair_under_tp(tmp_path_factory, llama_dir, draft_tp):
    """Target at TP 2, draft at TP 1 (on rank 0 alone) or 2: greedy output is the target's."""
    target, draft = controlled_pair(llama_dir, tmp_path_factory.mktemp("pair") / "pair", 1, 0.12)
    with make_llm(target, 1) as llm:
        alone = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    # Fixed k: every step drafts k tokens and verifies them.
    with make_llm(target, 2, speculative_config={"model": str(draft), "num_speculative_tokens": 3, "adaptive": False,
                                                 "draft_tensor_parallel_size": draft_tp}) as llm:
        assert llm.llm_engine.proposer.runner.parallel.group.size == draft_tp
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        assert llm.llm_engine.stats.spec_accepted_tokens > 0
    assert token_ids(outputs) == token_ids(alone)


def test_tp_and_a_draft_under_the_engine_core_process(tmp_path_factory, llama_dir):
    """The server's default: the engine core in a process of its own, which starts the tensor-parallel
    workers and holds the draft; greedy output is the target's alone, in process."""
    target, draft = controlled_pair(llama_dir, tmp_path_factory.mktemp("core-pair") / "pair", 1, 0.12)
    with make_llm(target, 1) as llm:
        alone = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    with make_llm(target, 2, enable_multiprocessing=True,
                  speculative_config={"model": str(draft), "num_speculative_tokens": 3, "adaptive": False}) as llm:
        assert type(llm.llm_engine).__name__ == "FrontEngine"
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        assert llm.llm_engine.stats.spec_accepted_tokens > 0
    assert token_ids(outputs) == token_ids(alone)


def test_errors_before_any_process_starts(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="num_attention_heads .4. is not divisible by tensor_parallel_size .3."):
        EngineArgs(model=str(llama_dir), tensor_parallel_size=3).create_config()
    with pytest.raises(ValueError, match="speculative_draft_tensor_parallel_size .4. must be between 1 and"):
        EngineArgs(model=str(llama_dir), tensor_parallel_size=2, speculative_model=str(llama_dir),
                   num_speculative_tokens=2, speculative_draft_tensor_parallel_size=4).create_config()
    config = (llama_dir / "config.json").read_text().replace('"LlamaForCausalLM"', '"GPT2LMHeadModel"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="GPT2LMHeadModel .model. does not support tensor_parallel_size > 1"):
        EngineArgs(model=str(tmp_path), load_format="dummy", tensor_parallel_size=2).create_config()


async def test_worker_death_fails_loudly(llama_dir):
    """SIGKILL the worker while requests are generating: every stream gets an error within
    seconds, /health goes red (check_health raises), and the engine refuses further steps."""
    from octavo.runtime.async_engine import AsyncLLMEngine, EngineDeadError
    from octavo.runtime.engine import LLMEngine

    engine = LLMEngine.from_engine_args(EngineArgs(model=str(llama_dir), dtype="float32", num_gpu_blocks_override=64,
                                                   tensor_parallel_size=2))
    engine._leak_check_done = True  # its steps were cut off mid-way: nothing to check
    async_engine = AsyncLLMEngine(engine)
    worker = engine.workers.processes[1]
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    killed_at: list[float] = []

    async def consume(request_id: str, prompt: str) -> BaseException | None:
        try:
            async for output in async_engine.generate(prompt, params, request_id):
                if len(output.outputs[0].token_ids) == 3 and not killed_at and request_id == "a":
                    # From another thread, so the engine is inside a step when the worker dies.
                    threading.Timer(0.05, lambda: (killed_at.append(time.monotonic()),
                                                   os.kill(worker.pid, signal.SIGKILL))).start()
        except BaseException as exc:  # noqa: BLE001 - the error is what the test is about
            return exc
        return None

    try:
        errors = await asyncio.wait_for(asyncio.gather(consume("a", PROMPTS[0]), consume("b", PROMPTS[1])),
                                        timeout=60)
        assert killed_at, "the worker was never killed"
        assert time.monotonic() - killed_at[0] < 30
        assert all(isinstance(e, EngineDeadError) for e in errors), errors
        assert "worker rank 1" in str(errors[0]) and "exited with code -9" in str(errors[0])
        with pytest.raises(EngineDeadError):
            await async_engine.check_health()
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="restart it"):
            engine.add_request("c", PROMPTS[2], GREEDY)
            engine.step()
        assert time.monotonic() - start < 5
    finally:
        async_engine.shutdown(timeout=5)
        engine.shutdown()
