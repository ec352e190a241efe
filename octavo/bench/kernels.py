"""`octavo bench kernels` (PROTOCOL workload 5): the paged attention kernels against the device's
ceilings measured in the same run (roofline.py), CUDA only: decode in GB/s over rotating block
tables (L2 defeated), prefill in TFLOP/s. bench/README.md ("kernels") says more. Every output is
first checked against the torch reference; a mismatch fails the run.

`--parts linear`: the decode step's GEMMs (llama-3.1-8b's layer shapes and LM head at 1, 8 and 64
tokens) in GB/s of weights read, the engine's call (F.linear on an [out, in] weight) beside a plain
matmul on the same weight stored [in, out]: cuBLAS picks its kernel by layout, and a batch-1
profile found o_proj at 1.7 TB/s where the other GEMMs read at 2.9-3.1
(bench/results/2026-12-07-peer-h100-0631eab.md).

`--parts gemv`: the decode projections with the op before each (RMSNorm + residual before QKV and
gate/up, SiLU-and-mul before down; llama-3.1-8b shapes, 1 to 8 rows) as the engine runs them today
(the Triton norm or activation, then F.linear) against kernels/gemv.py's one kernel, under a sweep
of its tile sizes: the measurement that decides OCTAVO_GEMV_MAX_ROWS and gemv_config's defaults."""

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


# The decode step's GEMMs of the llama-3.1-8b shape: (name, in features, out features).
LINEAR_SHAPES = (("qkv", 4096, 6144), ("o_proj", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096),
                 ("lm_head", 4096, 128256))
LINEAR_TOKENS = (1, 8, 64)
# The decode projections with their prologues: (name, in features, out features, prologue).
GEMV_SHAPES = (("qkv", 4096, 6144, "norm"), ("o_proj", 4096, 4096, None), ("gate_up", 4096, 28672, "norm"),
               ("down", 14336, 4096, "silu"))
GEMV_TOKENS = (1, 2, 4, 8)
# gemv_config's arguments tried at one row, and a smaller set at more rows. At one row, K tiles of
# 256 x warps load x as a row (1,024 on 4 warps, 2,048 on 8), the others in the weight tile's shape.
GEMV_SWEEP_ONE_ROW = tuple(dict(block_n=n, block_k=k, num_warps=w, num_stages=s)
                           for n in (4, 8, 16) for k, w in ((512, 4), (1024, 4), (1024, 8), (2048, 8))
                           for s in (1, 3))
GEMV_SWEEP_ROWS = tuple(dict(block_n=n, block_k=k, num_warps=4, num_stages=s)
                        for n in (8, 16) for k in (128, 256) for s in (1, 3))


def rotating_copies(bytes_each: int, most: int) -> int:
    """How many copies of a call's inputs to cycle through so that together they are 400 MB, 8x a
    50 MB L2 (at least one, at most `most`): each call then reads from HBM, as in a model step."""
    return max(1, min(most, math.ceil(400e6 / bytes_each)))


def decode_point(k_pool: Any, v_pool: Any, batch: int, context: int, table_blocks: int | None = None) -> dict:
    """`table_blocks`: the block tables' width (the engine's graphs pad it to max_model_len's; the
    decode kernel's split follows the width, not the context). Unset: just wide enough."""
    import torch

    from octavo.kernels.attention import paged_decode_attention
    from octavo.kernels.attention_ref import paged_decode_attention_ref

    device, scale = k_pool.device, HEAD_DIM ** -0.5
    blocks = -(-context // BLOCK)
    width = max(blocks, table_blocks or 0)
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * k_pool.element_size()
    moved = kv_bytes + 2 * batch * HEADS * HEAD_DIM * k_pool.element_size()
    sets = rotating_copies(kv_bytes, 64)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    tables = [torch.randperm(k_pool.shape[0], device=device)[: batch * width].view(batch, width).to(torch.int32)
              for _ in range(sets)]
    queries = [torch.randn(batch, HEADS, HEAD_DIM, device=device, dtype=k_pool.dtype) for _ in range(sets)]
    error = None
    if batch <= 8:
        out = paged_decode_attention(queries[0], k_pool, v_pool, tables[0], seq_lens, scale)
        error = relative_error(out, paged_decode_attention_ref(queries[0], k_pool, v_pool, tables[0], seq_lens, scale))
    fns = [lambda q=q, t=t: paged_decode_attention(q, k_pool, v_pool, t, seq_lens, scale)
           for q, t in zip(queries, tables)]
    ms = graph_ms(fns, 20, device)
    return {"batch": batch, "context": context, "table_blocks": width, "us": 1e3 * ms, "gbps": moved / ms / 1e6,
            "rel_err": error}


def linear_point(name: str, in_features: int, out_features: int, tokens: int, device: Any) -> dict:
    """One GEMM of the decode step, both weight layouts, weights rotated so that L2 holds none."""
    import torch
    import torch.nn.functional as F

    weight_bytes = 2 * in_features * out_features
    sets = rotating_copies(weight_bytes, 16)
    weights = [torch.randn(out_features, in_features, device=device, dtype=torch.bfloat16) for _ in range(sets)]
    xs = [torch.randn(tokens, in_features, device=device, dtype=torch.bfloat16) for _ in range(sets)]
    transposed = [w.t().contiguous() for w in weights]
    error = relative_error(xs[0] @ transposed[0], F.linear(xs[0], weights[0]))
    row = {"name": name, "in": in_features, "out": out_features, "tokens": tokens, "rel_err": error}
    for layout, fns in (("out_in", [lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, weights)]),
                        ("in_out", [lambda x=x, w=w: torch.matmul(x, w) for x, w in zip(xs, transposed)])):
        ms = graph_ms(fns, 20, device)
        row[f"{layout}_us"] = 1e3 * ms
        row[f"{layout}_gbps"] = weight_bytes / ms / 1e6
    del weights, transposed
    torch.cuda.empty_cache()
    return row


