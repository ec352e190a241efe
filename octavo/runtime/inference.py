"""`@inference`: a function runs under torch.inference_mode, entered only if it is not on already.

Why: the engine enters inference mode once per step; a decorator that entered it again in every
runner and drafting call cost microseconds each (Python context managers), which is real time
next to a small model's sub-millisecond step.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def inference(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
