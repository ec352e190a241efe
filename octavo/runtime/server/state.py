"""What one app knows: its settings, the engine (once loaded), its lifecycle phase, the requests
it has in flight, and the checks every generation request passes before reaching the engine.

Phases: STARTING (the engine is loading: API requests get 503) -> READY -> DRAINING (SIGTERM:
new requests get 503, in-flight ones finish) ; FAILED when the engine could not load.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from octavo.runtime.async_engine import AsyncLLMEngine, EngineDeadError, RequestFailedError
from octavo.runtime.outputs import RequestOutput
from octavo.runtime.profiler import ProfilerNotConfigured
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.server.errors import APIError, bad_request
from octavo.runtime.server.ids import random_hex
from octavo.runtime.server.metrics import ServerMetrics
from octavo.runtime.structured.compiler import GrammarError

logger = logging.getLogger("octavo.server")

# How long a request's handler waits for its grammar to compile before sending it on regardless (the
# engine then waits): long enough for any schema seen in practice, short of a client's timeout.
GRAMMAR_CHECK_TIMEOUT_S = 10.0


@dataclass
class ServerSettings:
    """How the server behaves, apart from the engine (cli.server_settings builds it from ServerArgs)."""

    served_model_names: list[str] = field(default_factory=list)  # the first is the one reported
    api_keys: list[str] = field(default_factory=list)  # any one of them is accepted; none: no key
    max_queue_len: int | None = None  # 429 once this many sequences would wait; None = unbounded
    max_prompts_per_request: int = 256  # prompts in one /v1/completions request
    max_request_body_bytes: int = 4 * 2**20  # 413 beyond this
    max_logprobs: int = 20  # top log-probabilities per position
    max_response_logprobs: int = 2**18  # log-probability entries in one response
    shutdown_timeout: float = 30.0  # SIGTERM: seconds in-flight requests get to finish
    chat_template: str | None = None  # overrides the tokenizer's
    enable_auto_tool_choice: bool = False  # tool_choice auto (the default with tools) needs it and a parser
    tool_call_parser: str | None = None  # a name in tool_parsers.PARSERS
    generation_config: str = "auto"  # auto | vllm | a directory (defaults.sampling_defaults)
    override_generation_config: dict[str, Any] = field(default_factory=dict)
    metrics_prefix: str = "octavo"
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    disable_docs: bool = False
    engine_death_grace: float = 2.0  # seconds between the engine loop dying and the process exiting 1


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class RequestAborted(Exception):
    """The engine stopped a request before it finished (the server is draining)."""


def random_id(prefix: str) -> str:
    return f"{prefix}-{random_hex()}"


class ServingState:
    def __init__(self, settings: ServerSettings, engine: AsyncLLMEngine | None = None) -> None:
        self.settings = settings
        self.phase = Phase.STARTING
        self.engine: AsyncLLMEngine | None = None
        self.tokenizer: Any = None
        self.max_model_len = 0
        self.model_root: str | None = None
        self.sampling_defaults: dict[str, Any] = {}  # from --generation-config, once the model is known
        self.created = int(time.time())
        self.load_error: str | None = None
        self.engine_died_at: float | None = None  # time.monotonic() when the engine loop died
        self.num_api_requests = 0  # HTTP requests on /v1 being answered (the drain waits for 0)
        # Engine request ids admitted here -> their sequences (n). They count as waiting (for
        # 429) until the engine's published sequence counts include them.
        self._reserved: dict[str, int] = {}
        self._active: set[str] = set()
        # Tokenization, chat templates and detokenization for responses run here, never on the
        # event loop (which must answer probes meanwhile). One thread: a fast tokenizer is not
        # safe to use from two threads at once.
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="octavo-tokenizer")
        # A text longer than this cannot fit the context: refused before tokenizing (attach_engine).
        self.max_prompt_chars: int | None = None
        self.metrics = ServerMetrics(self.model_name, self._engine_stats, settings.metrics_prefix)
        if engine is not None:
            self.attach_engine(engine)

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.settings.served_model_names[0]

    def attach_engine(self, engine: AsyncLLMEngine) -> None:
        """The engine is loaded: serve it (unless a drain began meanwhile)."""
        from octavo.runtime.tokenizer import load_tokenizer

        self.engine = engine
        engine.add_death_callback(self._engine_died)
        config = engine.engine.config.model_config
        # The server's own tokenizer: fast tokenizers are not safe to share with the engine
        # thread, which detokenizes while the event loop encodes prompts.
        self.tokenizer = (load_tokenizer(config.tokenizer, required=False)
                          if engine.get_tokenizer() is not None else None)
        self.max_model_len = engine.engine.max_model_len
        self.max_prompt_chars = _max_prompt_chars(self.tokenizer, self.max_model_len)
        self.model_root = config.model
        from octavo.runtime.server.defaults import sampling_defaults

        self.sampling_defaults = sampling_defaults(self.settings.generation_config, config.model,
                                                   self.settings.override_generation_config)
        if self.sampling_defaults:
            logger.info("sampling defaults for fields a request leaves out (--generation-config %s): %s",
                        self.settings.generation_config, self.sampling_defaults)
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY
            self.metrics.ready.set(1)

    def _engine_died(self, _: BaseException) -> None:
        # On the engine thread: fields and a gauge only. The server's tick exits the process
        # after ServerSettings.engine_death_grace (DrainingServer), so Kubernetes restarts it at once.
        self.engine_died_at = time.monotonic()
        self.metrics.ready.set(0)

    def fail(self, message: str) -> None:
        self.load_error = message
        self.phase = Phase.FAILED

    def start_drain(self) -> None:
        """Stop taking requests. Safe to call from a signal handler (it only sets fields)."""
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        self.metrics.ready.set(0)

    @property
    def healthy(self) -> bool:
        return self.phase is Phase.READY and self.engine is not None and self.engine.is_running

    def unavailable(self) -> APIError | None:
        """Why API requests are refused right now, or None."""
        if self.phase is Phase.STARTING:
            return APIError(503, "the model is still loading: retry shortly", code="starting",
                            headers={"Retry-After": "5"})
        if self.phase is Phase.DRAINING:
            return APIError(503, "the server is shutting down: retry on another replica", code="draining")
        if self.phase is Phase.FAILED:
            return APIError(503, "the model failed to load; see the server log", code="load_failed")
        if self.engine is None or not self.engine.is_running:
            return APIError(503, "the engine is not running; see the server log", code="engine_dead")
        return None

    def _engine_stats(self):
        """(EngineStats, EngineConfig, KV cache blocks) for /metrics, or None while loading."""
        if self.engine is None:
            return None
        core = self.engine.engine
        return self.engine.stats, core.config, core.kv_cache.num_blocks

    async def profile(self, action: str) -> None:
        """start_profile / stop_profile on the engine thread; no profiler configured is a 400."""
        refusal = self.unavailable()
        if refusal is not None:
            raise refusal
        control = self.engine.start_profile if action == "start" else self.engine.stop_profile
        try:
            await control()
        except ProfilerNotConfigured as exc:
            raise bad_request(str(exc)) from exc

    # ---- checks before the engine ------------------------------------------------------------
    def admit(self, body: Any) -> str:
        """The served model name a request body asks for, or a 404 when that model is not served
        here, or a 400 when the body uses a feature this server does not support."""
        model = self.resolve_model(body.model)
        problem = body.unsupported()
        if problem is not None:
            raise bad_request(problem[1], param=problem[0])
        return model

    def resolve_model(self, requested: str | None) -> str:
        if requested is None or requested in self.settings.served_model_names:
            return requested or self.model_name
        raise APIError(404, f"the model {requested!r} does not exist here; use one of: "
                       f"{', '.join(self.settings.served_model_names)}", param="model", code="model_not_found")

    async def run_tokenizer(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the tokenizer thread: for anything that tokenizes, renders a chat template
        or detokenizes more than a few tokens."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, functools.partial(fn, *args))

    async def check_structured_outputs(self, params: SamplingParams, param: str | None) -> None:
        """400 naming the problem for a schema, regex or grammar that does not compile (compiled
        off the event loop, at most GRAMMAR_CHECK_TIMEOUT_S; the engine reuses the result)."""
        if params.structured_outputs is None or self.engine is None:
            return
        try:
            await self.engine.check_structured_outputs(params.structured_outputs, GRAMMAR_CHECK_TIMEOUT_S)
        except GrammarError as exc:
            raise bad_request(str(exc), param=param) from None

    def check_text_length(self, num_chars: int, param: str = "prompt") -> None:
        """400 for a text too long to fit the context whatever its tokens, before tokenizing it."""
        if self.max_prompt_chars is not None and num_chars > self.max_prompt_chars:
            raise bad_request(f"the prompt has {num_chars} characters, more than any prompt that fits the model's "
                              f"context length of {self.max_model_len} tokens can have: shorten it", param=param,
                              code="context_length_exceeded")

    def encode(self, text: str, add_special_tokens: bool = True, param: str = "prompt") -> list[int]:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer: send the prompt as token ids", param=param)
        self.check_text_length(len(text), param)
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        except Exception as exc:  # e.g. lone surrogates the tokenizer cannot encode
            raise bad_request(f"the text cannot be tokenized ({type(exc).__name__})", param=param) from exc

    def encode_text(self, text: str, add_special_tokens: bool = True,
                    param: str = "prompt") -> tuple[list[int], set[int]]:
        """Token ids, and the positions of those that take no room in `text` (the BOS the
        tokenizer adds): echoed log-probabilities give them no width, so text_offset indexes
        the text as returned. Costs character offsets: only for echo with logprobs."""
        if not getattr(self.tokenizer, "is_fast", False):
            ids = self.encode(text, add_special_tokens, param)
            return ids, self.special_positions(ids)
        self.check_text_length(len(text), param)
        try:
            encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        except Exception as exc:
            raise bad_request(f"the text cannot be tokenized ({type(exc).__name__})", param=param) from exc
        return list(encoded["input_ids"]), {i for i, (start, end) in enumerate(encoded["offset_mapping"])
                                            if start == end}

    def special_positions(self, token_ids: list[int]) -> set[int]:
        """Positions of special tokens (what skip_special_tokens leaves out of text)."""
        special = set(getattr(self.tokenizer, "all_special_ids", ()) or ())
        return {i for i, token_id in enumerate(token_ids) if token_id in special}

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def check_logprobs(self, entries: int, **requested: int | None) -> None:
        """400 when a top-logprobs field asks for more than --max-logprobs, or the response would
        hold more than --max-response-logprobs entries (`entries`: positions x (k + 1), summed)."""
        limit = self.settings.max_logprobs
        for param, value in requested.items():
            if value is not None and value > limit:
                raise bad_request(f"{param} is {value}, over this server's limit of {limit} (--max-logprobs)",
                                  param=param)
        budget = self.settings.max_response_logprobs
        if entries > budget:
            raise bad_request(f"this request would return {entries} log-probability entries, over this server's "
                              f"limit of {budget} (--max-response-logprobs): lower n, max_tokens, the number of "
                              "logprobs or the prompts echoed", param="logprobs", code="too_many_logprobs")

    def check_prompt(self, token_ids: list[int], max_tokens: int | None, param: str = "prompt") -> int:
        """Validate a prompt; returns the max_tokens to use (the room left when None)."""
        assert self.engine is not None
        num_prompt = len(token_ids)
        if num_prompt >= self.max_model_len:
            raise bad_request(f"the prompt has {num_prompt} tokens but the model's context length is "
                              f"{self.max_model_len}: shorten the prompt", param=param,
                              code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = self.max_model_len - num_prompt
        elif num_prompt + max_tokens > self.max_model_len:
            raise bad_request(
                f"the prompt ({num_prompt} tokens) plus max_tokens ({max_tokens}) is {num_prompt + max_tokens} "
                f"tokens, over the model's context length of {self.max_model_len}: shorten the prompt or "
                f"lower max_tokens to at most {self.max_model_len - num_prompt}",
                param="max_tokens", code="context_length_exceeded")
        try:
            self.engine.engine.validate_prompt(token_ids)
        except ValueError as exc:
            raise bad_request(str(exc), param=param) from exc
        return max_tokens

    def sequences_waiting(self) -> int:
        """Sequences waiting for the engine: its last published count, plus the sequences of
        requests admitted here that the engine has not counted yet."""
        assert self.engine is not None
        publication, _, waiting = self.engine.sequence_counts()
        for request_id, num_seqs in list(self._reserved.items()):
            added_at = self.engine.added_at(request_id)
            if 0 <= added_at < publication:
                del self._reserved[request_id]  # the engine's count includes it now
            else:
                waiting += num_seqs
        return waiting

    def reserve(self, request_ids: list[str], n: int) -> None:
        """Admit one HTTP request's engine requests (`n` sequences each) or refuse it: 429 when
        its sequences would make more than --max-queue-len wait, 400 when they always would.
        Every new sequence counts as waiting until the engine says otherwise (siblings of n > 1
        do wait for the first to compute the prompt), so the engine's waiting count never passes
        the limit unless preemption (KV cache pressure) sends running sequences back. Check and
        reservation are one synchronous step on the event loop: concurrent requests cannot all
        pass the check before any is counted. `release` undoes it."""
        num_seqs = len(request_ids) * n
        limit = self.settings.max_queue_len
        if limit is not None:
            if num_seqs > limit:
                raise bad_request(f"this request needs {num_seqs} sequences ({len(request_ids)} prompt(s) x n={n}) "
                                  f"but at most {limit} may wait (--max-queue-len): split it", param="n",
                                  code="too_many_sequences")
            waiting = self.sequences_waiting()
            if waiting + num_seqs > limit:
                self.metrics.rejected("queue_full")
                raise APIError(429, f"the server's queue is full ({waiting} sequences waiting, at most {limit}): "
                               "retry later", code="queue_full", headers={"Retry-After": "1"})
        for request_id in request_ids:
            self._reserved[request_id] = n

    def release(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._reserved.pop(request_id, None)

    # ---- generation --------------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int], prompt_text: str | None,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """The engine's outputs for one prompt, with bookkeeping: drain can abort it, the queue
        limit counts it, and its metrics are recorded when it ends however it ends.
        Consumers must close it (`aclosing`) when they stop early."""
        engine = self.engine
        if engine is None:
            raise self.unavailable() or APIError(503, "the engine is not running")
        prompt: dict[str, Any] = {"prompt_token_ids": prompt_token_ids}
        if prompt_text is not None:
            prompt["prompt"] = prompt_text
        delta = params.output_kind == RequestOutputKind.DELTA
        num_tokens: dict[int, int] = {}
        finish_reasons: dict[int, str | None] = {i: None for i in range(params.n)}
        last: RequestOutput | None = None
        logger.debug("request %s: %d prompt tokens, n=%d, max_tokens=%s", request_id, len(prompt_token_ids),
                     params.n, params.max_tokens)
        self._active.add(request_id)
        try:
            async with aclosing(engine.generate(prompt, params, request_id)) as outputs:
                async for output in outputs:
                    last = output
                    for choice in output.outputs:
                        count = len(choice.token_ids)
                        num_tokens[choice.index] = num_tokens.get(choice.index, 0) + count if delta else count
                        finish_reasons[choice.index] = choice.finish_reason
                    yield output
        except EngineDeadError as exc:
            raise APIError(503, "the engine stopped; see the server log", code="engine_dead") from exc
        except RequestFailedError as exc:
            raise APIError(500, f"the engine failed this request (request {request_id}); see the server log",
                           code="request_failed") from exc
        except ValueError as exc:  # the engine refused the prompt: a bad request, not a request
            finish_reasons.clear()
            raise bad_request(str(exc), param="prompt") from exc
        finally:
            self._active.discard(request_id)
            if finish_reasons:
                self.metrics.observe_request(last, num_tokens, finish_reasons, params)
        if last is None or not last.finished:
            raise RequestAborted(request_id)

    async def abort_all(self) -> int:
        """Abort every request in flight (the drain's grace period is over)."""
        if self.engine is None:
            return 0
        request_ids = list(self._active)
        for request_id in request_ids:
            await self.engine.abort(request_id)
        return len(request_ids)


def _max_prompt_chars(tokenizer: Any, max_model_len: int) -> int | None:
    """The most characters a text that fits `max_model_len` tokens can have: each token stands for
    at most as many characters as the vocabulary's longest entry (byte-level vocabularies spell a
    byte as one character, SentencePiece a space as one), doubled for normalizers that merge
    characters. None (no bound) when the vocabulary cannot be read."""
    try:
        longest = max(map(len, tokenizer.get_vocab()))
    except Exception:  # noqa: BLE001 - no tokenizer, or one without a readable vocabulary
        return None
    return 2 * max(longest, 1) * max_model_len
