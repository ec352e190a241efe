"""GPU checks and benchmarks for octavo's Triton kernels (run on a CUDA machine).

    OCTAVO_COMMIT=$(git rev-parse HEAD) python bench/gpu_check.py --out "$OUT" \
        [--sections check,graph,anchors,decode,prefill,sdpa,sweep] [--quick]

Sections run in the order given; each is a function `section(ctx) -> dict` registered in
SECTIONS, so more checks can be appended (the engine's end-to-end checks live in
gpu_engine_check.py). A failing section is recorded and the others still run. Results go to
$OUT/kernels.json (raw) and $OUT/kernels.md (tables with ratios to the anchors measured in the same
run: device copy bandwidth and an 8192^3 bf16 matmul).

Method: fresh random inputs for every check, outputs poisoned (NaN) before each kernel writes
them, unowned cache slots NaN; decode timed as CUDA-graph replays over rotating block sets (more
bytes than L2), prefill with triton.testing.do_bench (median).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from octavo.kernels import activation, attention, cache, norm, rotary  # noqa: E402
from octavo.kernels.attention_ref import paged_attention_ref, paged_decode_attention_ref  # noqa: E402
from octavo.kernels.cache_ref import write_kv_cache_ref  # noqa: E402
from octavo.kernels.elementwise_ref import rms_norm_ref, rotary_ref, silu_and_mul_ref  # noqa: E402

DEVICE = torch.device("cuda")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("inf")
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@contextlib.contextmanager
def poisoned_allocations(*modules):
    """Kernel modules allocate with torch.empty: hand them NaN-filled buffers instead."""

    class PoisoningTorch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*args, **kwargs):
            t = torch.empty(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t

        @staticmethod
        def empty_like(*args, **kwargs):
            t = torch.empty_like(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t

    saved = [m.torch for m in modules]
    for m in modules:
        m.torch = PoisoningTorch()
    try:
        yield
    finally:
        for m, t in zip(modules, saved):
            m.torch = t


def make_paged_kv(context_lens, num_kv_heads, head_dim, block_size, dtype, gen, spare_columns=2):
    """Random K/V per context over shuffled blocks; unowned slots and a spare block are NaN and
    every unused block-table column points at the spare block."""
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 2
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    v_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    width = max(blocks_per_seq) + spare_columns
    block_tables = torch.full((len(context_lens), width), num_blocks - 1, dtype=torch.int32)
    perm = torch.randperm(num_blocks - 1, generator=gen).tolist()
    for b, n in enumerate(context_lens):
        ids = [perm.pop() for _ in range(blocks_per_seq[b])]
        block_tables[b, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        if n == 0:
            continue
        idx = torch.tensor(ids, device=DEVICE)
        flat_k = torch.randn(len(ids) * block_size, num_kv_heads, head_dim, generator=None,
                             device=DEVICE).to(dtype)
        flat_v = torch.randn_like(flat_k, dtype=torch.float32).to(dtype)
        flat_k[n:] = float("nan")
        flat_v[n:] = float("nan")
        k_cache[idx] = flat_k.view(len(ids), block_size, num_kv_heads, head_dim)
        v_cache[idx] = flat_v.view(len(ids), block_size, num_kv_heads, head_dim)
    return k_cache, v_cache, block_tables.to(DEVICE)


def alibi_slopes(num_heads):
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)],
                        device=DEVICE)


def graph_time_ms(fns, replays):
    """Median time of one call, from CUDA-graph replays of all `fns` back to back."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    del graph
    return statistics.median(times)


