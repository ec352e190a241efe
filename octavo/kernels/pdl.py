"""Programmatic dependent launch (Hopper and later): a kernel launched with it may be scheduled
while the kernel before it on the stream still runs, and waits on the device (gdc_wait) until
that one has finished and its writes are visible. In a CUDA graph of small kernels, the next
kernel's launch and scheduling then overlap the previous one's tail instead of following it.

Every kernel that opts in calls `wait_for_previous_kernel` before touching memory, and lets its
own dependents start at once (they wait too). OCTAVO_PDL=1 turns it on (off until measured); it
is never on on the CPU or under TRITON_INTERPRET.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_WANTED = os.environ.get("OCTAVO_PDL", "0") == "1" and os.environ.get("TRITON_INTERPRET", "0") != "1"
_CAPABLE: dict[int, bool] = {}


def enabled(device: torch.device) -> bool:
    if not _WANTED or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _CAPABLE[index]


def launch_args(device: torch.device) -> dict:
    """Keyword arguments for a launch of a kernel that takes USE_PDL."""
    return {"USE_PDL": True, "launch_pdl": True} if enabled(device) else {"USE_PDL": False}


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