def gemv_point(name: str, in_features: int, out_features: int, prologue: str | None, tokens: int, device: Any,
               sweep: tuple = ()) -> dict:
    """One projection with its prologue: the engine's unfused ops against gemv.py (its default
    config, then each of `sweep`), weights rotated so that L2 holds none."""
    import torch
    import torch.nn.functional as F

    from octavo.kernels import activation, gemv, norm

    weight_bytes = 2 * in_features * out_features
    sets = rotating_copies(weight_bytes, 16)
    weights = [torch.randn(out_features, in_features, device=device, dtype=torch.bfloat16) / in_features ** 0.5
               for _ in range(sets)]
    width = 2 * in_features if prologue == "silu" else in_features
    xs = [torch.randn(tokens, width, device=device, dtype=torch.bfloat16) for _ in range(sets)]
    residuals = [torch.randn(tokens, in_features, device=device, dtype=torch.bfloat16) for _ in range(sets)]
    gamma = 1 + 0.1 * torch.randn(in_features, device=device, dtype=torch.bfloat16)

    def unfused(x, w, r):
        if prologue == "norm":
            return F.linear(norm.rms_norm(x, gamma, 1e-5, r)[0], w)
        return F.linear(activation.silu_and_mul(x) if prologue == "silu" else x, w)

    def fused(x, w, r, config=None):
        if prologue == "norm":
            return gemv.rms_norm_linear(x, gamma, 1e-5, w, None, r, config)[0]
        if prologue == "silu":
            return gemv.silu_and_mul_linear(x, w, None, config)
        return gemv.linear(x, w, None, config)

    triples = list(zip(xs, weights, residuals))
    row = {"name": name, "in": in_features, "out": out_features, "tokens": tokens, "prologue": prologue,
           "default_config": gemv.gemv_config(tokens, out_features, in_features),
           "rel_err": relative_error(fused(*triples[0]), unfused(*triples[0]))}
    for label, fn in (("unfused", unfused), ("gemv", fused)):
        ms = graph_ms([lambda t=t, fn=fn: fn(*t) for t in triples], 20, device)
        row[f"{label}_us"], row[f"{label}_gbps"] = 1e3 * ms, weight_bytes / ms / 1e6
    row["sweep"] = []
    for choice in sweep:
        config = gemv.gemv_config(tokens, out_features, in_features, **choice)
        try:
            error = relative_error(fused(*triples[0], config), unfused(*triples[0]))
            ms = graph_ms([lambda t=t, c=config: fused(*t, c) for t in triples], 20, device)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile or fit: recorded, not fatal
            row["sweep"].append({**choice, "us": math.inf, "error": str(exc)[:200]})
            continue
        row["sweep"].append({**choice, "us": 1e3 * ms, "gbps": weight_bytes / ms / 1e6, "rel_err": error})
    del weights, xs, residuals
    torch.cuda.empty_cache()
    return row


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
    parts = set(args.parts.split(","))
    result: dict = {"kind": "kernels", "tag": args.tag, "env": environment(args.device, args),
                    "model": {"name": "attention"}, "roofline": roofline.measure(device), "decode": [], "prefill": [],
                    "linear": [], "gemv": []}
    copy_gbps = result["roofline"]["copy_bandwidth_gbps"]
    if "attention" in parts:
        attention(result, device, save_partial)
    if "linear" in parts:
        for name, in_features, out_features in LINEAR_SHAPES:
            for tokens in LINEAR_TOKENS:
                row = linear_point(name, in_features, out_features, tokens, device)
                row["out_in_of_copy"], row["in_out_of_copy"] = row["out_in_gbps"] / copy_gbps, row["in_out_gbps"] / copy_gbps
                result["linear"].append(row)
                save_partial(result)
    if "gemv" in parts:
        for name, in_features, out_features, prologue in GEMV_SHAPES:
            for tokens in GEMV_TOKENS:
                sweep = GEMV_SWEEP_ONE_ROW if tokens == 1 else GEMV_SWEEP_ROWS if tokens == 4 else ()
                sweep = sweep if getattr(args, "gemv_sweep", True) else ()
                row = gemv_point(name, in_features, out_features, prologue, tokens, device, sweep)
                row["unfused_of_copy"], row["gemv_of_copy"] = row["unfused_gbps"] / copy_gbps, row["gemv_gbps"] / copy_gbps
                result["gemv"].append(row)
                save_partial(result)
    swept = [c["rel_err"] for r in result["gemv"] for c in r["sweep"] if "rel_err" in c]
    checked = [r["rel_err"] for r in result["decode"] + result["prefill"] + result["linear"] + result["gemv"]
               if r["rel_err"] is not None] + swept
    result["failed"] = any(not error < BF16_TOLERANCE for error in checked)
    return result


