"""On a CUDA device only (skipped elsewhere): what the CPU tests cannot show. The rest of the suite
runs on a GPU too (the engine then uses CUDA, its Triton kernels and CUDA graphs); bench/README.md
says which folders to run there."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

import pytest
import torch

from hf_reference import forget_models, hf_model
from octavo import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CONFIGS = Path(__file__).resolve().parents[2] / "bench" / "configs"


def test_bf16_logprobs_are_close_to_fp32_transformers(llama_dir):
    """The engine in bf16 (Triton kernels, CUDA graphs): its top-5 next-token logprobs within 0.1
    of transformers' fp32 ones on the device."""
    llm = LLM(model=str(llama_dir), dtype="bfloat16", num_gpu_blocks_override=128)
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=5)
    out = llm.generate("Paged attention stores keys and values in fixed-size blocks", params, use_tqdm=False)[0]
    with torch.no_grad():
        logits = hf_model(llama_dir, "cuda")(torch.tensor([out.prompt_token_ids], device="cuda")).logits[0, -1]
    reference = torch.log_softmax(logits.float(), -1)
    forget_models()
    worst = max(abs(lp.logprob - reference[token].item()) for token, lp in out.outputs[0].logprobs[0].items())
    assert worst < 0.1


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_graph_replay_matches_eager_on_a_llama_3_1_8b_shape(tmp_path, monkeypatch, fused):
    """A dummy llama-3.1-8b in bf16, eight requests decoding: each step's hidden states from the
    CUDA graph match an eager forward of the same inputs with a block table as wide as the graph's
    (the split-K partitioning follows the table's width, so a narrower one rounds differently; and
    dummy weights give flat logits, so comparing tokens would say little). `fused`: the decode
    steps' projections on gemv.py and their rotary inside the decode kernel, captured too."""
    if fused:
        from octavo.kernels import ops

        monkeypatch.setattr(ops, "GEMV_MAX_ROWS", 8)
        monkeypatch.setattr(ops, "FUSED_DECODE_ROTARY", True)
    gc.collect()
    torch.cuda.empty_cache()
    (tmp_path / "config.json").write_text(json.dumps(json.loads((CONFIGS / "llama-3.1-8b.json").read_text())))
    llm = LLM(model=str(tmp_path), load_format="dummy", dtype="bfloat16", max_model_len=2048, max_num_seqs=64,
              gpu_memory_utilization=0.85)
    engine = llm.llm_engine
    runner = engine.model_runner
    params = SamplingParams(temperature=0.0, max_tokens=1000, ignore_eos=True, detokenize=False)
    for i in range(8):
        engine.add_request(str(i), {"prompt_token_ids": list(range(100 + i, 100 + i + 37 * (i + 1)))}, params)
    worst, replayed = 0.0, 0
    for _ in range(6):
        sched = engine.scheduler.schedule()
        inputs = runner.prepare(sched)
        with torch.inference_mode():
            hidden = runner.forward(inputs).float().clone()  # a graph replay for decode steps
            if inputs.meta.decode_only:
                # Eager on the same inputs (the KV write is idempotent: same slots, same values).
                wide = runner.graph_buffers.block_tables.shape[1]
                tables = torch.nn.functional.pad(inputs.meta.block_tables,
                                                 (0, wide - inputs.meta.block_tables.shape[1]))
                meta = dataclasses.replace(inputs.meta, block_tables=tables)
                eager = runner.model(inputs.input_ids, inputs.positions, meta).float()
                worst = max(worst, ((hidden - eager).norm() / eager.norm()).item())
                replayed += 1
        for item in sched.scheduled:  # advance as the engine would; the sampled token does not matter
            item.request.num_computed_tokens += item.num_new_tokens
            if item.completes_sequence:
                item.request.append_token(1)
    engine.abort_request([str(i) for i in range(8)])
    assert replayed and worst < 1e-3


def test_a_lone_prefill_replays_a_one_request_graph_with_eager_outputs(llama_dir):
    """Prompts of 5 to 100 tokens, one request at a time: each prefill replays the smallest
    one-request prefill graph that holds it (padded), and the greedy tokens equal an eager engine's."""
    prompts = [list(range(7, 7 + n)) for n in (5, 13, 40, 100)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    def run(enforce_eager: bool) -> tuple[list[list[int]], list[tuple[int, int]]]:
        # No prefix caching: every prompt is prefilled whole (they share a prefix).
        llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks_override=128, enforce_eager=enforce_eager,
                  enable_prefix_caching=False)
        runner = llm.llm_engine.model_runner
        replayed: list[tuple[int, int]] = []
        replay = runner.graph_buffers.replay if runner.graph_buffers is not None else None

        def counting(entry, *args):
            replayed.append((entry.size, entry.query_len))
            return replay(entry, *args)

        if replay is not None:
            runner.graph_buffers.replay = counting
        tokens = [llm.generate({"prompt_token_ids": p}, params, use_tqdm=False)[0].outputs[0].token_ids
                  for p in prompts]
        del llm
        gc.collect()
        return tokens, replayed

    graphed, replayed = run(enforce_eager=False)
    eager, _ = run(enforce_eager=True)
    assert [(1, q) for q in (16, 16, 64, 128)] == [key for key in replayed if key[1] > 1]
    assert graphed == eager


def test_piecewise_graphs_give_the_eager_tokens_on_mixed_steps(llama_dir):
    """cudagraph_mode FULL_AND_PIECEWISE: steps that no whole-step graph holds (prefills beside
    decodes) replay the piecewise graphs, and the greedy tokens equal an eager engine's."""
    prompts = [list(range(7 + i, 7 + i + n)) for i, n in enumerate((5, 300, 40, 100, 17, 260))]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    def run(piecewise: bool) -> tuple[list[list[int]], int]:
        llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks_override=256, max_num_batched_tokens=512,
                  enforce_eager=not piecewise, enable_prefix_caching=False,
                  compilation_config={"cudagraph_mode": "FULL_AND_PIECEWISE"})
        runner = llm.llm_engine.model_runner
        runs = []
        if piecewise:
            replay = runner.piecewise.run
            runner.piecewise.run = lambda tokens, *args: runs.append(tokens) or replay(tokens, *args)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        del llm
        gc.collect()
        return [o.outputs[0].token_ids for o in outputs], len(runs)

    graphed, runs = run(piecewise=True)
    eager, _ = run(piecewise=False)
    assert runs > 0
    assert graphed == eager
