"""Batch-size defaults by how the engine is used (vLLM chooses them per usage context too).

The offline LLM class is judged by the throughput of a whole batch of prompts. On a large GPU a
wider batch spreads each step's weight reads over more tokens. Measured on an H200 (llama-3.1-8b,
dummy bf16 weights, the 1000-request workload, asynchronous scheduling, 2026-12-06): 9,177 output
tok/s at 256 sequences, 9,500 at 512, 10,031 at 1024, all at 16,384 tokens a step
(bench/results/2026-12-06-overlap-h200.md). The server keeps 256 sequences: its batch is its
clients' concurrency, and no served measurement here went past 64 of them.
"""

from __future__ import annotations

import torch

from octavo.runtime.config import EngineArgs

LARGE_GPU_GIB = 70  # vLLM's line for "H100-class" defaults
OFFLINE_LARGE_GPU = {"max_num_seqs": 1024, "max_num_batched_tokens": 16384}


def offline_defaults(device_type: str, memory_gib: float | None) -> dict[str, int]:
    """The LLM class's batch limits on a device of this type and memory (empty: the engine's own)."""
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
