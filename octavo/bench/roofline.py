"""The device's two ceilings, measured in the same run, and the floors they imply: copy bandwidth
(one large device-to-device copy, bytes read + written over its time) and the matmul peak (N^3,
8192 in bf16 on a GPU). A decode step must read every weight and every context token's K/V once
and do 2 x params multiply-adds per token; the larger bound is its floor."""

from __future__ import annotations

import time
from typing import Any

from octavo.bench.measure import percentile


def time_ms(fn, device: Any, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of fn(): CUDA events on a GPU, perf_counter elsewhere."""
    import torch

    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return percentile(samples, 50)


def measure(device: Any = None, repeats: int = 20) -> dict:
    """Copy bandwidth (GB/s) and matmul rate (TFLOP/s) on `device`, on random data (2 GiB and 8192^3
    on a GPU, 64 MiB and 512^3 on a CPU), medians of `repeats` runs."""
    import torch

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device)
    on_gpu = device.type == "cuda"
    size = 8192 if on_gpu else 512
    dtype = torch.bfloat16 if on_gpu else torch.float32  # CPU bf16 matmuls are not representative
    generator = torch.Generator(device=device).manual_seed(0)
    src = torch.empty((2 << 30 if on_gpu else 64 << 20) // 2, dtype=torch.bfloat16, device=device)
    src.normal_(generator=generator)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device, repeats)
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    a = torch.empty(size, size, dtype=dtype, device=device).normal_(generator=generator)
    b, out = torch.empty_like(a).normal_(generator=generator), torch.empty_like(a)
    matmul_ms = time_ms(lambda: torch.mm(a, b, out=out), device, repeats)
    if not torch.isfinite(out).all():
        raise RuntimeError("the matmul produced non-finite values: the device or library is misbehaving")
    del a, b, out
    if on_gpu:
        torch.cuda.empty_cache()
    return {"device": str(device), "copy_bytes_moved": moved, "copy_ms": copy_ms,
            "copy_bandwidth_gbps": moved / (copy_ms * 1e-3) / 1e9, "matmul_size": size,
            "matmul_dtype": str(dtype).replace("torch.", ""), "matmul_ms": matmul_ms,
            "matmul_tflops": 2 * size ** 3 / (matmul_ms * 1e-3) / 1e12, "repeats": repeats, "statistic": "median"}


def decode_step_floor_ms(roofline: dict, facts: dict, batch_size: int, context_len: float,
                         all_reduce_ms: float = 0.0) -> dict:
    """Lower bound of one decode step for `batch_size` sequences of mean `context_len` tokens. Under
    tensor parallelism `facts` are one rank's (its shard of the weights, its KV heads) and the step
    also waits for its collectives: facts["collectives_per_step"] of `all_reduce_ms` each (measured
    on the group: collective_timing.py), which no bandwidth hides."""
    bytes_read = facts["weight_bytes"] + batch_size * context_len * facts["kv_bytes_per_token"]
    memory_ms = bytes_read / (roofline["copy_bandwidth_gbps"] * 1e9) * 1e3
    compute_ms = 2 * facts["num_params"] * batch_size / (roofline["matmul_tflops"] * 1e12) * 1e3
    collective_ms = facts.get("collectives_per_step", 0) * all_reduce_ms
    return {"floor_ms": max(memory_ms, compute_ms) + collective_ms, "memory_ms": memory_ms,
            "compute_ms": compute_ms, "collective_ms": collective_ms,
            "bound": "memory" if memory_ms >= compute_ms else "compute"}


def prefill_floor_ms(roofline: dict, facts: dict, num_tokens: int) -> float:
    """Lower bound of a prefill: its matmul flops at the peak, or the weight read if larger."""
    flops_ms = 2 * facts["num_params"] * num_tokens / (roofline["matmul_tflops"] * 1e12) * 1e3
    return max(flops_ms, facts["weight_bytes"] / (roofline["copy_bandwidth_gbps"] * 1e9) * 1e3)


def throughput_floor(roofline: dict, facts: dict, requests: list, max_num_seqs: int) -> dict:
    """Lower bound on the time to serve `requests` offline: compute (2 x params flops per token at
    the peak) or memory (weights read by at least output tokens / max_num_seqs steps, each output
    token reading every earlier token's K/V once), the larger (prefill and decode overlap)."""
    tokens = sum(r.prompt_len + r.output_len for r in requests)
    output_tokens = sum(r.output_len for r in requests)
    compute_s = 2 * facts["num_params"] * tokens / (roofline["matmul_tflops"] * 1e12)
    kv_token_reads = sum(r.output_len * r.prompt_len + r.output_len * (r.output_len - 1) / 2 for r in requests)
    min_steps = -(-output_tokens // max_num_seqs)
    memory_bytes = min_steps * facts["weight_bytes"] + kv_token_reads * facts["kv_bytes_per_token"]
    memory_s = memory_bytes / (roofline["copy_bandwidth_gbps"] * 1e9)
    floor_s = max(compute_s, memory_s)
    return {"floor_s": floor_s, "compute_s": compute_s, "memory_s": memory_s,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "ceiling_output_tokens_per_s": output_tokens / floor_s, "max_num_seqs": max_num_seqs}


def summary(roofline: dict, facts: dict) -> dict:
    """The headline floor for the loaded model: batch-1 decode = weight bytes / copy bandwidth."""
    return {"decode_floor_bs1_ms": facts["weight_bytes"] / (roofline["copy_bandwidth_gbps"] * 1e9) * 1e3,
            "weight_bytes": facts["weight_bytes"]}
