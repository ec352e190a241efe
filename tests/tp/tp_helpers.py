"""Helpers for the tensor-parallel tests."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def make_llm(model_dir, tensor_parallel_size: int = 1, **kwargs):
    """An LLM whose worker processes are stopped on the way out, whatever happens."""
    from octavo import LLM

    kwargs.setdefault("dtype", "float32")
    kwargs.setdefault("num_gpu_blocks", 256)
    llm = LLM(model=str(model_dir), tensor_parallel_size=tensor_parallel_size, **kwargs)
    try:
        yield llm
    finally:
        llm.llm_engine.shutdown()


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]
