"""Llama, Mistral and Qwen2 with every op on its Triton kernel (interpreted on the CPU, compiled on
CUDA), the projections of up to 16 rows on gemv.py and the decode steps' rotary embedding inside
the decode kernel, against the same engine without them (on the torch references, on a CPU):
greedy tokens equal. The model tests run the references alone on the CPU, so this is where the
decoder layer's fused paths meet the kernels before a GPU does."""

from __future__ import annotations

import os

import pytest

from octavo import SamplingParams
from octavo.kernels import ops

ON_CUDA = os.environ.get("OCTAVO_KERNEL_TESTS_DEVICE") == "cuda"  # as conftest.py reads it

PROMPTS = ["Machine learning is", "The quick brown fox", "def add(a, b):"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def greedy(model_dir, device: str) -> list[list[int]]:
    from octavo import LLM

    llm = LLM(model=str(model_dir), dtype="float32", device=device, num_gpu_blocks=64, enforce_eager=True)
    try:
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()


def fuse(monkeypatch) -> list:
    """Turn both fused paths on; returns the row counts the engine's projections asked about."""
    calls = []
    real_gemv = ops.use_gemv
    monkeypatch.setattr(ops, "GEMV_MAX_ROWS", 16)
    monkeypatch.setattr(ops, "FUSED_DECODE_ROTARY", True)
    monkeypatch.setattr(ops, "use_gemv", lambda x: calls.append(x.shape[0]) or real_gemv(x))
    return calls


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_greedy_tokens_through_the_kernels_match_the_references(kernels, family_dirs, family, monkeypatch):
    model_dir = family_dirs[family]
    if ON_CUDA:  # the engine is on the GPU: Triton everywhere already, cuBLAS for the projections
        reference = greedy(model_dir, "cuda")
        fuse(monkeypatch)
        assert greedy(model_dir, "cuda") == reference
        return
    reference = greedy(model_dir, "cpu")
    monkeypatch.setattr(ops, "use_triton", lambda tensor: True)
    calls = fuse(monkeypatch)
    fused_decodes = []
    real_decode = ops.paged_decode_attention_rotary
    monkeypatch.setattr(ops, "paged_decode_attention_rotary",
                        lambda *args, **kwargs: fused_decodes.append(1) or real_decode(*args, **kwargs))
    assert greedy(model_dir, "cpu") == reference
    # The decode steps' three rows went to gemv.py; the prompts' rows (more than 16) did not; the
    # decode steps' attention rotated and stored in the decode kernel.
    assert 3 in calls and any(rows > 16 for rows in calls)
    assert fused_decodes
