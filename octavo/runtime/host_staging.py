"""Host-to-device copies that never wait for the GPU.

A copy from pageable host memory makes the CUDA driver synchronise the stream before it starts
(CUDA runtime API, "API synchronization behavior"): under asynchronous scheduling, the next step's
inputs would wait for the step still running, and the overlap would be gone. So every copy of a
step goes through page-locked memory from torch's pinned caching allocator, which does not hand a
buffer out again before the copies that read it have run. A step's arrays share one pinned slab
and one copy. On a CPU the tensors are returned as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ALIGN = 16  # bytes: each array of a slab starts where a fresh allocation would be aligned for Triton


def stage(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Host tensors on `device`, in one pinned slab and one non-blocking copy. The host side
    writes through numpy and the device side slices one view per dtype: a small step's arrays
    cost more in per-tensor torch calls than in copying (a step's seven arrays: 100 us -> 45 us
    on a 2-core CI machine)."""
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    offsets, total = slab_layout(tensors)
    slab = torch.empty(max(total, ALIGN), dtype=torch.uint8, pin_memory=True)
    write_slab(slab, tensors, offsets)
    return slab_views(slab.to(device, non_blocking=True), tensors, offsets)


def slab_layout(tensors: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    """Each tensor's byte offset in a slab (ALIGN-aligned), and the slab's size."""
    offsets, total = [], 0
    for tensor in tensors:
        offsets.append(total)
        total += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    return offsets, total


def write_slab(slab: torch.Tensor, tensors: Sequence[torch.Tensor], offsets: list[int]) -> None:
    """Copy each (CPU) tensor's bytes into the uint8 CPU `slab` at its offset."""
    host = slab.numpy()
    for tensor, offset in zip(tensors, offsets):
        try:
            raw = np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8)
        except TypeError:  # a dtype numpy lacks (bfloat16, float8): its bytes through torch
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        host[offset : offset + raw.size] = raw


def slab_views(slab: torch.Tensor, tensors: Sequence[torch.Tensor], offsets: list[int]) -> list[torch.Tensor]:
    """Views of a uint8 `slab` (on any device) shaped and typed as `tensors`: one view per dtype,
    then a slice (and a reshape for more than one dimension) per tensor."""
    by_dtype: dict[torch.dtype, torch.Tensor] = {}
    placed = []
    for tensor, offset in zip(tensors, offsets):
        typed = by_dtype.get(tensor.dtype)
        if typed is None:
            typed = by_dtype[tensor.dtype] = slab.view(tensor.dtype)  # offsets are ALIGN-aligned
        start = offset // tensor.element_size()
        flat = typed[start : start + tensor.numel()]
        placed.append(flat if tensor.dim() == 1 else flat.view(tensor.shape))
    return placed


# torch dtypes of the per-step lists, and numpy's spelling of them.
NUMPY_DTYPES = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32, torch.bool: np.bool_}


def host_tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
    """A Python list as a CPU tensor. numpy converts a list about 4x faster than torch.tensor does
    (1.5 us against 5.9 us for one int, 3.7 against 15.5 us for 64, on a 2-core CI machine), and a
    step converts several; other dtypes (bfloat16, half: penalties in a model's dtype) go through torch."""
    numpy_dtype = NUMPY_DTYPES.get(dtype)
    if numpy_dtype is None:
        return torch.tensor(values, dtype=dtype)
    return torch.from_numpy(np.array(values, dtype=numpy_dtype))


def to_device(values: list | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list (or CPU tensor) as a `dtype` tensor on `device`, without waiting for the device."""
    tensor = values.to(dtype) if isinstance(values, torch.Tensor) else host_tensor(values, dtype)
    if device.type != "cuda":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