def attention(result: dict, device: Any, save_partial) -> None:
    import torch

    contexts, batches = [1024, 4096, 16384], [1, 8, 32, 64, 128, 256]
    tokens = max(contexts) * max(batches) + 64 * 1024
    k_pool = torch.randn(tokens // BLOCK, BLOCK, KV_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    v_pool = torch.randn_like(k_pool)
    # A served batch-1 step: about 190 tokens of context, tables as wide as max_model_len 2048 needs
    # (the kernel splits by width, then merges) and just wide enough (no split).
    points = [(1, 192, 128), (1, 192, None)] + [(b, c, None) for c in contexts for b in batches]
    for batch, context, width in points:
        row = decode_point(k_pool, v_pool, batch, context, width)
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


def markdown(result: dict) -> str:
    from octavo.bench.report import header, table

    def error(row: dict) -> str:
        return "—" if row["rel_err"] is None else f"{row['rel_err']:.1e}" + (
            "" if row["rel_err"] < BF16_TOLERANCE else " FAIL")

    text = header(result, "Attention kernels (32 q / 8 KV heads, head_dim 128, bf16)")
    text += "Paged decode: the bytes a step must move / its time (CUDA-graph replays, L2 defeated).\n\n"
    text += table(["context", "batch", "table blocks", "us", "GB/s", "of copy bandwidth", "rel. error vs reference"],
                  [[str(r["context"]), str(r["batch"]), str(r.get("table_blocks", "")), f"{r['us']:.1f}",
                    f"{r['gbps']:,.0f}", f"{r['of_copy']:.0%}", error(r)] for r in result["decode"]])
    text += "\nPaged prefill, causal, one sequence, no cached prefix: visible-pair FLOPs / time.\n\n"
    text += table(["tokens", "ms", "TFLOP/s", "of matmul peak", "rel. error vs reference"],
                  [[str(r["seq_len"]), f"{r['ms']:.3f}", f"{r['tflops']:.0f}", f"{r['of_matmul']:.0%}", error(r)]
                   for r in result["prefill"]])
    if result.get("linear"):
        text += ("\nDecode GEMMs (llama-3.1-8b shapes, bf16): weight bytes / time, the engine's F.linear on an "
                 "[out, in] weight beside a matmul on the same weight stored [in, out] (CUDA-graph replays, L2 "
                 "defeated).\n\n")
        text += table(["GEMM", "in x out", "tokens", "F.linear us", "GB/s", "of copy", "[in, out] us", "GB/s",
                       "of copy", "rel. diff"],
                      [[r["name"], f"{r['in']} x {r['out']}", str(r["tokens"]), f"{r['out_in_us']:.1f}",
                        f"{r['out_in_gbps']:,.0f}", f"{r['out_in_of_copy']:.0%}", f"{r['in_out_us']:.1f}",
                        f"{r['in_out_gbps']:,.0f}", f"{r['in_out_of_copy']:.0%}", error(r)] for r in result["linear"]])
    if result.get("gemv"):
        text += ("\nDecode projections with the op before them (llama-3.1-8b shapes, bf16): the engine's Triton "
                 "norm or activation then F.linear, against gemv.py's one kernel (its default config, and the best "
                 "of the sweep where one ran); weight bytes / time (CUDA-graph replays, L2 defeated).\n\n")

        def best(row: dict) -> str:
            if not row["sweep"]:
                return ""
            top = min(row["sweep"], key=lambda c: c["us"])
            return (f"{top['us']:.1f} (n{top['block_n']} k{top['block_k']} w{top['num_warps']} "
                    f"s{top['num_stages']})")

        text += table(["GEMM", "prologue", "tokens", "unfused us", "GB/s", "gemv us", "GB/s", "gemv / unfused",
                       "best of sweep us", "rel. diff"],
                      [[r["name"], r["prologue"] or "—", str(r["tokens"]), f"{r['unfused_us']:.1f}",
                        f"{r['unfused_gbps']:,.0f}", f"{r['gemv_us']:.1f}", f"{r['gemv_gbps']:,.0f}",
                        f"{r['gemv_us'] / r['unfused_us']:.2f}", best(r), error(r)] for r in result["gemv"]])
    return text + (f"\n**A kernel's output differs from its reference beyond {BF16_TOLERANCE}.**\n"
                   if result.get("failed") else "")
