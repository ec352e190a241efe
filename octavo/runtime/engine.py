"""LLMEngine: requests in, RequestOutputs out, one `step()` at a time.

step(): with speculation, adaptive k picks the step's k and the proposer drafts -> the scheduler
picks requests and token counts (drafts are extra tokens of a request) -> the model runner
computes them -> the sampler picks tokens, or verification accepts drafts -> tokens are appended,
detokenized and checked against stop conditions -> rejected drafts roll back and finished
requests give their blocks back -> outputs for every request that moved, and a StepRecord.
The tokenizer lives here, at the edge; the scheduler and runner see only token ids.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import torch

from octavo.runtime import distributed
from octavo.runtime.config import EngineArgs, EngineConfig
from octavo.runtime.cuda_graphs import PREFILL_GRAPH_LENS
from octavo.runtime.host_staging import to_device
from octavo.runtime.kv_cache import KVCacheManager
from octavo.runtime.model_runner import ModelRunner, RunnerOutput
from octavo.runtime.outputs import Logprob, RequestOutput
from octavo.runtime.profiler import NO_PROFILER, ProfilerNotConfigured, StepProfiler
from octavo.runtime.request import Request, RequestStatus
from octavo.runtime.request_text import (check_text_params, completion_output, match_stop_string,
                                         new_detokenizer)
from octavo.runtime.sampler import SampledRow, Sampler, needs_history
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.scheduler import Scheduler, SchedulerOutput
from octavo.runtime.spec import build_proposer
from octavo.runtime.spec.controller import AdaptiveK
from octavo.runtime.spec.verify import verify_step
from octavo.runtime.step_record import ITERATION_TOKEN_BUCKETS, StepRecord, StepTrace
from octavo.runtime.structured.compiler import GrammarCompiler
from octavo.runtime.structured.matcher import BitmaskFiller, RequestGrammar
from octavo.runtime.tokenizer import eos_token_ids, load_tokenizer

logger = logging.getLogger("octavo")

PromptType = str | dict | list[int]


@dataclass
class RequestGroup:
    """A user request: n sequences sharing one prompt."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)


_NO_PHASE = contextlib.nullcontext()  # reusable: a nullcontext keeps no state


