"""`octavo bench kernels` (PROTOCOL workload 5): the paged attention kernels against the device's
ceilings measured in the same run (roofline.py), CUDA only: decode in GB/s over rotating block
tables (L2 defeated), prefill in TFLOP/s; a mixed prefill+decode step's attention three ways; the
host microseconds a call of each kernel entry point costs. bench/README.md ("kernels") says why.
Every output is first checked against the torch reference; a mismatch fails the run."""

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
    from triton.testing import do_bench

    from octavo.kernels.attention import paged_attention
    from octavo.kernels.attention_ref import paged_attention_ref

    batch = mixed_batch([], [(0, seq_len)], device)  # one fresh prompt
    inputs = [batch[key] for key in ("query", "k", "v", "table", "starts", "seq_lens")] + [HEAD_DIM ** -0.5]
    out = paged_attention(*inputs)  # autotunes on its first call
    error = relative_error(out, paged_attention_ref(*inputs))
    ms = do_bench(lambda: paged_attention(*inputs), warmup=25, rep=200, return_mode="median")
    flops = 4 * HEAD_DIM * HEADS * seq_len * (seq_len + 1) // 2
    return {"seq_len": seq_len, "ms": ms, "tflops": flops / ms / 1e9, "rel_err": error}


def mixed_batch(decode_contexts: list[int], prefills: list[tuple[int, int]], device: Any) -> dict:
    """One step's attention inputs: decode rows first (as the scheduler orders running requests),
    then prefill chunks (context, new tokens), their blocks scattered over a random pool."""
    import torch

    rows = [(c - 1, 1) for c in decode_contexts] + prefills
    seq = [c + n for c, n in rows]
    blocks = [-(-s // BLOCK) for s in seq]
    pool = torch.randperm(sum(blocks) + 8, device=device)
    table = torch.zeros(len(rows), max(blocks), dtype=torch.int32, device=device)
    at = 0
    for i, b in enumerate(blocks):
        table[i, :b], at = pool[at: at + b], at + b
    k = torch.randn(sum(blocks) + 8, BLOCK, KV_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    starts = torch.tensor([0] + [n for _, n in rows], device=device).cumsum(0).to(torch.int32)
    return {"query": torch.randn(int(starts[-1]), HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16),
            "k": k, "v": torch.randn_like(k), "table": table, "starts": starts,
            "seq_lens": torch.tensor(seq, dtype=torch.int32, device=device), "decodes": len(decode_contexts),
            "max_q": max(n for _, n in rows), "max_k": max(seq)}


def mixed_point(name: str, batch: dict) -> dict:
    import torch
    from triton.testing import do_bench

    from octavo.kernels.attention import paged_attention, paged_decode_attention
    from octavo.kernels.attention_ref import paged_attention_ref

    q, k, v, table, starts, lens, d = (batch[key] for key in ("query", "k", "v", "table", "starts", "seq_lens",
                                                              "decodes"))
    scale = HEAD_DIM ** -0.5

    def one_call():
        return paged_attention(q, k, v, table, starts, lens, scale)

    def split():
        out = torch.empty_like(q)
        out[:d] = paged_decode_attention(q[:d], k, v, table[:d], lens[:d], scale)
        out[d:] = paged_attention(q[d:], k, v, table[d:], starts[d:] - starts[d], lens[d:], scale)
        return out

    variants = {"one_call": one_call, **({"split": split} if 0 < d < lens.shape[0] else {})}
    row: dict = {"case": name, "tokens": q.shape[0], "requests": lens.shape[0], "decodes": d}
    try:
        from torch.nn.attention.varlen import varlen_attn

        def flash():
            return varlen_attn(q, k, v, starts, None, batch["max_q"], batch["max_k"], scale=scale,
                               window_size=(-1, 0), enable_gqa=True, seqused_k=lens, block_table=table)

        flash()
        variants["torch_flash"] = flash
    except Exception as exc:  # an older torch, or its constraints (page size, dtype) refuse our cache
        row["torch_flash_unavailable"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    reference = paged_attention_ref(q, k, v, table, starts, lens, scale)
    for key, fn in variants.items():
        row[f"{key}_us"] = 1e3 * do_bench(fn, warmup=20, rep=100, return_mode="median")
        row[f"{key}_rel_err"] = relative_error(fn(), reference)
    return row


def launch_costs(device: Any, calls: int = 200) -> dict:
    """Host microseconds per call of each kernel entry point (octavo.kernels.ops, as the layers call
    them) on shapes too small for the GPU to fall behind: the wall time of `calls` back-to-back
    calls before the synchronisation, divided by `calls`. torch.add is the anchor."""
    import time

    import torch

    from octavo.kernels import ops

    def tensor(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16)

    x, weight, residual = tensor(8, 4096), tensor(4096), tensor(8, 4096)
    q, key, val = tensor(8, HEADS, HEAD_DIM), tensor(8, KV_HEADS, HEAD_DIM), tensor(8, KV_HEADS, HEAD_DIM)
    cache = tensor(64, BLOCK, KV_HEADS, HEAD_DIM)
    cos_sin = torch.randn(4096, HEAD_DIM, device=device)
    positions = torch.arange(8, device=device)
    table = torch.arange(64, dtype=torch.int32, device=device).view(8, 8)
    lens = torch.full((8,), 100, dtype=torch.int32, device=device)
    starts = torch.arange(9, dtype=torch.int32, device=device) * 2
    gate_up, two_each = tensor(8, 2 * 14336), tensor(16, HEADS, HEAD_DIM)
    entries = {
        "torch.add (anchor)": lambda: torch.add(x, residual),
        "rms_norm + residual": lambda: ops.rms_norm(x, weight, 1e-5, residual),
        "rotary": lambda: ops.rotary(q, key, positions, cos_sin),
        "write_kv_cache": lambda: ops.write_kv_cache(key, val, cache, cache, positions),
        "rotary_and_write_kv (both above, fused)": lambda: ops.rotary_and_write_kv(
            q, key, val, positions, cos_sin, cache, cache, positions),
        "silu_and_mul": lambda: ops.silu_and_mul(gate_up),
        "paged_decode_attention": lambda: ops.paged_decode_attention(q, cache, cache, table, lens, 0.1),
        "paged_attention (2 tokens a request)": lambda: ops.paged_attention(two_each, cache, cache, table, starts,
                                                                            lens, 0.1),
    }
    costs = {}
    for name, fn in entries.items():
        for _ in range(20):  # compile, autotune
            fn()
        torch.cuda.synchronize(device)
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        costs[name] = (time.perf_counter() - began) / calls * 1e6
        torch.cuda.synchronize(device)
    return costs


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
    generator = torch.Generator().manual_seed(0)

    def contexts_of(n: int) -> list[int]:  # the offline workload's decode contexts: 256..1152 tokens
        return torch.randint(256, 1152, (n,), generator=generator).tolist()

    result["mixed"] = []
    for name, decodes, prefills in (("250 decodes + a 2,000-token prompt", 250, [(0, 2000)]),
                                    ("200 decodes + 4 fresh 1,024-token prompts + 2 chunks of 512 after 512", 200,
                                     [(0, 1024)] * 4 + [(512, 512)] * 2),
                                    ("8 fresh 2,048-token prompts", 0, [(0, 2048)] * 8)):
        result["mixed"].append(mixed_point(name, mixed_batch(contexts_of(decodes), prefills, device)))
        save_partial(result)
    result["launch_us"] = launch_costs(device)
    checked = [r["rel_err"] for r in result["decode"] + result["prefill"] if r["rel_err"] is not None]
    checked += [r[key] for r in result["mixed"] for key in r if key.endswith("_rel_err")]
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
    if result.get("mixed"):
        text += ("\nA mixed step's attention (μs): the prefill kernel over the whole batch (the engine's one call), "
                 "its decode rows split off to the decode kernel, and torch's paged flash attention.\n\n")
        text += table(["case", "tokens", "one call", "split", "torch flash", "largest rel. error"],
                      [[r["case"], str(r["tokens"]), f"{r['one_call_us']:.0f}",
                        f"{r['split_us']:.0f}" if "split_us" in r else "—",
                        f"{r['torch_flash_us']:.0f}" if "torch_flash_us" in r else "unavailable",
                        f"{max(r[k] for k in r if k.endswith('_rel_err')):.1e}"] for r in result["mixed"]])
        refused = {r.get("torch_flash_unavailable") for r in result["mixed"]} - {None}
        text += "".join(f"\ntorch flash: {why}\n" for why in refused)
    if result.get("launch_us"):
        text += "\nHost μs per call (back-to-back calls on tiny shapes, before the synchronisation).\n\n"
        text += table(["entry point", "host μs per call"], [[k, f"{v:.1f}"] for k, v in result["launch_us"].items()])
    return text + (f"\n**A kernel's output differs from its reference beyond {BF16_TOLERANCE}.**\n"
                   if result.get("failed") else "")
