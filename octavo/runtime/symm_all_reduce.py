"""A one-shot all-reduce over NVLink for the small tensors of decode steps, through torch's
symmetric memory: each rank copies its tensor into a buffer every peer can address, and one kernel
on each rank reads all the peers' buffers and sums (P2P loads; no NVLink multicast, which stays
off here, see distributed._SAFE_ENV).

Why: a decode step of a tensor-parallel Llama does 2 x layers + 2 all-reduces of a few KB to a few
hundred KB. NCCL spends about 22 us on each at TP 2 on NVLink with CUDA graphs
(bench/results/2026-11-22-tp-h200x2-session3.md), 3.6 ms of a 70B TP 4 step's 162; a one-shot
reduce is a few microseconds. vLLM answers the same with its custom all-reduce.

Off unless OCTAVO_SYMM_ALL_REDUCE_BYTES (the largest tensor it takes; default 0) is set, until a
multi-GPU measurement decides; larger tensors, float16 (torch's one-shot kernels take float32 and
bfloat16) and CPU groups keep NCCL or gloo. A caveat to weigh before it is on by default: its
kernel waits on its peers' signals with no timeout, so a worker that dies mid-step can leave rank
0's GPU waiting where NCCL's communicators would have been aborted (distributed.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger("octavo")

MAX_BYTES = int(os.environ.get("OCTAVO_SYMM_ALL_REDUCE_BYTES", "0"))
if not 0 <= MAX_BYTES <= 64 << 20 or MAX_BYTES % 256:
    raise ValueError(f"OCTAVO_SYMM_ALL_REDUCE_BYTES must be a multiple of 256 between 0 and {64 << 20} (each "
                     f"slot starts aligned), got {MAX_BYTES}")


def wanted(device_type: str, size: int, max_bytes: int = MAX_BYTES) -> bool:
    """Whether a group of `size` ranks on `device_type` builds the symmetric buffer."""
    return max_bytes > 0 and device_type == "cuda" and size > 1


class SymmetricAllReduce:
    """A symmetric buffer of SLOTS x max_bytes per rank of a group, rendezvoused once. Every member
    rank must construct it at the same point (the rendezvous is collective).

    Why slots: the one-shot kernel copies a rank's tensor into its buffer, waits for every peer at
    a barrier, then reads all of theirs; nothing stops a fast rank from copying its *next* tensor
    over a buffer a slow peer is still reading. Two all-reduces in a row never share a slot, so a
    rank overwrites a slot only after a later all-reduce's barrier, which every peer reaches only
    after it has finished reading. A forward's first all-reduce (the embedding's) takes slot 0,
    the rest cycle through slots 1.. from each forward's start: the order is the same in eager
    steps and in every captured graph, whatever ran before it."""

    SLOTS = 3

    def __init__(self, group: Any, device: torch.device, max_bytes: int = MAX_BYTES) -> None:
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = (group if group is not None else dist.group.WORLD).group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # needed by older torch, harmless after
            symm_mem.enable_symm_mem_for_group(self.group_name)
        self.max_bytes = max_bytes
        self.next_slot = 1
        self.buffer = symm_mem.empty(self.SLOTS * max_bytes, dtype=torch.uint8, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)
        self.fused_copy = hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy")  # copy + reduce, one kernel
        logger.info("tensor parallel: one-shot all-reduce through symmetric memory up to %d bytes (group %s)",
                    max_bytes, self.group_name)

    def fits(self, x: torch.Tensor) -> bool:
        return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float32) and x.is_contiguous()
                and x.numel() * x.element_size() <= self.max_bytes)

    def slot(self, first_of_forward: bool) -> int:
        """The slot of the next all-reduce (see the class's docstring)."""
        if first_of_forward:
            self.next_slot = 1
            return 0
        chosen = self.next_slot
        self.next_slot = chosen % (self.SLOTS - 1) + 1
        return chosen

    def all_reduce(self, x: torch.Tensor, first_of_forward: bool = False) -> torch.Tensor:
        """x summed over the group, as a new tensor (x is left as it was)."""
        flat = x.view(-1)
        start = self.slot(first_of_forward) * self.max_bytes
        staged = self.buffer[start:start + self.max_bytes].view(x.dtype)[: flat.numel()]
        if self.fused_copy:
            summed = torch.ops.symm_mem.one_shot_all_reduce_copy(staged, flat, "sum", self.group_name)
        else:
            staged.copy_(flat)
            summed = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)
        return summed.view(x.shape)
