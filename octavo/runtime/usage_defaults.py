"""Batch-size defaults by how the engine is used (vLLM chooses them per usage context too).

The offline LLM class is judged by the throughput of a whole batch of prompts. On a large GPU a
wider batch spreads each step's weight reads over more tokens. Measured on an H200 (llama-3.1-8b,
dummy bf16 weights, the 1000-request workload, asynchronous scheduling, 2026-12-06): 9,177 output
tok/s at 256 sequences, 9,500 at 512, 10,031 at 1024, all at 16,384 tokens a step
(bench/results/2026-12-06-overlap-h200.md). The server keeps 256 sequences: its batch is its
clients' concurrency, and no served measurement here went past 64 of them.

On an H100 the 1024 sequences' prompts fill the KV cache, and their growth then preempted 146
requests a run, each recomputed. Admission that keeps blocks for half of the running requests'
remaining max_tokens (kv_reserve_ratio 0.5) ran the same workload with none: 9,384 / 9,303 / 9,318
output tok/s against 8,627 / 8,672 at 0 (ratio 0.25: 9,053 and 51 preemptions; 0.75: 9,329; 1: 9,159;
max_num_seqs 512 at 0: 9,223), H100 80GB, 2026-12-07 (bench/results/2026-12-07-kv-reserve-h100.md).
The server keeps 0 (unmeasured there, and its requests often leave max_tokens unset).

`octavo serve` runs its engine core in a process of its own unless a flag or the environment says
otherwise (vLLM's server does too): the core's steps then never hold the GIL that the event loop
needs to take requests in and stream. Measured on an H100 (llama-3.1-8b, dummy bf16 weights, 128
in / 128 out, paired A/B over 4 rounds, 2026-12-07): TTFT p50 0.869x [0.772-0.977] at concurrency 64
and 0.908x [0.819-1.005] at 16, output tok/s 1.007x [1.001-1.014] at 16 and 0.989x [0.956-1.023] at
64 (bench/results/2026-12-07-frontend-mp-h100.md). The LLM class and AsyncLLMEngine stay in process
unless asked (not measured there).
"""

from __future__ import annotations

import torch

from octavo.runtime.config import EngineArgs
from octavo.runtime.front_engine import multiprocessing_from_env

LARGE_GPU_GIB = 70  # vLLM's line for "H100-class" defaults
OFFLINE_LARGE_GPU = {"max_num_seqs": 1024, "max_num_batched_tokens": 16384, "kv_reserve_ratio": 0.5}


def offline_defaults(device_type: str, memory_gib: float | None) -> dict[str, float]:
    """The LLM class's batch limits and admission reserve on a device of this type and memory (empty:
    the engine's own)."""
    if device_type == "cuda" and memory_gib is not None and memory_gib >= LARGE_GPU_GIB:
        return dict(OFFLINE_LARGE_GPU)
    return {}


def apply_offline_defaults(engine_args: EngineArgs) -> None:
    """Fill in the limits the caller left unset with the offline defaults for its device."""
    device = engine_args.resolved_device()
    memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    for name, value in offline_defaults(device.type, memory_gib).items():
        if getattr(engine_args, name) is None:
            setattr(engine_args, name, value)


def apply_server_defaults(engine_args: EngineArgs, environ: dict[str, str] | None = None) -> None:
    """`octavo serve`: the engine core in its own process, unless the flags or the environment
    ($OCTAVO_ENABLE_MULTIPROCESSING, $VLLM_ENABLE_V1_MULTIPROCESSING) choose."""
    if engine_args.enable_multiprocessing is None and multiprocessing_from_env(environ) is None:
        engine_args.enable_multiprocessing = True
