"""FrontEngine: LLMEngine's interface, with the engine core in another process.

This process tokenizes, detokenizes (IncrementalDetokenizer), checks stop strings, fills in the
log-probabilities' token texts and builds RequestOutputs; the core (engine_core.py) schedules,
runs the model and samples (under a request's grammar: structured outputs travel in its
SamplingParams), and sends token ids. The front keeps a grammar compiler of its own only to
answer the server's check of a spec (a 400 before the request is sent). A sample that hit a stop
string is aborted in the core, which may have computed a step or two past it: those tokens are
dropped here. start_profile / stop_profile profile the core's steps. `LLM` and `AsyncLLMEngine`
drive it as they drive LLMEngine (`build_engine` picks one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from octavo.runtime.config import EngineArgs
from octavo.runtime.core_client import EngineCoreClient
from octavo.runtime.core_protocol import (AbortRequest, AddRequest, ProfileDone, ProfileRequest, RequestFailure,
                                          StepOutputs)
from octavo.runtime.engine import EngineStats, LLMEngine, PromptType, RequestGroup, check_prompt, parse_prompt
from octavo.runtime.outputs import CompletionOutput, Logprob, RequestOutput
from octavo.runtime.request import Request, RequestStatus
from octavo.runtime.profiler import NO_PROFILER, ProfilerNotConfigured
from octavo.runtime.request_text import (check_text_params, completion_output, match_stop_string,
                                         new_detokenizer)
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.structured.compiler import GrammarCompiler, GrammarError
from octavo.runtime.tokenizer import eos_token_ids, load_tokenizer

MULTIPROCESSING_ENVS = ("OCTAVO_ENABLE_MULTIPROCESSING", "VLLM_ENABLE_V1_MULTIPROCESSING")
# How long one step() waits for the core before it returns no outputs (so a caller's loop can
# take new requests while the core computes a long step).
RECEIVE_TIMEOUT_S = 0.05
# How long start_profile / stop_profile wait for the core's answer (a stop on an idle core writes
# the trace before answering).
PROFILE_ANSWER_TIMEOUT_S = 300.0


def multiprocessing_from_env(environ: Mapping[str, str] | None = None) -> bool | None:
    """The first of MULTIPROCESSING_ENVS that is set, as a bool; None when none is."""
    environ = os.environ if environ is None else environ
    for name in MULTIPROCESSING_ENVS:
        value = environ.get(name)
        if value:
            return value.strip().lower() in ("1", "true", "yes", "on")
    return None


def multiprocessing_enabled(engine_args: EngineArgs) -> bool:
    """EngineArgs.enable_multiprocessing, else the first of MULTIPROCESSING_ENVS that is set."""
    if engine_args.enable_multiprocessing is not None:
        return engine_args.enable_multiprocessing
    return bool(multiprocessing_from_env())


def build_engine(engine_args: EngineArgs) -> "LLMEngine | FrontEngine":
    """The in-process engine, or the front of a core process when multiprocessing is on."""
    if multiprocessing_enabled(engine_args):
        return FrontEngine(engine_args)
    return LLMEngine.from_engine_args(engine_args)


@dataclass
class CoreProfiler:
    """The core's StepProfiler as the front sees it: the traces it has written (StepOutputs and
    ProfileDone carry them), as LLMEngine.profiler.traces lists them."""

    traces: list[Path] = field(default_factory=list)


@dataclass
class KVCacheSize:
    """The core's KV cache as the front sees it: its size (prompt validation, /metrics) and its
    use as of the core's last message."""

    num_blocks: int
    block_size: int
    usage: float = 0.0

    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - round(self.usage * self.num_blocks)


