"""What one engine step did: the record the engine emits after every step.

Adaptive k learns from it (spec/controller.py), the engine's counters (and with them /metrics)
add it up, and with OCTAVO_STEP_TRACE=PATH set every record is appended to PATH as a JSON line,
which `octavo bench spec --trace` summarises. Nobody needs to reach into the engine to see a step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass


# Upper bounds of the tokens-per-step histogram EngineStats keeps (vLLM's iteration_tokens_total)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(slots=True)
class StepRecord:
    started: float  # time.perf_counter() at the step's start (before any draft work)
    duration: float  # seconds until its outputs were built
    num_requests: int  # requests the step computed tokens for
    num_decoding: int  # of those, requests past their prompt (one token, plus drafts)
    num_prefill_tokens: int  # prompt tokens computed (0 on a pure decode step)
    k_asked: int  # draft tokens per request adaptive k asked for (0: plain decoding or not asked)
    k: int  # the most drafts any request verified (0: a plain step)
    num_speculated: int  # requests that verified at least one draft
    num_drafted: int  # drafts verified, over the batch
    num_accepted: int  # of those, accepted
    num_judged: int  # drafts the target judged: the accepted, and each request's first rejected one
    num_emitted: int  # tokens appended, over the batch


class StepTrace:
    """Appends each record to a file as a JSON line (line-buffered: a killed server keeps its trace)."""

    ENV = "OCTAVO_STEP_TRACE"

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)

    @classmethod
    def from_env(cls) -> "StepTrace | None":
        path = os.environ.get(cls.ENV)
        return cls(path) if path else None

    def write(self, record: StepRecord) -> None:
        self.file.write(json.dumps(asdict(record)) + "\n")
