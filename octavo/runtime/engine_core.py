"""The engine core process: LLMEngine's scheduler, model runner and sampler in a busy loop, fed
and drained through ZeroMQ sockets by the front process (front_engine.FrontEngine).

It takes requests as token ids and sends each step's new token ids (with log-probabilities and
finish reasons): it decodes no text. A request's structured-outputs spec travels in its
SamplingParams; the grammar compiles and masks the logits here, beside the sampler. Stop strings are the front's; the front aborts a request
that hit one. It ignores SIGINT and SIGTERM (the front drains and then says Shutdown) and exits
on its own when the front process is gone. A failure sends Dead and exits 1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import zmq

from octavo.runtime.config import EngineArgs
from octavo.runtime.core_protocol import (AbortRequest, AddRequest, Dead, ProfileDone, ProfileRequest, Ready,
                                          RequestFailure, Shutdown, StepOutputs, encoder, to_core_decoder)
from octavo.runtime.engine import LLMEngine
from octavo.runtime.gc_heap import freeze_startup_heap
from octavo.runtime.outputs import RequestOutput
from octavo.runtime.structured.compiler import GrammarError

logger = logging.getLogger("octavo")

# How often an idle or busy core checks that its front process still lives.
PARENT_CHECK_INTERVAL_S = 1.0

# Test-only: the core raises once its engine has taken this many steps, as a crash in a step would.
CORE_FAULT_AFTER_STEPS_ENV = "OCTAVO_TEST_ENGINE_CORE_FAULT_AFTER_STEPS"


def run_engine_core(engine_args: EngineArgs, input_address: str, output_address: str, parent_pid: int) -> None:
    """The core process's entry point (multiprocessing spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.connect(input_address)
    outbox = context.socket(zmq.PUSH)
    outbox.setsockopt(zmq.LINGER, 5000)  # a Dead message must reach the front before the exit
    outbox.connect(output_address)
    code = 0
    try:
        engine = LLMEngine.from_engine_args(engine_args)
        engine.tokenizer = None  # the core decodes no text: log-probabilities leave without it
        freeze_startup_heap()  # before Ready: the core serves until its front goes, its start-up heap never dies
        outbox.send(encoder.encode(Ready(engine.kv_cache.num_blocks, engine.kv_cache.block_size,
                                         *engine.model_size())))
        try:
            EngineCore(engine, inbox, outbox, parent_pid).run()
        finally:
            engine.shutdown()
    except BaseException as exc:  # noqa: BLE001 - whatever broke, the front must hear it, not hang
        logger.exception("engine core died")
        outbox.send(encoder.encode(Dead(f"{type(exc).__name__}: {exc}")))
        code = 1
    finally:
        inbox.close(linger=0)
        outbox.close()
        context.term()
    if code:
        os._exit(code)  # noqa: SLF001 - skip multiprocessing's exit handlers: the state is broken


def failure(exc: Exception) -> RequestFailure:
    return RequestFailure(f"{type(exc).__name__}: {exc}", isinstance(exc, GrammarError), str(exc))


def lean(output: RequestOutput) -> RequestOutput:
    """The output without its inter-token latencies until it finishes: the list grows by one per
    step, and only a finished request's metrics are observed (sent whole, each step, it would make
    a request's traffic quadratic in its length)."""
    if output.finished or output.metrics is None or not output.metrics.inter_token_latencies:
        return output
    return dataclasses.replace(output, metrics=dataclasses.replace(output.metrics, inter_token_latencies=[]))


class EngineCore:
    """The busy loop: take messages, step while there is work, send what moved."""

    def __init__(self, engine: LLMEngine, inbox: zmq.Socket, outbox: zmq.Socket, parent_pid: int) -> None:
        self.engine = engine
        self.inbox = inbox
        self.outbox = outbox
        self.parent_pid = parent_pid
        self.num_adds_taken = 0
        self.num_messages_taken = 0
        fault = os.environ.get(CORE_FAULT_AFTER_STEPS_ENV)
        self.fault_after_steps = int(fault) if fault else None

    def run(self) -> None:
        engine = self.engine
        parent_checked = time.monotonic()
        while True:
            busy = engine.has_unfinished_requests()
            wait_ms = 0 if busy else int(PARENT_CHECK_INTERVAL_S * 1000)
            failed: dict[str, RequestFailure] = {}
            took_any = False
            if self.inbox.poll(wait_ms):
                took_any = True
                if not self.take_messages(failed):
                    return
            now = time.monotonic()
            if now - parent_checked >= PARENT_CHECK_INTERVAL_S:
                parent_checked = now
                if os.getppid() != self.parent_pid:
                    logger.warning("engine core: the front process is gone; exiting")
                    return
            outputs: list[RequestOutput] = []
            if engine.has_unfinished_requests():
                if self.fault_after_steps is not None and engine.stats.num_steps >= self.fault_after_steps:
                    raise RuntimeError(f"injected engine core fault ({CORE_FAULT_AFTER_STEPS_ENV}="
                                       f"{self.fault_after_steps})")
                outputs = [lean(output) for output in engine.step()]
                for request_id, exc in engine.failed_requests.items():
                    failed[request_id] = failure(exc)
                engine.failed_requests = {}
            elif not took_any:
                continue
            running, waiting = engine.sequence_counts()
            self.outbox.send(encoder.encode(StepOutputs(outputs, engine.stats, running, waiting,
                                                        self.num_adds_taken, self.num_messages_taken, failed,
                                                        self.profile_traces())))

    def take_messages(self, failed: dict[str, RequestFailure]) -> bool:
        """Apply every message waiting; False on Shutdown."""
        while True:
            try:
                frame = self.inbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                return True
            message = to_core_decoder.decode(frame)
            self.num_messages_taken += 1
            if isinstance(message, AddRequest):
                self.num_adds_taken += 1
                try:
                    self.engine.add_request(message.request_id, message.prompt_token_ids, message.params,
                                            message.arrival_time)
                except Exception as exc:  # noqa: BLE001 - a request's input fails it alone
                    failed[message.request_id] = failure(exc)
            elif isinstance(message, AbortRequest):
                if message.indices is None:
                    self.engine.abort_request(message.request_id)
                else:
                    self.engine.abort_sequences(message.request_id, message.indices)
            elif isinstance(message, ProfileRequest):
                self.outbox.send(encoder.encode(self.profile(message.start)))
            elif isinstance(message, Shutdown):
                return False

    def profile(self, start: bool) -> ProfileDone:
        """start_profile / stop_profile on the core's engine (its steps are what a trace records)."""
        try:
            if start:
                self.engine.start_profile()
            else:
                self.engine.stop_profile()
        except Exception as exc:  # noqa: BLE001 - the front raises it for its caller
            return ProfileDone(self.profile_traces(), f"{exc}")
        return ProfileDone(self.profile_traces())

    def profile_traces(self) -> list[str]:
        profiler = self.engine.profiler
        return [str(path) for path in profiler.traces] if profiler is not None else []
