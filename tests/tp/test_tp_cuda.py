"""Tensor parallel on GPUs (NCCL): skipped without two. Run on the device (nvidia-h200-x2):

    python -m pytest -q tests/tp/test_tp_cuda.py

CUDA graphs captured on both ranks in lockstep give the same greedy tokens as eager and as one
GPU; a worker killed mid-generation makes the engine fail in bounded time (the NCCL communicators
are aborted) instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from octavo import SamplingParams
from tp_helpers import make_llm, token_ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs two GPUs")

PROMPTS = ["Machine learning is", "The quick brown fox jumps over the lazy dog. Pack my box with",
           "Paged", "def add(a, b):"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_graphs_and_eager_match_one_gpu(family_dirs, family):
    model_dir = family_dirs[family]
    with make_llm(model_dir, 1) as llm:
        single = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    for eager in (False, True):
        with make_llm(model_dir, 2, enforce_eager=eager, max_num_seqs=8) as llm:
            assert bool(llm.llm_engine.model_runner.graphs) == (not eager)
            assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == single


KILL_SCRIPT = """
import asyncio, os, signal, sys, threading, time
from octavo import EngineArgs, SamplingParams
from octavo.runtime.async_engine import AsyncLLMEngine, EngineDeadError
from octavo.runtime.engine import LLMEngine

engine = LLMEngine.from_engine_args(EngineArgs(model=sys.argv[1], dtype="float32", tensor_parallel_size=2,
                                               max_num_seqs=8))
async_engine = AsyncLLMEngine(engine)
worker = engine.workers.processes[1]
killed = []

async def main():
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    try:
        async for out in async_engine.generate("Machine learning is", params, "a"):
            if len(out.outputs[0].token_ids) == 5 and not killed:
                threading.Timer(0.01, lambda: (killed.append(time.monotonic()), os.kill(worker.pid, signal.SIGKILL))).start()
    except EngineDeadError as exc:
        print("dead after", time.monotonic() - killed[0], exc)
        return
    raise SystemExit("the generation finished although the worker was killed")

asyncio.run(asyncio.wait_for(main(), timeout=120))
print("ok")
os._exit(0)  # the aborted communicators make a clean interpreter exit pointless
"""


def test_worker_death_aborts_nccl(llama_dir):
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(llama_dir)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ))
    assert result.returncode == 0 and "ok" in result.stdout, (result.stdout[-2000:], result.stderr[-4000:])