def bench_ms(fn, rep=200):
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def compiled_kernel_report(jit_fn):
    """Registers, spills, shared memory and whether wgmma is in the PTX, per compiled variant."""
    fn = jit_fn
    while hasattr(fn, "fn") and not hasattr(fn, "device_caches"):
        fn = fn.fn
    rows = []
    try:
        for entry in fn.device_caches.values():
            kernel_cache = entry[0]
            for compiled in kernel_cache.values():
                ptx = compiled.asm.get("ptx", "") if hasattr(compiled, "asm") else ""
                meta = compiled.metadata
                rows.append({
                    "name": getattr(meta, "name", "?"),
                    "num_warps": getattr(meta, "num_warps", None),
                    "num_stages": getattr(meta, "num_stages", None),
                    "shared_bytes": getattr(meta, "shared", None),
                    "registers": getattr(compiled, "n_regs", None),
                    "spills": getattr(compiled, "n_spills", None),
                    "wgmma": "wgmma" in ptx,
                    "mma_sync": "mma.sync" in ptx,
                    "cp_async": "cp.async" in ptx,
                })
    except Exception as exc:  # introspection differs between Triton versions
        rows.append({"error": repr(exc)})
    return rows


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def section_check(ctx):
    """Every kernel against its reference at real sizes; outputs poisoned; repeat-determinism."""
    gen = torch.Generator().manual_seed(1234)
    results = []

    def record(name, err, tol, **extra):
        ok = err < tol
        results.append({"name": name, "rel_err": err, "tol": tol, "ok": ok, **extra})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: rel_err {err:.2e} (tol {tol:.0e})", flush=True)

    with poisoned_allocations(attention, cache, norm, rotary, activation):
        # KV cache write: exact.
        for dtype, hkv, d, bs in [(torch.bfloat16, 8, 128, 16), (torch.float16, 4, 64, 128),
                                  (torch.float32, 2, 96, 8)]:
            t = 3000
            kc = torch.randn(t // bs + 20, bs, hkv, d, device=DEVICE).to(dtype)
            vc = torch.randn_like(kc)
            qkv = torch.randn(t, 32 + 2 * hkv, d, device=DEVICE).to(dtype)
            key, value = qkv[:, 32:32 + hkv], qkv[:, 32 + hkv:]
            slots = torch.randperm(kc.shape[0] * bs, device=DEVICE)[:t]
            slots[::7] = -1
            rk, rv = kc.clone(), vc.clone()
            write_kv_cache_ref(key, value, rk, rv, slots)
            cache.write_kv_cache(key, value, kc, vc, slots)
            exact = torch.equal(kc, rk) and torch.equal(vc, rv)
            record(f"write_kv_cache {dtype} hkv={hkv} d={d} bs={bs} (exact)", 0.0 if exact else 1.0,
                   0.5)

        # RMSNorm, rotary, silu_and_mul: near-exact (same roundings as the reference).
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            x = torch.randn(4096, 4096, device=DEVICE).to(dtype)
            w = (1 + 0.1 * torch.randn(4096, device=DEVICE)).to(dtype)
            r = torch.randn_like(x)
            out, res = norm.rms_norm(x, w, 1e-5, r)
            ref, ref_res = rms_norm_ref(x, w, 1e-5, r)
            mismatch = (out != ref).float().mean().item()
            record(f"rms_norm+residual {dtype} 4096x4096", rel_err(out, ref), TOL[dtype],
                   mismatch_fraction=mismatch, residual_exact=torch.equal(res, ref_res))
            out = norm.rms_norm(x[:, :3000], w[:3000], 1e-6)
            record(f"rms_norm {dtype} strided 4096x3000", rel_err(out, rms_norm_ref(
                x[:, :3000], w[:3000], 1e-6)), TOL[dtype])
            for h, hkv, d, rot in [(32, 8, 128, 128), (32, 32, 80, 20), (16, 16, 64, 32)]:
                qkv = torch.randn(3000, h + 2 * hkv, d, device=DEVICE).to(dtype)
                q, k = qkv[:, :h], qkv[:, h:h + hkv]
                inv = 1.0 / (500000 ** (torch.arange(0, rot, 2, device=DEVICE).float() / rot))
                ang = torch.outer(torch.arange(8192, device=DEVICE).float(), inv)
                cs = torch.cat([ang.cos(), ang.sin()], -1)
                pos = torch.randint(0, 8192, (3000,), device=DEVICE)
                qo, ko = rotary.rotary(q, k, pos, cs)
                qr, kr = rotary_ref(q, k, pos, cs)
                record(f"rotary {dtype} h={h} hkv={hkv} d={d} rot={rot}",
                       max(rel_err(qo, qr), rel_err(ko, kr)), TOL[dtype],
                       mismatch_fraction=(qo != qr).float().mean().item())
            x = (3 * torch.randn(2048, 2 * 14336, device=DEVICE)).to(dtype)
            out = activation.silu_and_mul(x)
            ref = silu_and_mul_ref(x)
            record(f"silu_and_mul {dtype} 2048x28672", rel_err(out, ref), TOL[dtype],
                   mismatch_fraction=(out != ref).float().mean().item())

        # Decode attention.
        decode_cases = [
            # dtype, D, H, Hkv, block, lens, alibi, window
            (torch.bfloat16, 128, 32, 8, 16, [1, 17, 4096, 300, 16384], False, None),
            (torch.bfloat16, 128, 32, 8, 16, [5000], False, None),
            (torch.float16, 64, 16, 16, 32, [33, 1000, 2047], False, None),
            (torch.bfloat16, 128, 32, 4, 8, [777, 3], False, None),
            (torch.float32, 128, 8, 1, 64, [1500, 64], False, None),
            (torch.bfloat16, 80, 32, 32, 16, [200, 1200], False, None),
            (torch.bfloat16, 96, 24, 8, 128, [4000], False, None),
            (torch.bfloat16, 256, 8, 1, 16, [900, 31], False, None),
            (torch.bfloat16, 64, 16, 16, 16, [600, 2000], True, None),
            (torch.bfloat16, 128, 32, 8, 16, [5000, 100, 4097], False, 4096),
            (torch.float16, 128, 28, 4, 16, [3000] * 64, False, None),  # group 7
            (torch.bfloat16, 128, 32, 8, 16, [0, 9], False, None),
        ]
        for dtype, d, h, hkv, bs, lens, alibi, window in decode_cases:
            kc, vc, bt = make_paged_kv(lens, hkv, d, bs, dtype, gen)
            sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
            q = torch.randn(len(lens), h + 2 * hkv, d, device=DEVICE).to(dtype)[:, :h]
            slopes = alibi_slopes(h) if alibi else None
            out = attention.paged_decode_attention(q, kc, vc, bt, sl, d ** -0.5, slopes, window)
            again = attention.paged_decode_attention(q, kc, vc, bt, sl, d ** -0.5, slopes, window)
            ref = paged_decode_attention_ref(q, kc, vc, bt, sl, d ** -0.5, slopes, window)
            name = (f"decode {dtype} d={d} h={h}/{hkv} bs={bs} lens={lens[:5]}"
                    f"{'...' if len(lens) > 5 else ''} alibi={alibi} window={window}")
            record(name, rel_err(out, ref), TOL[dtype], deterministic=torch.equal(out, again))

        # Prefill / extend attention: every autotune candidate on the benchmark's shape family
        # (these compilations are reused by the prefill section), then one conservative config
        # over many shapes (autotuning each would compile every candidate again).
        tuned = attention._prefill_kernel_tuned
        saved_configs = tuned.configs
        lens_q, prefixes = [1000, 1, 37, 517, 16, 200], [0, 300, 2000, 64, 5, 1500]
        lens = [a + b for a, b in zip(lens_q, prefixes)]
        kc, vc, bt = make_paged_kv(lens, 8, 128, 16, torch.bfloat16, gen)
        sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        qsl = torch.tensor([0] + lens_q, device=DEVICE).cumsum(0).to(torch.int32)
        q = torch.randn(sum(lens_q), 48, 128, device=DEVICE).to(torch.bfloat16)[:, :32]
        ref = paged_attention_ref(q, kc, vc, bt, qsl, sl, 128 ** -0.5)
        try:
            for config in saved_configs:
                tuned.configs = [config]
                tuned.cache = {}
                out = attention.paged_attention(q, kc, vc, bt, qsl, sl, 128 ** -0.5)
                record(f"prefill config {config}", rel_err(out, ref), TOL[torch.bfloat16])
            tuned.configs = [attention.triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4,
                                                     num_stages=2)]
            tuned.cache = {}
            prefill_cases = [
                # dtype, D, H, Hkv, block, q_lens, prefixes, alibi, window
                (torch.bfloat16, 128, 32, 8, 16, [4096], [0], False, None),
                (torch.bfloat16, 128, 32, 8, 16, [1000, 1, 37, 517], [0, 300, 2000, 64], False, None),
                (torch.bfloat16, 128, 32, 8, 16, [5] * 32, list(range(0, 3200, 100)), False, None),
                (torch.float16, 64, 16, 16, 32, [700, 129], [0, 1000], False, None),
                (torch.float32, 128, 8, 2, 16, [300, 40], [0, 77], False, None),
                (torch.bfloat16, 80, 32, 32, 8, [333], [12], False, None),
                (torch.bfloat16, 96, 24, 8, 64, [600], [1000], False, None),
                (torch.bfloat16, 256, 8, 1, 16, [300, 20], [0, 50], False, None),
                (torch.bfloat16, 64, 16, 16, 16, [800, 64], [0, 500], True, None),  # BLOOM-like
                (torch.bfloat16, 128, 32, 8, 16, [3000, 200], [0, 5000], False, 4096),  # Mistral-like
                (torch.float16, 128, 28, 4, 128, [900, 3], [64, 2000], False, None),  # group 7
            ]
            for dtype, d, h, hkv, bs, q_lens, prefixes, alibi, window in prefill_cases:
                lens = [a + b for a, b in zip(q_lens, prefixes)]
                kc, vc, bt = make_paged_kv(lens, hkv, d, bs, dtype, gen)
                sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
                qsl = torch.tensor([0] + q_lens, device=DEVICE).cumsum(0).to(torch.int32)
                q = torch.randn(sum(q_lens), h + 2 * hkv, d, device=DEVICE).to(dtype)[:, :h]
                slopes = alibi_slopes(h) if alibi else None
                out = attention.paged_attention(q, kc, vc, bt, qsl, sl, d ** -0.5, slopes, window)
                again = attention.paged_attention(q, kc, vc, bt, qsl, sl, d ** -0.5, slopes, window)
                ref = paged_attention_ref(q, kc, vc, bt, qsl, sl, d ** -0.5, slopes, window)
                name = (f"prefill {dtype} d={d} h={h}/{hkv} bs={bs} q={q_lens[:4]} "
                        f"prefix={prefixes[:4]} alibi={alibi} window={window}")
                record(name, rel_err(out, ref), TOL[dtype], deterministic=torch.equal(out, again))
        finally:
            tuned.configs = saved_configs
            tuned.cache = {}
    failed = [r["name"] for r in results if not r["ok"]]
    return {"cases": results, "failed": failed, "ok": not failed}


