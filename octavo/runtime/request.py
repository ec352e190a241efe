"""Per-request state: token ids, progress, blocks, sampling state and timings.

`num_computed_tokens` is how many of `all_token_ids` have their K/V in the cache. A request is in
prefill while that is below the prompt length, and decodes one token (or 1 + k with speculation)
per step after that. Preemption resets it to 0; the outputs stay and are recomputed as prompt.
"""

from __future__ import annotations

import enum
import time

import torch

from octavo.runtime.outputs import Logprob, RequestMetrics
from octavo.runtime.sampling_params import SamplingParams


PLACEHOLDER = -1  # a sampled token still on the device (asynchronous scheduling)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_ABORTED)


class Request:
    """One sequence being generated. A user request with n > 1 becomes n of these, children of
    one parent id, the later ones waiting until the first has cached the prompt's blocks."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        parent_id: str | None = None,
        index: int = 0,
        prompt: str | None = None,
        arrival_time: float | None = None,
        generator: torch.Generator | None = None,
        prefix_source: "Request | None" = None,
        shares_prefix: bool = False,
    ) -> None:
        self.request_id = request_id
        self.parent_id = parent_id or request_id
        self.index = index
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        # Hashes of this request's full blocks, in order (prefix caching); extended as blocks fill.
        self.block_hashes: list[bytes] = []
        self.num_registered_blocks = 0  # leading full blocks already offered to the prefix cache
        self.generator = generator
        # n > 1: siblings share the prompt's full blocks through the prefix cache even when it
        # is off; a sibling waits until `prefix_source` has computed the prompt.
        self.prefix_source = prefix_source
        self.shares_prefix = shares_prefix
        self.stop_reason: int | str | None = None
        self.cumulative_logprob = 0.0
        self.logprobs: list[dict[int, Logprob]] | None = [] if sampling_params.logprobs is not None else None
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = (
            [None] if sampling_params.prompt_logprobs is not None else None)
        # Speculative decoding: draft proposals to verify in the next step.
        self.spec_token_ids: list[int] = []
        # Structured outputs: this sequence's grammar state (structured.matcher.RequestGrammar).
        self.grammar = None
        # Asynchronous scheduling: sampled tokens not read back yet stand at the end of the token
        # lists as placeholders; `finishing` once the request will end whatever they turn out to be.
        self.num_placeholders = 0
        self.finishing = False
        self.metrics = RequestMetrics(arrival_time=arrival_time if arrival_time is not None else time.monotonic())
        # Detokenizer state (see tokenizer.IncrementalDetokenizer).
        self.detokenizer = None
        self.output_text = ""
        self.sent_text_offset = 0
        self.sent_token_offset = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.finished else None

    @property
    def needs_prompt_logprobs(self) -> bool:
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def push_placeholder(self) -> None:
        self.append_token(PLACEHOLDER)
        self.num_placeholders += 1

    def pop_placeholders(self) -> int:
        """Take off the placeholders after the oldest one, and the oldest one; how many came after
        it (they go back with restore_placeholders once its token is in)."""
        later = self.num_placeholders - 1
        del self.output_token_ids[-self.num_placeholders:]
        del self.all_token_ids[-self.num_placeholders:]
        self.num_placeholders = 0
        return later

    def restore_placeholders(self, count: int) -> None:
        for _ in range(count):
            self.push_placeholder()

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.value}, prompt={self.num_prompt_tokens}, "
                f"output={self.num_output_tokens}, computed={self.num_computed_tokens})")