class HostCopy:
    """A device tensor's copy to the host, started now, read when needed: the one wait for the
    device per step, and only once the next step is queued behind it."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.event = None
        if tensor.is_cuda:
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            # The stream of an indexed device: record() alone resolves the current device through
            # several Python helpers (31 us a step under cProfile on an H100 host).
            self.event.record(torch.cuda.current_stream(tensor.device))
        else:
            self.host = tensor

    def wait(self) -> list:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


@dataclass
class InFlight:
    """A launched step whose results are not read back yet."""

    sched: SchedulerOutput
    output: RunnerOutput
    sampled: list[Request]  # requests that sampled one token, in row order
    tokens: torch.Tensor  # their tokens, on the device
    logits: torch.Tensor  # the rows they were sampled from (for log-probabilities)
    host_tokens: HostCopy
    speculated: list  # ScheduledRequests that verified drafts (always read back at once)
    verdicts: list  # their (emitted rows, accepted count)
    started: float
    k_asked: int
    num_decoding: int
    num_prefill: int


@dataclass
class EngineStats:
    """Counters since start and gauges of the last step, for /metrics and logs."""

    num_running: int = 0  # sequences (n > 1 requests count each sample)
    num_waiting: int = 0
    num_running_requests: int = 0  # requests, as vLLM's num_requests_running counts them
    num_waiting_requests: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_steps: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_emitted_tokens: int = 0
    spec_num_drafts: int = 0  # verifications: one per request per speculative step
    spec_accepted_per_pos: list[int] = field(default_factory=list)  # [i]: drafts accepted at position i
    # Tokens computed per step (prompt + generated), as a histogram: counts per ITERATION_TOKEN_BUCKETS
    # upper bound (the last slot is +Inf), and their sum.
    iteration_tokens_buckets: list[int] = field(default_factory=lambda: [0] * (len(ITERATION_TOKEN_BUCKETS) + 1))
    iteration_tokens_sum: int = 0
    grammars_compiled: int = 0  # structured outputs: grammars compiled (cache misses)
    grammar_compile_seconds: float = 0.0  # their compile time, summed


def parse_prompt(prompt: PromptType, tokenizer: Any) -> tuple[str | None, list[int]]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: pass {'prompt_token_ids': [...]} instead of text")
        return prompt, list(tokenizer.encode(prompt))
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if "prompt" in prompt:
            return parse_prompt(prompt["prompt"], tokenizer)
        raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
        return None, list(prompt)
    raise ValueError(f"prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")


def check_prompt(prompt_token_ids: list[int], max_model_len: int, vocab_size: int, num_blocks: int,
                 block_size: int) -> None:
    """Raise ValueError for a prompt that can never run (the request fails alone)."""
    n = len(prompt_token_ids)
    if n == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if n >= max_model_len:
        raise ValueError(f"the prompt has {n} tokens but max_model_len is {max_model_len}: "
                         f"shorten it to at most {max_model_len - 1} tokens or raise max_model_len")
    bad = [t for t in prompt_token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary (0..{vocab_size - 1})")
    blocks = -(-(n + 1) // block_size)
    if blocks > num_blocks:
        raise ValueError(f"the prompt needs {blocks} KV blocks but the cache holds {num_blocks}: "
                         "shorten it or give the cache more memory")


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        model_config = config.model_config
        self.tokenizer = load_tokenizer(model_config.tokenizer, required=model_config.load_format != "dummy")
        self.eos_token_ids = eos_token_ids(self.tokenizer, model_config.model, model_config.hf_config)
        # Tensor parallel: ranks 1..N-1 as worker processes; this process is rank 0 (None at TP 1).
        self.workers = distributed.launch_workers(config, ModelRunner)
        try:
            self._build_runners(config)
        except BaseException:
            self.shutdown()
            raise
        self.kv_cache = KVCacheManager(self.model_runner.num_blocks, config.cache_config.block_size,
                                       config.cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache)
        self.groups: dict[str, RequestGroup] = {}
        # Requests whose own processing raised during a step (request id -> the error): they are
        # aborted, the step goes on for the others; the caller reports and clears them.
        self.failed_requests: dict[str, Exception] = {}
        self.stats = EngineStats()
        self.last_step: StepRecord | None = None
        self.trace = StepTrace.from_env()
        # Seeded sampled requests always draft the most k allows: their output depends on k, so
        # their k must depend on nothing else (timings, other requests).
        self.fixed_k: set[str] = set()
        # Asynchronous scheduling: the next step is launched before this one's tokens are read
        # back. Not across tensor-parallel workers (they are sent token ids from the host). With a
        # proposer, plain steps overlap; a step that drafts first reads the last tokens back
        # (drafts continue them), and a speculative step is read back at once.
        self.async_scheduling = config.async_scheduling and self.workers is None
        self._inflight: InFlight | None = None
        self._last_resolved = 0.0  # perf_counter when a step was last read back
        self._pending_k: int | None = None  # adaptive k's answer for a step that first read tokens back
        self.history_sampled: set[str] = set()  # requests whose penalties read every earlier token
        self.num_sampled_groups = 0  # requests with n > 1: only then do sequences and requests differ
        self.profiler = StepProfiler(config.profiler_config, config.device) if config.profiler_config else None
        # Structured outputs: grammars compile on the compiler's worker thread; a request waits
        # here (not in the scheduler) until its grammar is ready.
        self.grammar_compiler = (GrammarCompiler(self.tokenizer, config.model_config.vocab_size, self.eos_token_ids,
                                                 config.structured_outputs_config)
                                 if self.tokenizer is not None else None)
        self.grammar_waiting: dict[str, concurrent.futures.Future] = {}  # request id -> its grammar
        self.constrained: set[str] = set()  # sequences decoding under a grammar
        self._bitmask_filler: BitmaskFiller | None = None

    def _build_runners(self, config: EngineConfig) -> None:
        workers = self.workers
        self.model_runner = ModelRunner(config.model_config, config.cache_config, config.scheduler_config,
                                        config.device, enforce_eager=config.enforce_eager,
                                        parallel=workers.parallel("target") if workers else None,
                                        piecewise_cuda_graphs=config.piecewise_cuda_graphs)
        self.proposer = self.controller = None
        spec = config.speculative_config
        if spec is not None:
            # Built before the KV cache is sized: a draft's weights and KV share the memory. A
            # draft's runner takes its own tensor-parallel group (rank 0 alone by default).
            with distributed.runner_scope(workers.parallel("draft") if workers else None):
                self.proposer = build_proposer(spec.method, config=spec, engine_config=config,
                                               target_runner=self.model_runner, sampler=self.model_runner.sampler)
            self.model_runner.extra_bytes_per_block += self.proposer.kv_bytes_per_block()
            knee = 256.0 if config.device.type == "cuda" else 64.0  # where a forward turns compute-bound
            self.controller = AdaptiveK(spec, self.proposer.draft_cost_ratio, knee)
        num_blocks = self.model_runner.initialize_kv_cache()
        # Under speculation the target also verifies k + 1 tokens per request through graphs; a
        # lone prefill (a request arriving at an idle server) replays one too.
        self.model_runner.capture_cuda_graphs((1, spec.num_speculative_tokens + 1) if spec else (1,),
                                              PREFILL_GRAPH_LENS)
        if self.proposer is not None:
            self.proposer.initialize(num_blocks)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (nothing to do at tensor_parallel_size 1). The engine
        cannot step afterwards."""
        compiler = getattr(self, "grammar_compiler", None)  # absent when the runners failed to build
        if compiler is not None:
            compiler.shutdown()
        if self.workers is not None:
            # CUDA graphs that captured NCCL collectives make the communicators' teardown hang
            # (pytorch/pytorch#115388): every rank drops its graphs before leaving the group.
            self.model_runner.release_cuda_graphs()
            if self.proposer is not None:
                self.proposer.shutdown()
            self.workers.shutdown()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args.create_config())

    # ---- requests ----------------------------------------------------------------------------
    def get_tokenizer(self):
        return self.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler_config.max_model_len

    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise ValueError for a prompt that can never run (the request fails alone)."""
        check_prompt(prompt_token_ids, self.max_model_len, self.config.model_config.vocab_size,
                     self.kv_cache.num_blocks, self.kv_cache.block_size)

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> None:
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = (params or SamplingParams()).with_eos(self.eos_token_ids)
        check_text_params(params, self.tokenizer)
        text, token_ids = parse_prompt(prompt, self.tokenizer)
        self.validate_prompt(token_ids)
        arrival = arrival_time if arrival_time is not None else time.monotonic()
        children: list[Request] = []
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.config.device).manual_seed(params.seed + index)
            child_id = request_id if params.n == 1 else f"{request_id}-{index}"
            child = Request(child_id, token_ids, params, parent_id=request_id, index=index, prompt=text,
                            arrival_time=arrival, generator=generator,
                            prefix_source=children[0] if index else None, shares_prefix=params.n > 1)
            if params.detokenize:
                child.detokenizer = new_detokenizer(self.tokenizer, token_ids, params)
            children.append(child)
        grammar = None
        if params.structured_outputs is not None:
            if self.grammar_compiler is None:
                raise ValueError("structured outputs need the model's tokenizer (this model has none)")
            grammar = self.grammar_compiler.submit(params.structured_outputs)
        self.groups[request_id] = RequestGroup(request_id, text, token_ids, params, children)
        self.num_sampled_groups += params.n > 1
        if grammar is not None:
            self.grammar_waiting[request_id] = grammar  # scheduled once it compiles (_admit_compiled)
            return
        self._schedule_children(children)

    def _schedule_children(self, children: list[Request]) -> None:
        params = children[0].sampling_params
        for child in children:
            if params.seed is not None and not params.greedy:
                self.fixed_k.add(child.request_id)
            if needs_history(params):
                self.history_sampled.add(child.request_id)
            self.scheduler.add_request(child)

    def abort_request(self, request_id: str | list[str]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            group = self.groups.pop(rid, None)
            if group is None:
                continue
            self.grammar_waiting.pop(rid, None)
            self.num_sampled_groups -= group.params.n > 1
            for child in group.children:
                self.scheduler.finish_request(child, RequestStatus.FINISHED_ABORTED)
                self._forget(child)
        # An idle engine takes no further step, so refresh the gauges here (or /metrics would
        # keep reporting the aborted request as running and its blocks as used).
        self._update_gauges()

    def abort_sequences(self, request_id: str, indices: list[int]) -> None:
        """End some samples of an n > 1 request (the multiprocess front found their stop
        strings); the whole request once none is left."""
        group = self.groups.get(request_id)
        if group is None:
            return
        for index in indices:
            child = group.children[index]
            if not child.is_finished:
                self.scheduler.finish_request(child, RequestStatus.FINISHED_ABORTED)
                self._forget(child)
        if group.finished:
            self.abort_request(request_id)
        else:
            self._update_gauges()

    def model_size(self) -> tuple[int, int]:
        """(parameters, bytes of weights) of the target model on this rank."""
        params = list(self.model_runner.model.parameters())
        return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)

    def sequence_counts(self) -> tuple[int, int]:
        """(running, waiting) sequences now, between steps."""
        return self.scheduler.num_running, self.scheduler.num_waiting

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    def get_num_unfinished_requests(self) -> int:
        return len(self.groups)

    def wake(self) -> None:
        """Nothing to do: step() never waits for new requests (FrontEngine.step does)."""

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        profiler = self.profiler
        if profiler is None:
            with torch.inference_mode():  # once per step: the runners' @inference then costs a flag check
                return self._step()
        profiler.before_step()
        with torch.inference_mode(), profiler.phase("step"):
            outputs = self._step()
        profiler.after_step()
        return outputs

    # ---- profiling (vLLM's start_profile / stop_profile) -------------------------------------
    def start_profile(self) -> None:
        """Profile from the next step on (the profiler config's delay and limit apply). Call it
        from the thread that runs the steps."""
        if self.profiler is None:
            raise ProfilerNotConfigured(NO_PROFILER)
        self.profiler.start()

    def stop_profile(self) -> None:
        """Stop profiling and write the trace (now if the engine is idle, else after this step)."""
        if self.profiler is None:
            raise ProfilerNotConfigured(NO_PROFILER)
        self.profiler.stop()
        if not self.has_unfinished_requests():
            self.profiler.idle()

    def _phase(self, name: str):
        return self.profiler.phase(name) if self.profiler is not None else _NO_PHASE

    def _step(self) -> list[RequestOutput]:
        """Schedule and launch this step; then read back the step launched before it (asynchronous
        scheduling: its host work runs while the GPU computes this one), or this step's own."""
        started = time.perf_counter()
        phase = self._phase
        if self.grammar_waiting:
            self._admit_compiled()
        k_asked, drafting, pending = 0, False, self._pending_k
        self._pending_k = None
        if self.proposer is not None and self._may_draft():
            k_asked = pending if pending is not None else self.controller.step_k(len(self.scheduler.running))
            drafting = k_asked > 0 or bool(self.fixed_k)
        prev, self._inflight = self._inflight, None
        touched: list[Request] = []
        if prev is not None and drafting:
            # Drafts continue the last tokens: read them back, and hand them out before any
            # draft work (a first token never waits for it); the next step drafts with this k.
            self._pending_k = k_asked
            with phase("resolve"):
                touched += self._resolve(prev)
            return self._end_step(touched)
        if prev is not None and (self.history_sampled or self.constrained):
            with phase("resolve"):
                # Penalties read every token before the next one is sampled; a grammar's bitmask
                # needs the matcher advanced past it.
                touched += self._resolve(prev)
            prev = None
        if drafting:
            with phase("propose"):
                self._propose(k_asked)
        with phase("schedule"):
            sched = self.scheduler.schedule()
        for request in sched.finished:
            self._finish(request, RequestStatus.FINISHED_LENGTH)
            touched.append(request)
        if sched.preempted:
            self.stats.num_preemptions += len(sched.preempted)
            if self.proposer is not None:
                for request in sched.preempted:
                    self.proposer.free(request)
        if not sched.is_empty:
            with phase("launch"):
                launched = self._launch(sched, prev, started, k_asked)
            if self.async_scheduling and not launched.speculated:  # verdicts are applied at once
                self._inflight = launched
            else:
                with phase("resolve"):
                    touched += self._resolve(launched)
        if prev is not None:
            with phase("resolve"):
                touched += self._resolve(prev)
        return self._end_step(touched)

    def _end_step(self, touched: list[Request]) -> list[RequestOutput]:
        """Count the step, publish its gauges, and build the outputs of the requests it moved."""
        self.stats.num_steps += 1
        self._update_gauges()
        with self._phase("outputs"):
            return self._outputs(touched)

    def _launch(self, sched: SchedulerOutput, prev: "InFlight | None", started: float, k_asked: int) -> "InFlight":
        """The forward and sampling of a step, queued on the device without waiting for it. A
        request whose last token is still in flight (sampled by `prev`) gets it on the device.
        Sampled tokens enter the requests as placeholders (num_computed_tokens moves on now), so
        the next step can be scheduled before they are read back."""
        patch = self._patch(sched, prev) if prev is not None else None
        output = self.model_runner.execute(sched, token_patch=patch)
        plain: list[Request] = []
        speculated = []
        num_decoding = num_prefill = 0
        for item in sched.scheduled:
            if item.num_spec_tokens:
                speculated.append(item)
            elif item.completes_sequence:
                plain.append(item.request)
            if item.num_new_tokens - item.num_spec_tokens == 1 and item.request.num_output_tokens:
                num_decoding += 1
            else:
                num_prefill += item.num_new_tokens
        tokens, logits = self.model_runner.sample_tokens(output, plain, self._grammar_bitmask(plain))
        verdicts = (verify_step(output, speculated, self.model_runner.sampler, self.proposer.draft_probs)
                    if speculated else [])
        accepted = {item.request.request_id: n for item, (_, n) in zip(speculated, verdicts)}
        for item in sched.scheduled:
            request = item.request
            request.num_computed_tokens += item.num_new_tokens - item.num_spec_tokens + accepted.get(request.request_id, 0)
        for request in plain:
            request.push_placeholder()
            params = request.sampling_params
            if ((params.max_tokens is not None and request.num_output_tokens >= params.max_tokens)
                    or request.num_tokens >= self.max_model_len):
                request.finishing = True  # whatever its token is: the scheduler skips it
        return InFlight(sched, output, plain, tokens, logits, HostCopy(tokens), speculated, verdicts, started,
                        k_asked, num_decoding, num_prefill)

    def _admit_compiled(self) -> None:
        """Schedule the requests whose grammar has compiled; fail those whose grammar did not.
        With nothing else to run, wait a little for the first grammar (not a busy loop)."""
        if not self.scheduler.has_unfinished():
            concurrent.futures.wait(list(self.grammar_waiting.values()), timeout=0.05,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        for request_id, future in list(self.grammar_waiting.items()):
            if not future.done():
                continue
            del self.grammar_waiting[request_id]
            group = self.groups[request_id]
            try:
                compiled = future.result()
                for child in group.children:
                    child.grammar = RequestGrammar(compiled, child.sampling_params.all_stop_token_ids
                                                   or self.eos_token_ids)
            except Exception as exc:  # noqa: BLE001 - a grammar that fails to compile fails its request alone
                self.failed_requests[request_id] = exc
                self.abort_request(request_id)
                continue
            self.constrained.update(child.request_id for child in group.children)
            self._schedule_children(group.children)

    def _grammar_bitmask(self, sampled: list[Request]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(bitmask rows, the rows of `sampled` they mask), on the device; None when no request
        of the step decodes under a grammar."""
        if not self.constrained:
            return None
        rows = [i for i, request in enumerate(sampled) if request.grammar is not None]
        if not rows:
            return None
        if self._bitmask_filler is None:
            self._bitmask_filler = BitmaskFiller()
        device = self.config.device
        bitmask = torch.empty((len(rows), self.grammar_compiler.bitmask_width), dtype=torch.int32,
                              pin_memory=device.type == "cuda")
        self._bitmask_filler.fill([sampled[i].grammar for i in rows], bitmask)
        return to_device(bitmask, torch.int32, device), to_device(rows, torch.long, device)

    def _patch(self, sched: SchedulerOutput, prev: "InFlight") -> tuple[int | torch.Tensor, torch.Tensor] | None:
        """(rows of this step's flat batch, the device tensor of those tokens): requests whose
        last token `prev` sampled and has not been read back. Rows as an int: the first of
        consecutive rows taking all of prev's tokens (no index tensors to build and copy)."""
        rows = {request.request_id: i for i, request in enumerate(prev.sampled)}
        dst, src = [], []
        start = 0
        for item in sched.scheduled:
            request = item.request
            at = rows.get(request.request_id)
            last = request.num_tokens - 1  # the placeholder's position
            if at is not None and request.num_placeholders and request.num_computed_tokens + item.num_new_tokens > last:
                dst.append(start + last - request.num_computed_tokens)
                src.append(at)
            start += item.num_new_tokens
        if not dst:
            return None
        # dst rises (one row per request, in order): its ends tell whether the rows are consecutive.
        if len(src) == prev.tokens.shape[0] and dst[-1] - dst[0] == len(dst) - 1 and src == list(range(len(src))):
            return dst[0], prev.tokens  # the usual decode step: every token, in order, to consecutive rows
        device = prev.tokens.device
        return to_device(dst, torch.long, device), prev.tokens[to_device(src, torch.long, device)]

    def _resolve(self, step: "InFlight") -> list[Request]:
        """Read a launched step's tokens back and apply them: placeholders take their values,
        tokens are detokenized and checked against stop conditions, rejected drafts roll back."""
        with self._phase("wait"):  # the device's time past the host's: the GPU is ahead where this is short
            sampled = step.host_tokens.wait()
        rows = None
        if step.sampled and any(r.logprobs is not None for r in step.sampled):
            rows = Sampler.describe(step.logits, step.tokens, step.sampled)
        output = step.output
        for request_id in output.inputs.prompt_rows:
            request = next(i.request for i in step.sched.scheduled if i.request.request_id == request_id)
            if not request.is_finished:
                self._add_prompt_logprobs(request, self.model_runner.prompt_logprobs(output, request))
        now = time.monotonic()
        touched: list[Request] = []
        num_emitted = 0
        for i, request in enumerate(step.sampled):
            if request.is_finished:
                continue
            later = request.pop_placeholders()  # the next step's, if launched: back after this token
            try:
                self._append_token(request, rows[i] if rows is not None else SampledRow(sampled[i]), now)
            except Exception as exc:  # noqa: BLE001 - one request's own row (its detokenizer, stop strings,
                self.failed_requests[request.parent_id] = exc  # logprobs) fails it alone, not the step
                self.abort_request(request.parent_id)
                continue
            num_emitted += 1
            if not request.is_finished:
                request.restore_placeholders(later)
            touched.append(request)
        k = num_speculated = num_drafted = num_accepted = num_judged = 0
        for item, (emitted, kept) in zip(step.speculated, step.verdicts):
            request = item.request
            if request.is_finished:
                continue
            drafted = item.num_spec_tokens
            self._count_accepted_positions(kept)
            k, num_speculated = max(k, drafted), num_speculated + 1
            num_drafted, num_accepted = num_drafted + drafted, num_accepted + kept
            num_judged += kept + (kept < drafted)  # judging stops at the first rejection
            request.metrics.spec_num_draft_tokens += drafted
            request.metrics.spec_num_accepted_tokens += kept
            request.metrics.spec_num_steps += 1
            for row in emitted:
                self._append_token(request, row, now)
                num_emitted += 1
                if request.is_finished:
                    break
            touched.append(request)
            if not request.is_finished:
                # Rejected drafts' K/V lies past num_computed_tokens: overwritten later, never
                # read; blocks wholly past it go back.
                self.kv_cache.truncate(request, request.num_computed_tokens)
                self.proposer.commit(request)
        for item in step.sched.scheduled:
            request = item.request
            request.spec_token_ids = []
            if not request.is_finished:
                self.kv_cache.cache_computed_blocks(request)  # every token it covers is known now
                if request.num_computed_tokens >= request.num_prompt_tokens:
                    self.scheduler.release_siblings(request)  # they share the blocks just cached
        # A step's time: from its start, or from the last read-back when it was launched before
        # that (overlapped steps then take the time between read-backs, what a step costs).
        now = time.perf_counter()
        started, self._last_resolved = max(step.started, self._last_resolved), now
        self._record(StepRecord(started, now - started, len(step.sched.scheduled),
                                step.num_decoding, step.num_prefill, step.k_asked, k, num_speculated, num_drafted,
                                num_accepted, num_judged, num_emitted))
        return touched

    def _may_draft(self) -> bool:
        """Whether the coming step may speculate: something runs, and no waiting prompt could be
        admitted (its first token must not wait for draft work)."""
        return bool(self.scheduler.running) and not self.scheduler.can_admit()

    def _propose(self, k: int) -> None:
        """Drafts for the coming step, before the scheduler counts them (every token read back)."""
        k_max = self.config.speculative_config.num_speculative_tokens
        plan: list[tuple[Request, int]] = []
        for request in self.scheduler.running:
            # Decoding, its first token delivered (a draft's prefill never delays a first token).
            # Constrained requests run without drafts: a draft would need the grammar's verdict.
            if (request.num_output_tokens and request.num_computed_tokens == request.num_tokens - 1
                    and request.grammar is None):
                cap = self._draft_cap(request, k_max if request.request_id in self.fixed_k else k)
                if cap > 0:
                    plan.append((request, cap))
        if plan:
            self.proposer.propose(plan)

    def _draft_cap(self, request: Request, k: int) -> int:
        """Drafts worth verifying: never past max_tokens or max_model_len."""
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None:
            k = min(k, max_tokens - request.num_output_tokens - 1)
        return min(k, self.max_model_len - request.num_tokens - 1)

    def _count_accepted_positions(self, num_accepted: int) -> None:
        """Drafts accepted at positions 0..num_accepted-1 of one verification (vLLM's
        spec_decode_num_accepted_tokens_per_pos)."""
        per_pos = self.stats.spec_accepted_per_pos
        per_pos.extend([0] * (num_accepted - len(per_pos)))
        for position in range(num_accepted):
            per_pos[position] += 1

    def _record(self, record: StepRecord) -> None:
        self.last_step = record
        tokens = record.num_prefill_tokens + record.num_emitted
        self.stats.iteration_tokens_buckets[bisect_left(ITERATION_TOKEN_BUCKETS, tokens)] += 1
        self.stats.iteration_tokens_sum += tokens
        if record.num_drafted:
            self.stats.spec_num_drafts += record.num_speculated
            self.stats.spec_draft_tokens += record.num_drafted
            self.stats.spec_accepted_tokens += record.num_accepted
            self.stats.spec_emitted_tokens += record.num_accepted + record.num_speculated
        if self.controller is not None:
            self.controller.record(record)
        if self.trace is not None:
            self.trace.write(record)

    def _add_prompt_logprobs(self, request: Request, rows: list[SampledRow]) -> None:
        for row in rows:
            request.prompt_logprobs.append(self._logprob_dict(row))

    def _logprob_dict(self, row: SampledRow) -> dict[int, Logprob]:
        decode = (lambda t: self.tokenizer.decode([t])) if self.tokenizer is not None else (lambda t: None)
        entries = {row.token_id: Logprob(row.logprob, row.rank, decode(row.token_id))}
        for rank, (token_id, logprob) in enumerate(row.top_logprobs or [], start=1):
            entries.setdefault(token_id, Logprob(logprob, rank, decode(token_id)))
        return entries

    def _append_token(self, request: Request, row: SampledRow, now: float) -> None:
        if request.grammar is not None and not request.grammar.accept(row.token_id):
            raise ValueError(f"token {row.token_id} breaks the request's grammar")
        request.append_token(row.token_id)
        metrics = request.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
            self.stats.prompt_tokens += request.num_prompt_tokens
        elif now != metrics.last_token_time:  # one interval per step, however many tokens it appends
            metrics.inter_token_latencies.append(now - metrics.last_token_time)
        metrics.last_token_time = now
        self.stats.generation_tokens += 1
        if request.logprobs is not None:
            request.logprobs.append(self._logprob_dict(row))
            request.cumulative_logprob += row.logprob
        delta = ""
        if request.detokenizer is not None:
            delta = request.detokenizer.add([row.token_id])
            request.output_text += delta
        status = self._stop_status(request, delta)
        if status is not None:
            self._finish(request, status)

    def _stop_status(self, request: Request, delta: str) -> RequestStatus | None:
        params = request.sampling_params
        token_id = request.output_token_ids[-1]
        if request.num_output_tokens >= params.min_tokens:
            if token_id in params.all_stop_token_ids:
                request.stop_reason = token_id if token_id in params.stop_token_ids else None
                return RequestStatus.FINISHED_STOPPED
            if match_stop_string(request, delta):
                return RequestStatus.FINISHED_STOPPED
        if request.grammar is not None and request.grammar.is_terminated:
            return RequestStatus.FINISHED_STOPPED  # ignore_eos, or a stop token of the request's own
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, request: Request, status: RequestStatus) -> None:
        # Its computed blocks go to the prefix cache first: a request that ends on the token its
        # prompt's step sampled would otherwise never offer the prompt (the next identical
        # prompt would miss). Every token they cover is known by now.
        self.kv_cache.cache_computed_blocks(request)
        self.scheduler.finish_request(request, status)
        self._forget(request)

    def _forget(self, request: Request) -> None:
        """A request left for good: nothing of it stays with the proposer."""
        self.fixed_k.discard(request.request_id)
        self.history_sampled.discard(request.request_id)
        self.constrained.discard(request.request_id)
        if self.proposer is not None:
            self.proposer.free(request)

    def _update_gauges(self) -> None:
        scheduler, stats = self.scheduler, self.stats
        stats.num_running, stats.num_waiting = scheduler.num_running, scheduler.num_waiting
        if self.grammar_waiting:  # compiling: waiting as vLLM counts them
            stats.num_waiting += sum(self.groups[rid].params.n for rid in self.grammar_waiting)
        stats.num_running_requests, stats.num_waiting_requests = stats.num_running, stats.num_waiting
        if self.num_sampled_groups:  # n > 1 somewhere: fewer requests than sequences (else no walk)
            running = {request.parent_id for request in scheduler.running}
            waiting = {request.parent_id for request in scheduler.waiting}
            waiting.update(request.parent_id for held in scheduler.held_siblings.values() for request in held)
            waiting.update(self.grammar_waiting)
            stats.num_running_requests, stats.num_waiting_requests = len(running), len(waiting - running)
        stats.kv_cache_usage = self.kv_cache.usage
        if self.grammar_compiler is not None:
            stats.grammars_compiled = self.grammar_compiler.num_compiled
            stats.grammar_compile_seconds = self.grammar_compiler.compile_seconds
        stats.prefix_cache_queries = self.kv_cache.prefix_queries
        stats.prefix_cache_hits = self.kv_cache.prefix_hits

    # ---- outputs -----------------------------------------------------------------------------
    def _outputs(self, touched: list[Request]) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        seen: set[str] = set()
        for request in touched:
            group = self.groups.get(request.parent_id)
            if group is None or group.request_id in seen:
                continue
            seen.add(group.request_id)
            finished = group.finished
            kind = group.params.output_kind
            if kind == RequestOutputKind.FINAL_ONLY and not finished:
                continue
            first = group.children[0]
            outputs.append(RequestOutput(
                request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
                prompt_logprobs=first.prompt_logprobs,
                outputs=[completion_output(c, kind) for c in group.children],
                finished=finished, metrics=first.metrics, num_cached_tokens=first.metrics.num_cached_tokens))
            if finished:
                del self.groups[group.request_id]
                self.num_sampled_groups -= group.params.n > 1
        return outputs
