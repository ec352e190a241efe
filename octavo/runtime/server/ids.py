"""Random ids for requests, responses and tool calls, drawn without a system call.

uuid4 reads os.urandom, a system call that releases the GIL; while the engine thread shares the
interpreter (an in-process engine), each release may hand it the GIL for up to a switch interval
(uuid4 took 8% of the event loop's samples in a CPU profile of a burst of requests). Ids must be
unique, not secret: one generator seeded from the OS (again in a forked child, so two processes
never share a sequence)."""

from __future__ import annotations

import os
import random

_GENERATOR = random.Random(os.urandom(32))


def _reseed() -> None:
    _GENERATOR.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def random_hex(length: int = 32) -> str:
    """`length` random lowercase hex digits (32 by default: as many bits as a UUID)."""
    return f"{_GENERATOR.getrandbits(4 * length):0{length}x}"
