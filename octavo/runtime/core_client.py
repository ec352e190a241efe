"""The front's handle on the engine core process: starts it (multiprocessing spawn), owns the
ZeroMQ sockets (ipc:// in a temporary directory), waits for its Ready, sends requests and
receives step outputs. A core that died (a Dead message, or the process gone) raises
EngineCoreDeadError, never a hang."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import time
import weakref

import zmq

from octavo.runtime.config import EngineArgs
from octavo.runtime.core_protocol import Dead, Ready, Shutdown, StepOutputs, ToCore, encoder, from_core_decoder
from octavo.runtime.engine_core import run_engine_core

# How long the core may take to build the engine (load weights, size the KV cache, capture
# graphs) before the front gives up; the core's death ends the wait at once.
READY_TIMEOUT_S = float(os.environ.get("OCTAVO_ENGINE_CORE_READY_TIMEOUT_S") or 1800)
# How long the front gives a core to exit after Shutdown before it kills it.
SHUTDOWN_TIMEOUT_S = 30.0


class EngineCoreDeadError(RuntimeError):
    """The engine core process failed or exited; no request can be served."""


class EngineCoreClient:
    def __init__(self, engine_args: EngineArgs) -> None:
        self.socket_dir = tempfile.mkdtemp(prefix="octavo-core-")
        self.context = zmq.Context()
        self.to_core = self.context.socket(zmq.PUSH)
        self.to_core.setsockopt(zmq.LINGER, 0)
        self.from_core = self.context.socket(zmq.PULL)
        self.from_core.setsockopt(zmq.LINGER, 0)
        input_address = f"ipc://{self.socket_dir}/input"
        output_address = f"ipc://{self.socket_dir}/output"
        self.to_core.bind(input_address)
        self.from_core.bind(output_address)
        self.process = multiprocessing.get_context("spawn").Process(
            target=run_engine_core, args=(engine_args, input_address, output_address, os.getpid()),
            name="octavo-engine-core")
        self.process.start()
        self.dead: str | None = None
        # A pipe that ends a receive's wait early (ring): a request that arrives while the front
        # waits for the core's next step goes to the core now, to be in its inbox when that step
        # ends, instead of after it (one core step later).
        self._bell_read, self._bell_write = os.pipe()
        os.set_blocking(self._bell_read, False)
        os.set_blocking(self._bell_write, False)
        self.poller = zmq.Poller()
        self.poller.register(self.from_core, zmq.POLLIN)
        self.poller.register(self._bell_read, zmq.POLLIN)
        # Before the handshake: a front that fails to start must not leave the core behind.
        self._finalizer = weakref.finalize(self, _stop_core, self.process, self.to_core, self.context,
                                           self.socket_dir, (self._bell_read, self._bell_write))
        try:
            ready = self._wait_ready()
        except BaseException:
            self.shutdown()
            raise
        self.ready = ready

    def _wait_ready(self) -> Ready:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for message in self.receive(1.0):
                if isinstance(message, Ready):
                    return message
        raise EngineCoreDeadError(f"the engine core was not ready after {READY_TIMEOUT_S:.0f} s "
                                  "(OCTAVO_ENGINE_CORE_READY_TIMEOUT_S)")

    def send(self, message: ToCore) -> None:
        if self.dead is not None:
            raise EngineCoreDeadError(self.dead)
        self.to_core.send(encoder.encode(message))

    def ring(self) -> None:
        """End the current (or next) receive's wait now. Any thread may call it."""
        if not self._finalizer.alive:  # shut down: the descriptor may belong to another file now
            return
        with contextlib.suppress(BlockingIOError, OSError):  # full: a ring is pending anyway
            os.write(self._bell_write, b"\0")

    def receive(self, timeout_s: float) -> list[Ready | StepOutputs]:
        """The messages the core sent, waiting up to `timeout_s` for the first (less after a ring)."""
        if self.dead is not None:
            raise EngineCoreDeadError(self.dead)
        messages = []
        ready = dict(self.poller.poll(int(timeout_s * 1000)))
        if self._bell_read in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._bell_read, 4096)
        if ready.get(self.from_core):
            while True:
                try:
                    frame = self.from_core.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                message = from_core_decoder.decode(frame)
                if isinstance(message, Dead):
                    self.dead = f"the engine core process died: {message.error}"
                    raise EngineCoreDeadError(self.dead)
                messages.append(message)
        if not messages and not self.process.is_alive():
            self.dead = f"the engine core process exited (exit code {self.process.exitcode})"
            raise EngineCoreDeadError(self.dead)
        return messages

    def shutdown(self) -> None:
        self._finalizer()


def _stop_core(process: multiprocessing.Process, to_core: zmq.Socket, context: zmq.Context,
               socket_dir: str, bell: tuple[int, int]) -> None:
    """Ask the core to stop, wait for it (bounded), kill it if it does not, free the sockets."""
    if process.is_alive():
        try:
            to_core.send(encoder.encode(Shutdown()), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        process.join(SHUTDOWN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(5.0)
    context.destroy(linger=0)
    shutil.rmtree(socket_dir, ignore_errors=True)
    for fd in bell:
        with contextlib.suppress(OSError):
            os.close(fd)
