"""Llama, Mistral and Qwen2 with every op on its Triton kernel (interpreted on the CPU, compiled on
CUDA) and the projections of up to 16 rows on gemv.py, against the same engine on the torch
references: greedy tokens equal. The model tests run the references alone on the CPU, so this is
where the decoder layer's fused norm/activation projections meet the kernels before a GPU does."""

from __future__ import annotations

import pytest

from octavo import SamplingParams
from octavo.kernels import ops

from conftest import ON_CUDA

PROMPTS = ["Machine learning is", "The quick brown fox", "def add(a, b):"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def greedy(model_dir, device: str) -> list[list[int]]:
    from octavo import LLM

    llm = LLM(model=str(model_dir), dtype="float32", device=device, num_gpu_blocks=64, enforce_eager=True)
    try:
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_greedy_tokens_through_the_kernels_match_the_references(kernels, family_dirs, family, monkeypatch):
    model_dir = family_dirs[family]
    if ON_CUDA:  # the engine is on the GPU: Triton everywhere already, cuBLAS for the projections
        reference = greedy(model_dir, "cuda")
        monkeypatch.setattr(ops, "GEMV_MAX_ROWS", 16)
        assert greedy(model_dir, "cuda") == reference
        return
    reference = greedy(model_dir, "cpu")
    calls = []
    real_gemv = ops.use_gemv
    monkeypatch.setattr(ops, "use_triton", lambda tensor: True)
    monkeypatch.setattr(ops, "GEMV_MAX_ROWS", 16)
    monkeypatch.setattr(ops, "use_gemv", lambda x: calls.append(x.shape[0]) or real_gemv(x))
    assert greedy(model_dir, "cpu") == reference
    # The decode steps' three rows went to gemv.py; the prompts' rows (more than 16) did not.
    assert 3 in calls and any(rows > 16 for rows in calls)
