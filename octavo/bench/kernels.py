"""`octavo bench kernels` (PROTOCOL workload 5): the paged attention kernels against the device's
ceilings measured in the same run (roofline.py), CUDA only: decode in GB/s over rotating block
tables (L2 defeated), prefill in TFLOP/s. bench/README.md ("kernels") says more. Every output is
first checked against the torch reference; a mismatch fails the run."""

from __future__ import annotations

import math
from typing import Any

from octavo.bench import roofline
from octavo.bench.env import environment

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16
BF16_TOLERANCE = 2e-2  # relative L2 error


def relative_error(out: Any, ref: Any) -> float:
    import torch

    if not torch.isfinite(out).all():
        return math.inf
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def graph_ms(fns: list, replays: int, device: Any) -> float:
    """Median ms of one call, from CUDA-graph replays of all `fns` back to back."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and tune outside the capture
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    return roofline.time_ms(graph.replay, device, replays) / len(fns)


def decode_point(k_pool: Any, v_pool: Any, batch: int, context: int) -> dict:
    import torch

    from octavo.kernels.attention import paged_decode_attention
    from octavo.kernels.attention_ref import paged_decode_attention_ref

    device, scale = k_pool.device, HEAD_DIM ** -0.5
    blocks = -(-context // BLOCK)
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * k_pool.element_size()
    moved = kv_bytes + 2 * batch * HEADS * HEAD_DIM * k_pool.element_size()
    sets = max(1, min(64, math.ceil(400e6 / kv_bytes)))  # 8x a 50 MB L2
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    tables = [torch.randperm(k_pool.shape[0], device=device)[: batch * blocks].view(batch, blocks).to(torch.int32)
              for _ in range(sets)]
    queries = [torch.randn(batch, HEADS, HEAD_DIM, device=device, dtype=k_pool.dtype) for _ in range(sets)]
    error = None
    if batch <= 8:
        out = paged_decode_attention(queries[0], k_pool, v_pool, tables[0], seq_lens, scale)
        error = relative_error(out, paged_decode_attention_ref(queries[0], k_pool, v_pool, tables[0], seq_lens, scale))
    fns = [lambda q=q, t=t: paged_decode_attention(q, k_pool, v_pool, t, seq_lens, scale)
           for q, t in zip(queries, tables)]
    ms = graph_ms(fns, 20, device)
    return {"batch": batch, "context": context, "us": 1e3 * ms, "gbps": moved / ms / 1e6, "rel_err": error}


def prefill_point(seq_len: int, device: Any) -> dict:
    import torch
    from triton.testing import do_bench

    from octavo.kernels.attention import paged_attention
    from octavo.kernels.attention_ref import paged_attention_ref

    # One fresh prompt, its blocks scattered over a random pool.
    blocks = -(-seq_len // BLOCK)
    k = torch.randn(blocks + 1, BLOCK, KV_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    table = torch.randperm(blocks + 1, device=device)[:blocks].view(1, blocks).to(torch.int32)
    query = torch.randn(seq_len, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    starts = torch.tensor([0, seq_len], dtype=torch.int32, device=device)
    lens = torch.tensor([seq_len], dtype=torch.int32, device=device)
    inputs = [query, k, torch.randn_like(k), table, starts, lens, HEAD_DIM ** -0.5]
    out = paged_attention(*inputs)  # autotunes on its first call
    error = relative_error(out, paged_attention_ref(*inputs))
    ms = do_bench(lambda: paged_attention(*inputs), warmup=25, rep=200, return_mode="median")
    flops = 4 * HEAD_DIM * HEADS * seq_len * (seq_len + 1) // 2
    return {"seq_len": seq_len, "ms": ms, "tflops": flops / ms / 1e9, "rel_err": error}


def benchmark(args: Any, save_partial) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("octavo bench kernels times the Triton kernels: it needs a CUDA device")
    device = torch.device(args.device)
    result: dict = {"kind": "kernels", "tag": args.tag, "env": environment(args.device, args),
                    "model": {"name": "attention"}, "roofline": roofline.measure(device), "decode": [], "prefill": []}
    contexts, batches = [1024, 4096, 16384], [1, 8, 32, 64, 128, 256]
    tokens = max(contexts) * max(batches) + 64 * 1024
    k_pool = torch.randn(tokens // BLOCK, BLOCK, KV_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    v_pool = torch.randn_like(k_pool)
    for context in contexts:
        for batch in batches:
            row = decode_point(k_pool, v_pool, batch, context)
            row["of_copy"] = row["gbps"] / result["roofline"]["copy_bandwidth_gbps"]
            result["decode"].append(row)
            save_partial(result)
    del k_pool, v_pool
    torch.cuda.empty_cache()
    for seq_len in (1024, 4096, 8192):
        row = prefill_point(seq_len, device)
        row["of_matmul"] = row["tflops"] / result["roofline"]["matmul_tflops"]
        result["prefill"].append(row)
        save_partial(result)
    checked = [r["rel_err"] for r in result["decode"] + result["prefill"] if r["rel_err"] is not None]
    result["failed"] = any(not error < BF16_TOLERANCE for error in checked)
    return result


def markdown(result: dict) -> str:
    from octavo.bench.report import header, table

    def error(row: dict) -> str:
        return "—" if row["rel_err"] is None else f"{row['rel_err']:.1e}" + (
            "" if row["rel_err"] < BF16_TOLERANCE else " FAIL")

    text = header(result, "Attention kernels (32 q / 8 KV heads, head_dim 128, bf16)")
    text += "Paged decode: the bytes a step must move / its time (CUDA-graph replays, L2 defeated).\n\n"
    text += table(["context", "batch", "us", "GB/s", "of copy bandwidth", "rel. error vs reference"],
                  [[str(r["context"]), str(r["batch"]), f"{r['us']:.1f}", f"{r['gbps']:,.0f}", f"{r['of_copy']:.0%}",
                    error(r)] for r in result["decode"]])
    text += "\nPaged prefill, causal, one sequence, no cached prefix: visible-pair FLOPs / time.\n\n"
    text += table(["tokens", "ms", "TFLOP/s", "of matmul peak", "rel. error vs reference"],
                  [[str(r["seq_len"]), f"{r['ms']:.3f}", f"{r['tflops']:.0f}", f"{r['of_matmul']:.0%}", error(r)]
                   for r in result["prefill"]])
    return text + (f"\n**A kernel's output differs from its reference beyond {BF16_TOLERANCE}.**\n"
                   if result.get("failed") else "")
