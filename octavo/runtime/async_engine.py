"""AsyncLLMEngine: the engine behind an asyncio API, for servers.

The engine runs in one background thread (model steps block, and the event loop must keep
serving HTTP). Requests and aborts reach it through a thread-safe queue; outputs come back to the
requests' asyncio queues, one `call_soon_threadsafe` per step for all of them (each call writes to
the loop's wake-up socket, a system call that hands the GIL to the other thread). A consumer that
stops iterating (client gone, task cancelled) aborts its request, which frees its KV blocks on the
engine thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from octavo.runtime.config import AsyncEngineArgs, EngineArgs
from octavo.runtime.engine import LLMEngine, PromptType
from octavo.runtime.front_engine import FrontEngine, build_engine
from octavo.runtime.outputs import RequestOutput
from octavo.runtime.sampling_params import SamplingParams
from octavo.runtime.structured.compiler import GrammarError

logger = logging.getLogger("octavo")

# How long the engine thread may hold the GIL while the event loop waits for it, during the step
# after one that produced first tokens (Python's default, 5 ms, everywhere else). That step's
# host work (a draft's catch-up over a whole prompt: milliseconds of Python) could keep the event
# loop from streaming the first tokens for a whole default interval. Only that step: a short
# interval everywhere breaks the overlap of the engine's GPU waits with the event loop's
# streaming (a sweep with 0.5 ms throughout: the demo model's time per token 1.13 ms at
# concurrency 1, against 0.64 and 0.62 ms in the sweeps after it, H100).
# OCTAVO_FIRST_TOKEN_SWITCH_INTERVAL_S overrides it; 0 turns it off.
FIRST_TOKEN_SWITCH_INTERVAL_S = float(os.environ.get("OCTAVO_FIRST_TOKEN_SWITCH_INTERVAL_S") or 0.0005)

# Test-only: the engine loop raises once the engine has taken this many steps, as a crash in a
# step would (the served process's engine-death test sets it).
FAULT_AFTER_STEPS_ENV = "OCTAVO_TEST_ENGINE_FAULT_AFTER_STEPS"


class _EngineProfile:
    """OCTAVO_ENGINE_PROFILE=PATH: the engine thread runs under cProfile, and whenever it goes idle
    (at most every 5 s) its statistics so far are written to PATH (pstats format), so a server
    that is killed still leaves them. For host-time questions that only a served engine shows
    (the event loop's streaming shares the GIL with the steps)."""

    def __init__(self, path: str) -> None:
        import cProfile

        self.path = path
        self.profile = cProfile.Profile()
        self.written = 0.0

    def idle(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.written >= 5.0:
            self.profile.disable()
            self.profile.dump_stats(self.path)
            self.profile.enable()
            self.written = now


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an error; no request can be served."""


class RequestFailedError(RuntimeError):
    """The engine failed this one request (its own processing raised); the others go on."""


@dataclass
class _Add:
    request_id: str
    prompt: PromptType
    params: SamplingParams
    arrival_time: float
    stream: "_Stream"


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    """Run `fn` on the engine thread between steps (what must not race a step: the profiler)."""

    fn: Callable[[], Any]
    result: concurrent.futures.Future


class _Stream:
    """One request's outputs, handed from the engine thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.started = False  # whether an output went out (the engine thread's view)
        # The engine's gauge publication current when the engine took the request in (-1: not
        # yet): any later publication counts its sequences (AsyncLLMEngine.sequence_counts).
        self.added_at: int = -1

    def put(self, item: RequestOutput | BaseException | None) -> None:
        deliver({self.loop: [(self.queue, item)]})


Delivery = tuple[asyncio.Queue, "RequestOutput | BaseException | None"]


def _put_all(deliveries: list[Delivery]) -> None:
    for stream_queue, item in deliveries:
        stream_queue.put_nowait(item)


def deliver(deliveries: dict[asyncio.AbstractEventLoop, list[Delivery]]) -> None:
    """Hand items (one step's outputs, or one error) to their consumers' event loops, one wake-up
    per loop."""
    for loop, batch in deliveries.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the loop is closed: nobody can listen there any more. Its requests end
            pass  # on their aborts or limits; this must not kill the engine loop serving the rest.


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine | FrontEngine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stop = threading.Event()
        self.errored: BaseException | None = None
        # (publication number, running sequences, waiting sequences), replaced as one tuple by
        # the engine thread after every step and every batch of adds/aborts, so a reader on
        # another thread never sees a count from one moment and a number from another.
        self._counts: tuple[int, int, int] = (0, 0, 0)
        self._death_callbacks: list[Callable[[BaseException], None]] = []
        self._death_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="octavo-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs | AsyncEngineArgs, **_: Any) -> "AsyncLLMEngine":
        return cls(build_engine(engine_args))

    # ---- status ------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.errored is None and not self._stop.is_set()

    @property
    def is_stopped(self) -> bool:
        return not self._thread.is_alive()

    async def check_health(self) -> None:
        if not self.is_running:
            raise EngineDeadError(f"engine loop is not running: {self.errored!r}")

    def get_tokenizer(self):
        return self.engine.tokenizer

    async def check_structured_outputs(self, spec, timeout: float) -> None:
        """Raise GrammarError if `spec` does not compile; return at once when it does or after
        `timeout` seconds (the engine then waits for it). The compile runs on the compiler's worker
        thread and is cached, so the engine's request finds it done."""
        compiler = self.engine.grammar_compiler
        if compiler is None:
            raise GrammarError("structured outputs need the model's tokenizer (this model has none)")
        future = asyncio.wrap_future(compiler.submit(spec))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            logger.warning("a grammar took over %.0f s to compile; its request waits for it in the engine", timeout)

    async def get_model_config(self):
        return self.engine.config.model_config

    @property
    def stats(self):
        return self.engine.stats

    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        """Call `callback(error)` once if the engine loop dies (on the engine thread; at once
        when it is dead already). It must only set state: no asyncio, no blocking."""
        with self._death_lock:
            if self.errored is None:
                self._death_callbacks.append(callback)
                return
        callback(self.errored)

    def sequence_counts(self) -> tuple[int, int, int]:
        """(publication, running sequences, waiting sequences) as the engine thread last published
        them; a request whose `added_at(...)` is below the publication is counted in them."""
        return self._counts

    def added_at(self, request_id: str) -> int:
        """The publication current when the engine took the request in; -1 while it has not (or
        when it is unknown)."""
        stream = self._streams.get(request_id)
        return stream.added_at if stream is not None else -1

    def _publish_counts(self) -> None:
        running, waiting = self.engine.sequence_counts()  # read here, on the engine thread, between steps
        self._counts = (self._counts[0] + 1, running, waiting)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    # ---- requests ----------------------------------------------------------------------------
    async def generate(self, prompt: PromptType, sampling_params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs as they are produced (cumulative by default)."""
        if self.errored is not None or not self._thread.is_alive():
            raise EngineDeadError(f"engine loop is not running: {self.errored!r}")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        self._send(_Add(request_id, prompt, sampling_params, time.monotonic(), stream))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item is None:  # aborted
                    finished = True
                    return
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send(_Abort(request_id))

    async def abort(self, request_id: str) -> None:
        self._send(_Abort(request_id))
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put(None)

    async def start_profile(self) -> None:
        """Profile from the next step on (vLLM's; RuntimeError when no profiler is configured)."""
        await self._on_engine_thread(self.engine.start_profile)

    async def stop_profile(self) -> None:
        """Stop profiling; returns once the trace is written or will be after the current step."""
        await self._on_engine_thread(self.engine.stop_profile)

    async def _on_engine_thread(self, fn: Callable[[], Any]) -> Any:
        if not self.is_running:
            raise EngineDeadError(f"engine loop is not running: {self.errored!r}")
        call = _Call(fn, concurrent.futures.Future())
        self._send(call)
        if not self.is_running:  # it stopped meanwhile: nobody may be left to run the call
            self._fail_pending_calls()
        return await asyncio.wrap_future(call.result)

    def _fail_pending_calls(self) -> None:
        """Answer every call still queued with EngineDeadError (the loop has stopped), so that no
        caller waits forever; requests and aborts queued with them need no answer."""
        error = EngineDeadError(f"engine loop is not running: {self.errored!r}")
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, _Call) and not message.result.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    message.result.set_exception(error)

    def _send(self, message: _Add | _Abort | _Call) -> None:
        self._inbox.put(message)
        self._wakeup.set()
        self.engine.wake()  # a FrontEngine waiting for its core takes the message in now

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wakeup.set()
        self._thread.join(timeout)
        self.engine.shutdown()  # tensor-parallel workers go with the engine

    # ---- the engine thread -------------------------------------------------------------------
    def _drain_inbox(self, owners: dict[str, _Stream]) -> None:
        took_any = False
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            took_any = True
            if isinstance(message, _Call):
                try:
                    message.result.set_result(message.fn())
                except Exception as exc:  # noqa: BLE001 - the caller hears it; the loop goes on
                    message.result.set_exception(exc)
                continue
            if isinstance(message, _Abort):
                self.engine.abort_request(message.request_id)
                owners.pop(message.request_id, None)
                continue
            try:
                self.engine.add_request(message.request_id, message.prompt, message.params, message.arrival_time)
                owners[message.request_id] = message.stream
                message.stream.added_at = self._counts[0]
            except Exception as exc:  # noqa: BLE001 - whatever a request's input breaks fails it alone,
                message.stream.put(exc)  # never the engine loop that serves everyone else
        if took_any:
            self._publish_counts()

    def _loop(self) -> None:
        path = os.environ.get("OCTAVO_ENGINE_PROFILE")
        profile = _EngineProfile(path) if path else None
        if profile is not None:
            profile.profile.enable()
        try:
            self._serve(profile)
        finally:
            self._fail_pending_calls()
            if profile is not None:
                profile.profile.disable()
                profile.idle(force=True)

    def _serve(self, profile: "_EngineProfile | None") -> None:
        owners: dict[str, _Stream] = {}
        after_first_tokens = False
        fault_after = os.environ.get(FAULT_AFTER_STEPS_ENV)
        try:
            while not self._stop.is_set():
                self._drain_inbox(owners)
                if not self.engine.has_unfinished_requests():
                    if profile is not None:
                        profile.idle()
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                if fault_after is not None and self.engine.stats.num_steps >= int(fault_after):
                    raise RuntimeError(f"injected engine fault ({FAULT_AFTER_STEPS_ENV}={fault_after})")
                if after_first_tokens and FIRST_TOKEN_SWITCH_INTERVAL_S > 0:
                    interval = sys.getswitchinterval()
                    sys.setswitchinterval(FIRST_TOKEN_SWITCH_INTERVAL_S)
                    try:
                        outputs = self.engine.step()
                    finally:
                        sys.setswitchinterval(interval)
                else:
                    outputs = self.engine.step()
                self._publish_counts()
                if self.engine.failed_requests:
                    self._fail_requests(owners)
                after_first_tokens = False
                deliveries: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
                for output in outputs:
                    stream = owners.get(output.request_id)
                    if stream is not None:
                        after_first_tokens |= not stream.started
                        stream.started = True
                        deliveries.setdefault(stream.loop, []).append((stream.queue, output))
                        if output.finished:
                            owners.pop(output.request_id, None)
                deliver(deliveries)
                if outputs:
                    # Hand the GIL to the event loop now, so it streams these tokens before the
                    # next step's host work holds the GIL.
                    time.sleep(0)
        except BaseException as exc:  # the engine is broken: every waiting consumer must hear it
            logger.exception("engine loop died")
            with self._death_lock:
                self.errored = exc
                callbacks, self._death_callbacks = self._death_callbacks, []
            error = EngineDeadError(f"engine loop died: {type(exc).__name__}: {exc}")
            for stream in list(owners.values()) + list(self._streams.values()):
                stream.put(error)
            for callback in callbacks:
                try:
                    callback(exc)
                except Exception:  # noqa: BLE001 - one listener's bug must not hide the death from the rest
                    logger.exception("engine death callback failed")

    def _fail_requests(self, owners: dict[str, _Stream]) -> None:
        """Tell each request the engine failed alone (already aborted there) why it ended."""
        failed, self.engine.failed_requests = self.engine.failed_requests, {}
        for request_id, exc in failed.items():
            logger.error("request %s failed in the engine (the others go on): %s: %s", request_id,
                         type(exc).__name__, exc, exc_info=exc)
            stream = owners.pop(request_id, None)
            if stream is not None:
                # A grammar that does not compile is the request's fault (a 400), not the engine's.
                stream.put(exc if isinstance(exc, GrammarError) else RequestFailedError(f"{type(exc).__name__}: {exc}"))
