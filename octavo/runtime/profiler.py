"""The torch profiler over engine steps: what start_profile / stop_profile (the `LLM` methods and
the server's POST /start_profile, /stop_profile, as vLLM has them) turn on and off.

It is driven by the engine's own steps, on the thread that runs them (the profiler records the
thread it was started on), so the caller only asks: a start or stop takes effect at the next step
boundary, `delay_iterations` steps are skipped first and at most `max_iterations` recorded. While
it records, the engine marks its phases (`phase()`: octavo::schedule, octavo::launch, ...), which
`octavo bench profile` turns into host milliseconds per phase and the GPU's busy fraction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch

from octavo.runtime.config import ProfilerConfig

logger = logging.getLogger("octavo")

PHASE_PREFIX = "octavo::"
NO_PROFILER = ("no profiler is configured: set --profiler-config "
               "'{\"profiler\": \"torch\", \"torch_profiler_dir\": DIR}' or $VLLM_TORCH_PROFILER_DIR")


class ProfilerNotConfigured(RuntimeError):
    """start_profile / stop_profile on an engine built without a profiler (the server's 400)."""


_NOT_RECORDING = contextlib.nullcontext()  # reusable: a nullcontext keeps no state


class StepProfiler:
    def __init__(self, config: ProfilerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.wanted = False  # what the last start/stop asked for
        self.delay = 0  # steps still to skip before recording
        self.recorded = 0  # steps recorded by the running profile
        self.profile: torch.profiler.profile | None = None
        self.traces: list[Path] = []  # written so far, oldest first

    @property
    def recording(self) -> bool:
        return self.profile is not None

    def start(self) -> None:
        """Record from the next step on (after `delay_iterations` steps)."""
        self.wanted, self.delay = True, self.config.delay_iterations

    def stop(self) -> None:
        """Stop at the next step boundary, or now if no step is coming (an idle engine)."""
        self.wanted = False

    def phase(self, name: str):
        """A named range in the trace while recording; nothing (a shared no-op) otherwise."""
        if self.profile is None:
            return _NOT_RECORDING
        return torch.profiler.record_function(PHASE_PREFIX + name)

    def before_step(self) -> None:
        if self.wanted and self.profile is None:
            if self.delay > 0:
                self.delay -= 1
                return
            self._begin()

    def after_step(self) -> None:
        if self.profile is None:
            return
        self.recorded += 1
        limit = self.config.max_iterations
        if not self.wanted or (limit and self.recorded >= limit):
            self.wanted = self.wanted and not limit  # a limited profile ends; ask again for another
            self._end()

    def idle(self) -> None:
        """The engine has nothing to step: a stop asked for takes effect now."""
        if self.profile is not None and not self.wanted:
            self._end()

    def _begin(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profile = torch.profiler.profile(activities=activities, with_stack=self.config.torch_profiler_with_stack,
                                              record_shapes=self.config.torch_profiler_record_shapes)
        self.profile.start()
        self.recorded = 0

    def _end(self) -> None:
        profile, self.profile = self.profile, None
        profile.stop()
        directory = Path(self.config.torch_profiler_dir)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = ".pt.trace.json.gz" if self.config.torch_profiler_use_gzip else ".pt.trace.json"
        path = directory / f"octavo-{os.getpid()}-{time.time_ns()}{suffix}"
        profile.export_chrome_trace(str(path))  # a .gz name is written gzipped
        self.traces.append(path)
        logger.info("profile of %d steps written to %s", self.recorded, path)
