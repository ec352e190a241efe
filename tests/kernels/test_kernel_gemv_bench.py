"""`octavo bench kernels --parts gemv` end to end on tiny shapes, interpreted, with the timing
faked: the bench's own code (each point, the sweep, a config that fails, the report) runs here
before device minutes are spent on it. The numbers come from the suite's gemv phase on a GPU."""

from __future__ import annotations

import json
import math
import os

import pytest

ON_CUDA = os.environ.get("OCTAVO_KERNEL_TESTS_DEVICE") == "cuda"  # as conftest.py reads it


def test_the_gemv_part_runs_its_points_sweeps_and_report(kernels, monkeypatch, tmp_path):
    if ON_CUDA:
        pytest.skip("on a GPU the suite's gemv phase runs the real thing")
    import torch

    from octavo.bench import kernels as bench_kernels
    from octavo.cli import main

    timed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_kernels, "graph_ms", lambda fns, replays, device: timed.append(len(fns)) or 0.5)
    monkeypatch.setattr(bench_kernels, "GEMV_SHAPES", (("qkv", 64, 96, "norm"), ("o_proj", 64, 64, None),
                                                       ("down", 128, 64, "silu")))
    monkeypatch.setattr(bench_kernels, "GEMV_TOKENS", (1, 4))
    monkeypatch.setattr(bench_kernels, "GEMV_SWEEP_ONE_ROW", (dict(block_n=4, block_k=32, num_warps=4, num_stages=1),
                                                              dict(block_n=3, block_k=32, num_warps=4, num_stages=1)))
    monkeypatch.setattr(bench_kernels, "GEMV_SWEEP_ROWS", (dict(block_n=8, block_k=16, num_warps=4, num_stages=1),))
    out = tmp_path / "out"
    assert main(["bench", "kernels", "--parts", "gemv", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(next(out.glob("*.json")).read_text())
    rows = result["gemv"]
    assert [(r["name"], r["tokens"]) for r in rows] == [(n, t) for n in ("qkv", "o_proj", "down") for t in (1, 4)]
    assert not result["failed"] and all(r["rel_err"] < 2e-2 for r in rows)
    for row in rows:
        assert row["unfused_us"] == row["gemv_us"] == 500.0  # the faked 0.5 ms
        if row["tokens"] == 1:  # the good config timed and checked, the bad one (BLOCK_N 3) recorded as failed
            good, bad = row["sweep"]
            assert good["us"] == 500.0 and good["rel_err"] < 2e-2
            assert math.isinf(bad["us"]) and bad["error"]
        else:
            assert len(row["sweep"]) == 1 and row["sweep"][0]["rel_err"] < 2e-2
    markdown = next(out.glob("*.md")).read_text()
    assert "| qkv | norm | 1 | 500.0 |" in markdown and "(n4 k32 w4 s1)" in markdown
