"""What one all-reduce of a decode step's activations costs on a tensor-parallel group: the part of
a TP step's floor that no bandwidth gives (bench latency's roofline under tensor parallelism).

Every rank runs the same calls (ModelRunner.time_all_reduce mirrors them), so the collectives pair
up. On CUDA they are captured in one CUDA graph and replayed, as a decode step's are: the time is
the collective's own, without the host's launch cost. Elsewhere (gloo) a loop is timed."""

from __future__ import annotations

import time

import torch

from octavo.runtime.distributed import TPGroup


def time_all_reduce(group: TPGroup, rows: int, hidden: int, dtype: torch.dtype, device: torch.device,
                    repeats: int = 50) -> float:
    """Median milliseconds of one all-reduce of a [rows, hidden] tensor over `group`."""
    x = torch.zeros(rows, hidden, dtype=dtype, device=device)  # zeros: the sums never overflow
    for _ in range(3):  # warm up: communicators, buffers
        group.all_reduce(x)
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeats):
                group.all_reduce(x)
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / repeats)
        del graph
    else:
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats):
                group.all_reduce(x)
            samples.append((time.perf_counter() - t0) * 1e3 / repeats)
    return sorted(samples)[len(samples) // 2]
