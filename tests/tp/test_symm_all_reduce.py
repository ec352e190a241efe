"""The one-shot all-reduce's switch (octavo/runtime/symm_all_reduce.py): which groups build a
symmetric buffer, which tensors take it, and that everything else keeps the process group's
all-reduce. The one-shot kernel itself needs GPUs joined by NVLink: `bash bench/run_gpu_suite.sh tp`
runs the TP tests with it on."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from octavo.runtime import symm_all_reduce
from octavo.runtime.distributed import TPGroup


def test_only_multi_rank_cuda_groups_with_a_size_build_one():
    assert symm_all_reduce.wanted("cuda", 4, max_bytes=1 << 19)
    assert not symm_all_reduce.wanted("cuda", 1, max_bytes=1 << 19)
    assert not symm_all_reduce.wanted("cpu", 4, max_bytes=1 << 19)
    assert not symm_all_reduce.wanted("cuda", 4, max_bytes=0)
    assert symm_all_reduce.MAX_BYTES == 0  # off unless asked for


@pytest.mark.parametrize("value", [str(65 << 20), "1000"])
def test_the_switch_is_checked_at_import(value):
    code = "import octavo.runtime.symm_all_reduce"
    env = {"OCTAVO_SYMM_ALL_REDUCE_BYTES": value, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "OCTAVO_SYMM_ALL_REDUCE_BYTES must be a multiple of 256" in done.stderr


class FakeOneShot:
    """Stands in for SymmetricAllReduce: what fits takes it (returning a new tensor)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.calls = max_bytes, 0

    def fits(self, x: torch.Tensor) -> bool:
        return x.numel() * x.element_size() <= self.max_bytes

    def all_reduce(self, x: torch.Tensor, first_of_forward: bool = False) -> torch.Tensor:
        self.calls += 1
        return x * 2  # two ranks holding the same tensor


def test_a_group_sends_what_fits_to_the_one_shot_path_and_the_rest_to_the_process_group(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda x, group=None: calls.append(x.numel()) or x.add_(x))
    one_shot = FakeOneShot(max_bytes=64)
    group = TPGroup(rank=0, size=2, one_shot=one_shot)
    small, large = torch.ones(4, 4), torch.ones(8, 8)  # 64 and 256 bytes
    assert torch.equal(group.all_reduce(small), torch.full((4, 4), 2.0)) and one_shot.calls == 1 and not calls
    assert torch.equal(group.all_reduce(large), torch.full((8, 8), 2.0)) and calls == [64]
    assert torch.equal(TPGroup(0, 1, one_shot=one_shot).all_reduce(small), small) and one_shot.calls == 1


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="the CPU's view")
def test_a_cpu_tensor_never_fits():
    fake = symm_all_reduce.SymmetricAllReduce.__new__(symm_all_reduce.SymmetricAllReduce)
    fake.max_bytes = 1 << 20
    assert not fake.fits(torch.ones(4))


def test_no_two_all_reduces_in_a_row_share_a_slot_across_forwards_and_graphs():
    """Forwards of 2 x layers + 1 all-reduces (the embedding's first), in any order and however
    many: consecutive calls never reuse a slot, and each forward's sequence is the same (as a
    captured graph replays it)."""
    one_shot = symm_all_reduce.SymmetricAllReduce.__new__(symm_all_reduce.SymmetricAllReduce)
    one_shot.next_slot = 2  # whatever an earlier forward left

    def forward(count: int) -> list[int]:
        return [one_shot.slot(first_of_forward=i == 0) for i in range(count)]

    sequences = [forward(n) for n in (65, 65, 3, 161, 2, 65)]
    assert sequences[0] == sequences[1] == sequences[5] and sequences[0][:4] == [0, 1, 2, 1]
    flat = [slot for sequence in sequences for slot in sequence]
    assert all(a != b for a, b in zip(flat, flat[1:]))
    assert set(flat) == {0, 1, 2} and symm_all_reduce.SymmetricAllReduce.SLOTS == 3