class FrontEngine:
    def __init__(self, engine_args: EngineArgs) -> None:
        self.config = engine_args.create_config()
        model_config = self.config.model_config
        self.tokenizer = load_tokenizer(model_config.tokenizer, required=model_config.load_format != "dummy")
        # Validation only (AsyncLLMEngine.check_structured_outputs): the core compiles what it enforces.
        self.grammar_compiler = (GrammarCompiler(self.tokenizer, model_config.vocab_size,
                                                 eos_token_ids(self.tokenizer, model_config.model,
                                                               model_config.hf_config),
                                                 self.config.structured_outputs_config)
                                 if self.tokenizer is not None else None)
        self.client = EngineCoreClient(engine_args)
        self.kv_cache = KVCacheSize(self.client.ready.num_blocks, self.client.ready.block_size)
        self.profiler = CoreProfiler() if self.config.profiler_config is not None else None
        self.early_messages: list[StepOutputs] = []  # arrived while start/stop_profile awaited the core
        self.groups: dict[str, RequestGroup] = {}
        self.failed_requests: dict[str, Exception] = {}
        self.stats = EngineStats()
        self.num_adds_sent = 0
        self.num_messages_sent = 0  # adds and aborts
        self.num_messages_taken = 0  # of them, those the core has answered
        self.pending_adds: list[tuple[int, int]] = []  # (add number, sequences) the core has not counted
        self.core_counts = (0, 0)

    def shutdown(self) -> None:
        if self.grammar_compiler is not None:
            self.grammar_compiler.shutdown()
        self.client.shutdown()

    def model_size(self) -> tuple[int, int]:
        """(parameters, bytes of weights) of the core's target model."""
        return self.client.ready.num_params, self.client.ready.weight_bytes

    def get_tokenizer(self):
        return self.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler_config.max_model_len

    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        check_prompt(prompt_token_ids, self.max_model_len, self.config.model_config.vocab_size,
                     self.kv_cache.num_blocks, self.kv_cache.block_size)

    def start_profile(self) -> None:
        """Profile the core's steps from its next one on (LLMEngine.start_profile, in the core)."""
        self._profile(start=True)

    def stop_profile(self) -> None:
        """Stop profiling; returns once the core has answered (an idle core has written the trace)."""
        self._profile(start=False)

    def _profile(self, start: bool) -> None:
        if self.profiler is None:
            raise ProfilerNotConfigured(NO_PROFILER)
        self.send(ProfileRequest(start))
        deadline = time.monotonic() + PROFILE_ANSWER_TIMEOUT_S
        while time.monotonic() < deadline:
            for message in self.client.receive(RECEIVE_TIMEOUT_S):
                if isinstance(message, ProfileDone):
                    self.profiler.traces = [Path(path) for path in message.traces]
                    if message.error is not None:
                        raise RuntimeError(message.error)
                    return
                self.early_messages.append(message)  # step() applies them in order
        raise TimeoutError(f"the engine core did not answer {'start' if start else 'stop'}_profile in "
                           f"{PROFILE_ANSWER_TIMEOUT_S:.0f} s")

    # ---- requests ----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> None:
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = (params or SamplingParams()).clone()
        check_text_params(params, self.tokenizer)
        if params.structured_outputs is not None and self.grammar_compiler is None:
            raise ValueError("structured outputs need the model's tokenizer (this model has none)")
        text, token_ids = parse_prompt(prompt, self.tokenizer)
        self.validate_prompt(token_ids)
        arrival = arrival_time if arrival_time is not None else time.monotonic()
        children = []
        for index in range(params.n):
            child = Request(request_id if params.n == 1 else f"{request_id}-{index}", token_ids, params,
                            parent_id=request_id, index=index, prompt=text, arrival_time=arrival)
            if params.detokenize:
                child.detokenizer = new_detokenizer(self.tokenizer, token_ids, params)
            children.append(child)
        core_params = params.clone()  # the core sends token deltas and knows no text
        core_params.stop, core_params.detokenize = [], False
        core_params.output_kind = RequestOutputKind.DELTA
        core_params.guided_decoding = None  # an alias of structured_outputs: it crosses once
        self.send(AddRequest(request_id, token_ids, core_params, arrival))
        self.groups[request_id] = RequestGroup(request_id, text, token_ids, params, children)
        self.num_adds_sent += 1
        self.pending_adds.append((self.num_adds_sent, params.n))

    def abort_request(self, request_id: str | list[str]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            if self.groups.pop(rid, None) is not None and self.client.dead is None:  # a dead core holds nothing
                self.send(AbortRequest(rid))

    def wake(self) -> None:
        """A caller on another thread has work for step(): end its wait for the core now."""
        self.client.ring()

    def send(self, message: AddRequest | AbortRequest) -> None:
        self.client.send(message)
        self.num_messages_sent += 1

    def has_unfinished_requests(self) -> bool:
        """Requests in flight, or messages the core has not answered yet (an abort's answer
        carries the stats that show its blocks free: /metrics must not wait for the next request)."""
        return bool(self.groups) or self.num_messages_taken < self.num_messages_sent

    def get_num_unfinished_requests(self) -> int:
        return len(self.groups)

    def sequence_counts(self) -> tuple[int, int]:
        """(running, waiting) sequences: the core's last count; requests sent since wait."""
        running, waiting = self.core_counts
        return running, waiting + sum(n for _, n in self.pending_adds)

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Outputs of the core's steps that arrived (waits up to RECEIVE_TIMEOUT_S for one, or
        until wake())."""
        outputs: list[RequestOutput] = []
        early, self.early_messages = self.early_messages, []
        for message in early + self.client.receive(0.0 if early else RECEIVE_TIMEOUT_S):
            if isinstance(message, StepOutputs):
                outputs.extend(self._apply(message))
        return outputs

    def _apply(self, message: StepOutputs) -> list[RequestOutput]:
        self.stats = message.stats
        self.kv_cache.usage = message.stats.kv_cache_usage
        self.core_counts = (message.num_running, message.num_waiting)
        if self.profiler is not None:
            self.profiler.traces = [Path(path) for path in message.profile_traces]
        self.num_messages_taken = message.num_messages_taken
        self.pending_adds = [(number, n) for number, n in self.pending_adds if number > message.num_adds_taken]
        for request_id, failure in message.failed.items():
            if self.groups.pop(request_id, None) is not None:
                self.failed_requests[request_id] = _failure_error(failure)
        outputs = []
        for core_output in message.outputs:
            group = self.groups.get(core_output.request_id)
            if group is None:
                continue  # aborted here, or ended on a stop string: the core's late tokens are dropped
            first = group.children[0]
            if core_output.prompt_logprobs is not None and first.prompt_logprobs is not None:
                first.prompt_logprobs = [self._with_text(entry) for entry in core_output.prompt_logprobs]
            first.metrics = core_output.metrics
            try:
                for completion in core_output.outputs:
                    self._append(group, group.children[completion.index], completion)
            except Exception as exc:  # noqa: BLE001 - one request's text (detokenizer, stop strings,
                self.failed_requests[group.request_id] = exc  # logprobs) fails it alone, as in LLMEngine
                self.abort_request(group.request_id)
                continue
            finished = group.finished
            if finished:
                del self.groups[group.request_id]
            kind = group.params.output_kind
            if kind == RequestOutputKind.FINAL_ONLY and not finished:
                continue
            outputs.append(RequestOutput(
                request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
                prompt_logprobs=first.prompt_logprobs,
                outputs=[completion_output(c, kind) for c in group.children],
                finished=finished, metrics=first.metrics, num_cached_tokens=core_output.num_cached_tokens))
        return outputs

    def _append(self, group: RequestGroup, request: Request, completion: CompletionOutput) -> None:
        """The core's new tokens for one sample: detokenized and checked against stop strings in
        order, as LLMEngine appends them; the core's finish reason applies to its last token."""
        if request.is_finished:
            return
        params = group.params
        last = len(completion.token_ids) - 1
        for position, token_id in enumerate(completion.token_ids):
            request.append_token(token_id)
            if request.logprobs is not None and completion.logprobs is not None:
                entry = self._with_text(completion.logprobs[position])
                request.logprobs.append(entry)
                request.cumulative_logprob += entry[token_id].logprob
            delta = ""
            if request.detokenizer is not None:
                delta = request.detokenizer.add([token_id])
                request.output_text += delta
            core_finished = position == last and completion.finish_reason is not None
            if core_finished and completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
                request.stop_reason = completion.stop_reason  # a stop token: it goes before stop strings
                request.status = RequestStatus.FINISHED_STOPPED
                return
            if request.num_output_tokens >= params.min_tokens and match_stop_string(request, delta):
                request.status = RequestStatus.FINISHED_STOPPED
                if not core_finished:
                    self._abort_in_core(group)
                return
            if core_finished:
                request.stop_reason = completion.stop_reason
                request.status = RequestStatus(completion.finish_reason)
                return

    def _abort_in_core(self, group: RequestGroup) -> None:
        if group.finished:
            self.send(AbortRequest(group.request_id))
        else:
            self.send(AbortRequest(group.request_id, [c.index for c in group.children if c.is_finished]))

    def _with_text(self, entry: dict[int, Logprob] | None) -> dict[int, Logprob] | None:
        """A log-probability entry with its tokens' texts (the core sends none)."""
        if entry is None or self.tokenizer is None:
            return entry
        return {token_id: Logprob(lp.logprob, lp.rank, self.tokenizer.decode([token_id]))
                for token_id, lp in entry.items()}


def _failure_error(failure: RequestFailure) -> Exception:
    """The core's failure as the in-process engine would raise it: a grammar that did not
    compile stays a GrammarError (the request's fault), anything else is the core's."""
    return GrammarError(failure.message) if failure.bad_grammar else RuntimeError(failure.error)
