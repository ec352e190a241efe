"""Graceful shutdown for Kubernetes rolling updates.

On SIGTERM (or Ctrl-C) the server does not close its socket at once, as plain uvicorn would:
it starts draining. /health turns 503 (readiness fails, the Service stops routing here), new API
requests get 503, and requests in flight run to completion. When none is left, or when the grace
period (`--shutdown-timeout`) is over and the stragglers have been aborted, uvicorn shuts down and
the process exits 0. A second signal stops at once.

When the engine loop dies, the process exits 1 a short grace after (ServerSettings.
engine_death_grace), so Kubernetes restarts it at once instead of after liveness probes fail.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn

from octavo.runtime.server.state import ServingState

logger = logging.getLogger("octavo.server")

_ABORT_WAIT = 5.0  # after aborting the stragglers, how long their handlers get to answer


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with a drain between the signal and the exit."""

    def __init__(self, config: uvicorn.Config, state: ServingState, grace_period: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_period = grace_period
        self.drain_deadline: float | None = None
        self._abort_deadline: float | None = None
        self._announced = False
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: set fields only (no logging, no asyncio).
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.grace_period
            self.state.start_drain()
        else:
            self.should_exit = True
            self.force_exit = True

    def request_drain(self) -> None:
        """What SIGTERM does, for callers that are not signal handlers (tests, embedding)."""
        self.handle_exit(0, None)

    async def on_tick(self, counter: int) -> bool:
        died_at = self.state.engine_died_at
        if died_at is not None and not self.should_exit:
            # A dead engine cannot come back: exit non-zero once in-flight requests had a moment
            # to send their error, so the pod restarts now rather than at the liveness probe.
            if time.monotonic() >= died_at + self.state.settings.engine_death_grace:
                logger.error("the engine loop died: exiting 1 so that the process is restarted")
                self.exit_code = 1
                self.should_exit = True
        if self.drain_deadline is not None and not self.should_exit:
            await self._drain_step()
        return await super().on_tick(counter)

    async def _drain_step(self) -> None:
        in_flight = self.state.num_api_requests
        if not self._announced:
            self._announced = True
            logger.info("draining: %d request(s) in flight, up to %.0fs to finish", in_flight, self.grace_period)
        now = time.monotonic()
        if in_flight == 0:
            logger.info("drained: shutting down")
            self.should_exit = True
        elif self._abort_deadline is None and now >= self.drain_deadline:
            aborted = await self.state.abort_all()
            logger.warning("grace period over: aborted %d request(s)", aborted)
            self._abort_deadline = now + _ABORT_WAIT
        elif self._abort_deadline is not None and now >= self._abort_deadline:
            logger.warning("%d request(s) still open after the abort: shutting down anyway", in_flight)
            self.should_exit = True
