"""The device's two ceilings, measured in the same run, and the floors they imply.

- Copy bandwidth: one large device-to-device copy; bytes read + bytes written over its time.
- Matmul peak: an N x N x N matrix product (8192 in bf16 on a GPU); 2 N^3 over its time.
- Floors: a decode step must read every weight once and every context token's K/V once
  (bytes / bandwidth) and do 2 * params multiply-adds per token (flops / peak); the larger bounds
  the step from below. At batch 1 that is weight bytes / bandwidth.
"""

from __future__ import annotations

from typing import Any

from octavo.bench.measure import percentile


def _time_ms(fn, device: Any, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of fn(): CUDA events on a GPU, perf_counter elsewhere."""
    import time

    import torch

    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return percentile(samples, 50)


def _copy(device: Any, copy_bytes: int, generator: Any, repeats: int) -> tuple[float, int]:
    import torch

    src = torch.empty(copy_bytes // 2, dtype=torch.bfloat16, device=device).normal_(generator=generator)
    dst = torch.empty_like(src)
    return _time_ms(lambda: dst.copy_(src), device, repeats), 2 * src.numel() * src.element_size()


def _matmul(device: Any, size: int, dtype: Any, generator: Any, repeats: int) -> float:
    import torch

    a = torch.empty(size, size, dtype=dtype, device=device).normal_(generator=generator)
    b = torch.empty_like(a).normal_(generator=generator)
    out = torch.empty_like(a)
    ms = _time_ms(lambda: torch.mm(a, b, out=out), device, repeats)
    if not torch.isfinite(out).all():
        raise RuntimeError("the matmul produced non-finite values: the device or library is misbehaving")
    return ms


def measure(device: Any = None, copy_bytes: int | None = None, matmul_size: int | None = None,
            repeats: int = 20) -> dict:
    """Copy bandwidth (GB/s) and matmul rate (TFLOP/s) on `device`, on random data."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    copy_bytes = copy_bytes or (2 << 30 if on_gpu else 64 << 20)
    matmul_size = matmul_size or (8192 if on_gpu else 512)
    matmul_dtype = torch.bfloat16 if on_gpu else torch.float32  # CPU bf16 matmuls are not representative
    generator = torch.Generator(device=device).manual_seed(0)
    copy_ms, moved = _copy(device, copy_bytes, generator, repeats)
    matmul_ms = _matmul(device, matmul_size, matmul_dtype, generator, repeats)
    if on_gpu:
        torch.cuda.empty_cache()
    return {
        "device": str(device),
        "copy_bytes_moved": moved,
        "copy_ms": copy_ms,
        "copy_bandwidth_gbps": moved / (copy_ms * 1e-3) / 1e9,
        "matmul_size": matmul_size,
        "matmul_dtype": str(matmul_dtype).replace("torch.", ""),
        "matmul_ms": matmul_ms,
        "matmul_tflops": 2 * matmul_size ** 3 / (matmul_ms * 1e-3) / 1e12,
        "repeats": repeats,
        "statistic": "median",
    }


def decode_step_floor_ms(roofline: dict, facts: dict, batch_size: int, context_len: float) -> dict:
    """Lower bound of one decode step for `batch_size` sequences of mean `context_len` tokens."""
    bandwidth = roofline["copy_bandwidth_gbps"] * 1e9
    peak = roofline["matmul_tflops"] * 1e12
    bytes_read = facts["weight_bytes"] + batch_size * context_len * facts["kv_bytes_per_token"]
    flops = 2 * facts["num_params"] * batch_size
    memory_ms = bytes_read / bandwidth * 1e3
    compute_ms = flops / peak * 1e3
    return {"floor_ms": max(memory_ms, compute_ms), "memory_ms": memory_ms, "compute_ms": compute_ms,
            "bound": "memory" if memory_ms >= compute_ms else "compute"}


def prefill_floor_ms(roofline: dict, facts: dict, num_tokens: int) -> float:
    """Lower bound of a prefill of num_tokens tokens: its matmul flops at the measured peak (or the
    weight read, if larger)."""
    flops_ms = 2 * facts["num_params"] * num_tokens / (roofline["matmul_tflops"] * 1e12) * 1e3
    bytes_ms = facts["weight_bytes"] / (roofline["copy_bandwidth_gbps"] * 1e9) * 1e3
    return max(flops_ms, bytes_ms)


def throughput_floor(roofline: dict, facts: dict, requests: list, max_num_seqs: int) -> dict:
    """Lower bound on the time to serve `requests` (prompt_len, output_len) offline.

    Compute: 2 x params flops for every prompt and output token at the matmul peak. Memory: every
    decode step reads the weights, and there are at least output tokens / max_num_seqs steps; each
    output token reads the K/V of every token before it once. The larger of the two bounds the run
    (prefill and decode can overlap in mixed steps, so their sum would not be a floor)."""
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
    """The headline floors for the loaded model."""
    return {
        "decode_floor_bs1_ms": facts["weight_bytes"] / (roofline["copy_bandwidth_gbps"] * 1e9) * 1e3,
        "weight_bytes": facts["weight_bytes"],
    }