def section_graph(ctx):
    """Decode captured once in a CUDA graph, replayed with other lengths and block tables."""
    gen = torch.Generator().manual_seed(7)
    batch, h, hkv, d, bs, max_blocks = 16, 32, 8, 128, 16, 256
    num_blocks = batch * max_blocks + 1
    kc = torch.randn(num_blocks, bs, hkv, d, device=DEVICE).to(torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(batch, h, d, device=DEVICE).to(torch.bfloat16)
    bt = torch.zeros(batch, max_blocks, dtype=torch.int32, device=DEVICE)
    sl = torch.ones(batch, dtype=torch.int32, device=DEVICE)
    fn = lambda: attention.paged_decode_attention(q, kc, vc, bt, sl, d ** -0.5)  # noqa: E731
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    rows = []
    for trial in range(4):
        lens = torch.randint(1, max_blocks * bs + 1, (batch,), generator=gen)
        if trial == 0:
            lens[:] = 1
        bt.copy_(torch.randperm(num_blocks - 1, generator=gen)[: batch * max_blocks]
                 .view(batch, max_blocks).to(torch.int32))
        sl.copy_(lens.to(torch.int32))
        q.copy_(torch.randn(batch, h, d, device=DEVICE).to(torch.bfloat16))
        out.fill_(float("nan"))
        graph.replay()
        ref = paged_decode_attention_ref(q, kc, vc, bt, sl, d ** -0.5)
        err = rel_err(out, ref)
        rows.append({"max_len": int(lens.max()), "rel_err": err, "ok": err < TOL[torch.bfloat16]})
        print(f"  graph replay {trial}: max len {int(lens.max())} rel_err {err:.2e}", flush=True)
    return {"replays": rows, "ok": all(r["ok"] for r in rows)}


def section_anchors(ctx):
    """Device copy bandwidth and the 8192^3 bf16 matmul rate, measured here and now."""
    n = 1 << 30  # bytes per buffer

    def copy_ms():
        src = torch.randn(n // 2, device=DEVICE, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        return bench_ms(lambda: dst.copy_(src))

    def matmul_ms():
        a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
        return bench_ms(lambda: a @ b)

    ms = copy_ms()
    copy_gbs = 2 * n / ms / 1e6
    ms_mm = matmul_ms()
    mm_tflops = 2 * 8192 ** 3 / ms_mm / 1e9
    ctx["copy_gbs"], ctx["matmul_tflops"] = copy_gbs, mm_tflops
    print(f"  copy {copy_gbs:.0f} GB/s (read+write), matmul {mm_tflops:.0f} TFLOP/s", flush=True)
    return {"copy_GBps": copy_gbs, "copy_ms": ms, "matmul_TFLOPs": mm_tflops, "matmul_ms": ms_mm}


class DecodePool:
    """One large paged K/V pool; every benchmark point draws its block tables from it at random,
    rotating over enough sets that the bytes touched exceed L2 many times over."""

    def __init__(self, num_tokens, hkv=8, d=128, bs=16, dtype=torch.bfloat16):
        self.bs, self.hkv, self.d, self.dtype = bs, hkv, d, dtype
        self.num_blocks = num_tokens // bs
        shape = (self.num_blocks, bs, hkv, d)
        self.k = torch.empty(shape, device=DEVICE, dtype=dtype).normal_()
        self.v = torch.empty(shape, device=DEVICE, dtype=dtype).normal_()

    def tables(self, batch, context, sets):
        blocks = -(-context // self.bs)
        out = []
        for _ in range(sets):
            ids = torch.randperm(self.num_blocks, device=DEVICE)[: batch * blocks]
            out.append(ids.view(batch, blocks).to(torch.int32))
        return out


def decode_point(pool, batch, context, h=32, l2_bytes=50e6, ragged=False):
    """One decode shape; ragged: lengths uniform in 1..context (block tables still sized for
    `context`, as in a captured graph)."""
    hkv, d, elt = pool.hkv, pool.d, pool.k.element_size()
    if ragged:
        lens = torch.randint(1, context + 1, (batch,), device=DEVICE, dtype=torch.int32)
    else:
        lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
    tokens = int(lens.sum())
    kv_bytes = 2 * tokens * hkv * d * elt
    min_bytes = kv_bytes + 2 * batch * h * d * elt + ((tokens + pool.bs - 1) // pool.bs) * 4
    sets = max(1, min(64, math.ceil(8 * l2_bytes / kv_bytes)))
    tables = pool.tables(batch, context, sets)
    seq_lens = lens
    queries = [torch.randn(batch, h, d, device=DEVICE).to(pool.dtype) for _ in range(sets)]
    fns = [lambda q=q, t=t: attention.paged_decode_attention(q, pool.k, pool.v, t, seq_lens,
                                                             d ** -0.5)
           for q, t in zip(queries, tables)]
    est_ms = max(min_bytes / 2.5e9, 0.004) * sets
    replays = int(min(50, max(5, 60 / est_ms)))
    ms = graph_time_ms(fns, replays)
    return ms, min_bytes


def section_decode(ctx):
    """Paged decode: GB/s vs copy bandwidth, 32 q heads / 8 KV heads, head_dim 128, bf16."""
    contexts = [1024, 4096, 16384]
    batches = [1, 8, 16, 32, 64, 128, 256] if not ctx["quick"] else [1, 32, 256]
    if ctx["quick"]:
        contexts = [1024, 4096]
    pool = DecodePool(max(contexts) * max(batches) + 64 * 1024)
    copy = ctx.get("copy_gbs")
    rows = []
    for context in contexts:
        for batch in batches:
            ms, nbytes = decode_point(pool, batch, context)
            gbs = nbytes / ms / 1e6
            parts = attention.decode_num_partitions(batch, 8, -(-context // 16), 16, DEVICE)
            row = {"context": context, "batch": batch, "us": ms * 1e3, "GBps": gbs,
                   "pct_copy": 100 * gbs / copy if copy else None, "partitions": parts,
                   "floor_us": nbytes / (copy * 1e3) if copy else None}
            rows.append(row)
            print(f"  decode ctx {context:6d} B {batch:4d}: {ms * 1e3:8.1f} us {gbs:7.0f} GB/s "
                  f"({row['pct_copy'] or 0:.0f}% of copy) parts {parts}", flush=True)
    for batch in (8, 32, 128):  # lengths uniform in 1..8192, tables sized for 8192
        ms, nbytes = decode_point(pool, batch, 8192, ragged=True)
        gbs = nbytes / ms / 1e6
        row = {"context": "ragged <=8192", "batch": batch, "us": ms * 1e3, "GBps": gbs,
               "pct_copy": 100 * gbs / copy if copy else None,
               "partitions": attention.decode_num_partitions(batch, 8, 512, 16, DEVICE),
               "floor_us": nbytes / (copy * 1e3) if copy else None}
        rows.append(row)
        print(f"  decode ragged<=8192 B {batch:4d}: {ms * 1e3:8.1f} us {gbs:7.0f} GB/s "
              f"({row['pct_copy'] or 0:.0f}% of copy)", flush=True)
    del pool
    torch.cuda.empty_cache()
    return {"rows": rows, "kernels": compiled_kernel_report(attention._decode_kernel)}


def section_sweep(ctx):
    """Decode launch choices (tile, warps, stages; split rule) at the batches that split."""
    pool = DecodePool(64 * 16384 + 64 * 1024)
    variants = [
        dict(BLOCK_N=64, num_warps=2, num_stages=4),  # the default
        dict(BLOCK_N=64, num_warps=4, num_stages=3),
    ]
    splits = [(4, 256), (6, 256)]
    points = [(1, 4096), (1, 16384), (8, 4096), (16, 4096), (32, 4096), (48, 4096), (64, 16384)]
    saved = (attention._decode_config, attention._PROGRAMS_PER_SM, attention._MIN_PARTITION_TOKENS)
    rows = []
    try:
        for i, variant in enumerate(variants):
            attention._decode_config = lambda *a, v=variant: dict(v)
            for per_sm, min_tokens in (splits if i == 0 else splits[:1]):
                attention._PROGRAMS_PER_SM, attention._MIN_PARTITION_TOKENS = per_sm, min_tokens
                for batch, context in points:
                    ms, nbytes = decode_point(pool, batch, context)
                    rows.append({**variant, "programs_per_sm": per_sm, "min_part_tokens": min_tokens,
                                 "batch": batch, "context": context, "us": ms * 1e3,
                                 "GBps": nbytes / ms / 1e6})
    finally:
        attention._decode_config, attention._PROGRAMS_PER_SM, attention._MIN_PARTITION_TOKENS = saved
    for r in rows:
        label = r.get("config") or f"N{r['BLOCK_N']} w{r['num_warps']} s{r['num_stages']}"
        print(f"  sweep {label:14s} split {r['programs_per_sm']}/{r['min_part_tokens']:3d} "
              f"B {r['batch']:3d} ctx {r['context']:5d}: {r['us']:8.1f} us {r['GBps']:6.0f} GB/s",
              flush=True)
    del pool
    torch.cuda.empty_cache()
    return {"rows": rows}


def prefill_inputs(q_len, prefix, h=32, hkv=8, d=128, bs=16, dtype=torch.bfloat16, sets=3):
    total = q_len + prefix
    blocks = -(-total // bs)
    num_blocks = blocks * sets + 1
    k = torch.empty(num_blocks, bs, hkv, d, device=DEVICE, dtype=dtype).normal_()
    v = torch.empty_like(k).normal_()
    perm = torch.randperm(num_blocks, device=DEVICE)
    tables = [perm[i * blocks:(i + 1) * blocks].view(1, blocks).to(torch.int32) for i in range(sets)]
    queries = [torch.randn(q_len, h, d, device=DEVICE).to(dtype) for _ in range(sets)]
    qsl = torch.tensor([0, q_len], dtype=torch.int32, device=DEVICE)
    sl = torch.tensor([total], dtype=torch.int32, device=DEVICE)
    return k, v, tables, queries, qsl, sl


def causal_flops(q_len, prefix, h=32, d=128):
    pairs = q_len * prefix + q_len * (q_len + 1) // 2
    return 4 * d * h * pairs


def prefill_point(q_len, prefix):
    k, v, tables, queries, qsl, sl = prefill_inputs(q_len, prefix)
    calls = iter(range(10 ** 9))

    def fn():
        i = next(calls) % len(tables)
        return attention.paged_attention(queries[i], k, v, tables[i], qsl, sl, 128 ** -0.5)

    tuned = attention._prefill_kernel_tuned
    tuned.configs_timings = None
    t0 = time.time()
    fn()  # autotunes on the first call of each key
    torch.cuda.synchronize()
    tune_s = time.time() - t0
    timings = getattr(tuned, "configs_timings", None) or {}
    ms = bench_ms(fn)
    tflops = causal_flops(q_len, prefix) / ms / 1e9
    return {"q_len": q_len, "prefix": prefix, "ms": ms, "TFLOPs": tflops,
            "best_config": str(getattr(tuned, "best_config", None)), "autotune_s": tune_s,
            "config_ms": {str(c): (t[0] if isinstance(t, (list, tuple)) else t)
                          for c, t in timings.items()}}


def section_prefill(ctx):
    """Paged prefill: TFLOP/s vs the matmul anchor, causal, 32/8 heads, head_dim 128, bf16."""
    peak = ctx.get("matmul_tflops")
    rows = []
    cases = [(s, 0) for s in (1024, 4096, 8192)] + [(s // 2, s // 2) for s in (1024, 4096, 8192)]
    if ctx["quick"]:
        cases = [(1024, 0), (4096, 0), (2048, 2048)]
    for q_len, prefix in cases:
        row = prefill_point(q_len, prefix)
        row["pct_matmul"] = 100 * row["TFLOPs"] / peak if peak else None
        rows.append(row)
        print(f"  prefill q {q_len:5d} prefix {prefix:5d}: {row['ms']:7.3f} ms "
              f"{row['TFLOPs']:6.1f} TFLOP/s ({row['pct_matmul'] or 0:.0f}% of matmul) "
              f"best {row['best_config']}", flush=True)
    # Every candidate config timed on its own at 4k and 8k (the autotuner tunes once, on the
    # first call of a key, here the 1k case).
    tuned = attention._prefill_kernel_tuned
    saved = tuned.configs
    config_rows = []
    try:
        for q_len in (4096, 8192):
            for config in saved:
                tuned.configs, tuned.cache = [config], {}
                row = prefill_point(q_len, 0)
                config_rows.append({"q_len": q_len, "config": str(config), "ms": row["ms"],
                                    "TFLOPs": row["TFLOPs"]})
                print(f"  prefill {q_len} {config}: {row['ms']:.3f} ms {row['TFLOPs']:.0f} TFLOP/s",
                      flush=True)
    finally:
        tuned.configs, tuned.cache = saved, {}
    return {"rows": rows, "configs": config_rows,
            "kernels": compiled_kernel_report(attention._prefill_kernel)}


def section_sdpa(ctx):
    """torch SDPA (flash) on the same shapes, contiguous: the sanity anchor."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    peak, copy = ctx.get("matmul_tflops"), ctx.get("copy_gbs")
    rows = []
    for s in (1024, 4096, 8192):
        q = torch.randn(1, 32, s, 128, device=DEVICE, dtype=torch.bfloat16)
        k = torch.randn(1, 8, s, 128, device=DEVICE, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        ke, ve = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            ms = bench_ms(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True))
        tflops = causal_flops(s, 0) / ms / 1e9
        rows.append({"kind": "prefill", "seq": s, "ms": ms, "TFLOPs": tflops,
                     "pct_matmul": 100 * tflops / peak if peak else None})
        print(f"  sdpa flash causal {s}: {ms:.3f} ms {tflops:.1f} TFLOP/s", flush=True)
    for batch, context in [(1, 4096), (1, 16384), (32, 4096), (128, 4096)]:
        q = torch.randn(batch, 32, 1, 128, device=DEVICE, dtype=torch.bfloat16)
        k = torch.randn(batch, 8, context, 128, device=DEVICE, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        nbytes = 2 * k.numel() * 2 + 2 * q.numel() * 2
        try:
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # fails outside a capture
            torch.cuda.synchronize()
            ms = graph_time_ms([lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)],
                               30)
            how = "enable_gqa (default backend)"
        except Exception as exc:  # older torch: no enable_gqa
            how = f"failed: {exc!r}"[:200]
            ms = float("nan")
        gbs = nbytes / ms / 1e6
        rows.append({"kind": "decode", "batch": batch, "context": context, "us": ms * 1e3,
                     "GBps": gbs, "pct_copy": 100 * gbs / copy if copy else None, "how": how})
        print(f"  sdpa decode B {batch} ctx {context}: {ms * 1e3:.1f} us {gbs:.0f} GB/s ({how})",
              flush=True)
    return {"rows": rows}


SECTIONS = {
    "check": section_check,
    "graph": section_graph,
    "anchors": section_anchors,
    "decode": section_decode,
    "prefill": section_prefill,
    "sdpa": section_sdpa,
    "sweep": section_sweep,
}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def markdown(report):
    meta = report["meta"]
    lines = [f"# Kernel check and benchmarks: {meta['device']}", "",
             f"- torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}",
             f"- commit `{meta['commit']}`, {meta['date']}",
             f"- command: `{meta['command']}`", ""]
    sections = report["sections"]
    anchors = sections.get("anchors", {})
    if "copy_GBps" in anchors:
        lines += ["## Anchors", "",
                  f"- device copy: {anchors['copy_GBps']:.0f} GB/s (bytes read + written)",
                  f"- 8192^3 bf16 matmul: {anchors['matmul_TFLOPs']:.0f} TFLOP/s", ""]
    for name in ("check", "graph"):
        sec = sections.get(name)
        if sec and "cases" in sec:
            lines += [f"## Correctness ({len(sec['cases'])} cases, "
                      f"{'all pass' if sec['ok'] else 'FAILURES'})", "",
                      "| case | rel err | tol | ok |", "|---|---|---|---|"]
            lines += [f"| {c['name']} | {c['rel_err']:.1e} | {c['tol']:.0e} | "
                      f"{'yes' if c['ok'] else '**no**'} |" for c in sec["cases"]]
            lines.append("")
        elif sec and "replays" in sec:
            lines += ["## CUDA graph replay (decode captured once, other lengths replayed)", "",
                      "| max len | rel err | ok |", "|---|---|---|"]
            lines += [f"| {r['max_len']} | {r['rel_err']:.1e} | {r['ok']} |" for r in sec["replays"]]
            lines.append("")
    sec = sections.get("decode")
    if sec and "rows" in sec:
        lines += ["## Paged decode attention (32 q / 8 KV heads, d 128, bf16, block 16)", "",
                  "| context | batch | partitions | us | GB/s | % of copy | floor us |",
                  "|---|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            lines.append(f"| {r['context']} | {r['batch']} | {r['partitions']} | {r['us']:.1f} | "
                         f"{r['GBps']:.0f} | {r['pct_copy'] or 0:.0f}% | {r['floor_us'] or 0:.1f} |")
        lines.append("")
    sec = sections.get("prefill")
    if sec and "rows" in sec:
        lines += ["## Paged prefill attention (causal, 32 q / 8 KV heads, d 128, bf16)", "",
                  "| new tokens | cached prefix | ms | TFLOP/s | % of matmul | config |",
                  "|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            lines.append(f"| {r['q_len']} | {r['prefix']} | {r['ms']:.3f} | {r['TFLOPs']:.0f} | "
                         f"{r['pct_matmul'] or 0:.0f}% | {r['best_config']} |")
        lines.append("")
    if sec and sec.get("configs"):
        lines += ["Each autotune candidate alone (no prefix):", "",
                  "| tokens | config | ms | TFLOP/s |", "|---|---|---|---|"]
        lines += [f"| {r['q_len']} | {r['config']} | {r['ms']:.3f} | {r['TFLOPs']:.0f} |"
                  for r in sec["configs"]]
        lines.append("")
    sec = sections.get("sdpa")
    if sec and "rows" in sec:
        lines += ["## torch SDPA anchor (contiguous)", "", "| kind | shape | time | rate |",
                  "|---|---|---|---|"]
        for r in sec["rows"]:
            if r["kind"] == "prefill":
                lines.append(f"| prefill flash causal | S={r['seq']} | {r['ms']:.3f} ms | "
                             f"{r['TFLOPs']:.0f} TFLOP/s ({r['pct_matmul'] or 0:.0f}%) |")
            else:
                lines.append(f"| decode ({r['how']}) | B={r['batch']} ctx={r['context']} | "
                             f"{r['us']:.1f} us | {r['GBps']:.0f} GB/s ({r['pct_copy'] or 0:.0f}%) |")
        lines.append("")
    sec = sections.get("sweep")
    if sec and "rows" in sec:
        lines += ["## Decode launch sweep", "", "| config | split | B | ctx | us | GB/s |",
                  "|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            label = r.get("config") or f"N{r['BLOCK_N']} w{r['num_warps']} s{r['num_stages']}"
            lines.append(f"| {label} | {r['programs_per_sm']}/SM, >= {r['min_part_tokens']} | "
                         f"{r['batch']} | {r['context']} | {r['us']:.1f} | {r['GBps']:.0f} |")
        lines.append("")
    for name, sec in sections.items():
        if "error" in sec:
            lines += [f"## {name}: ERROR", "", "```", sec["error"][-3000:], "```", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--sections", default="check,graph,anchors,decode,prefill,sdpa")
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": os.environ.get("OCTAVO_COMMIT", "unknown"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
    }
    report = {"meta": meta, "sections": {}}
    ctx = {"quick": args.quick}
    for name in [s for s in args.sections.split(",") if s]:
        print(f"== {name}", flush=True)
        t0 = time.time()
        try:
            report["sections"][name] = SECTIONS[name](ctx)
        except Exception:
            report["sections"][name] = {"error": traceback.format_exc()}
            print(traceback.format_exc(), flush=True)
        report["sections"][name]["seconds"] = time.time() - t0
        torch.cuda.empty_cache()
        (out_dir / "kernels.json").write_text(json.dumps(report, indent=1, default=str))
        (out_dir / "kernels.md").write_text(markdown(report))
    failed = [n for n, s in report["sections"].items() if "error" in s or s.get("ok") is False]
    print(markdown(report))
    print("FAILED sections: " + ", ".join(failed) if failed else "all sections ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
