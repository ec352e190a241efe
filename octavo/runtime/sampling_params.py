"""SamplingParams: how one request is decoded. Validated on construction, so a bad value fails
with a ValueError naming the field and its allowed range, before anything is scheduled."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import IntEnum


class RequestOutputKind(IntEnum):
    CUMULATIVE = 0  # every output carries the whole text so far (vLLM's default)
    DELTA = 1  # every output carries only what is new since the last one
    FINAL_ONLY = 2  # one output, when the request finishes


_GREEDY_EPSILON = 1e-5


@dataclass
class SamplingParams:
    """Sampling parameters with vLLM's names and defaults."""

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Filled in by the engine: the tokenizer's end-of-sequence ids (eos and generation_config's).
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k is None or self.top_k == -1:
            self.top_k = 0  # vLLM spells "no top-k" as -1; 0 means the same here
        if self.best_of is None:
            self.best_of = self.n
        self._validate()
        self.all_stop_token_ids = set(self.stop_token_ids)

    def _validate(self) -> None:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        check(isinstance(self.n, int) and self.n >= 1, "n", "an integer >= 1")
        check(isinstance(self.best_of, int) and self.best_of >= self.n, "best_of", f"an integer >= n ({self.n})")
        check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "in [-2, 2]")
        check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "in [-2, 2]")
        check(self.repetition_penalty > 0.0, "repetition_penalty", "> 0 (1 is off)")
        check(self.temperature >= 0.0, "temperature", ">= 0")
        check(0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]")
        check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "0 or -1 (off) or a positive integer")
        check(0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]")
        check(self.seed is None or isinstance(self.seed, int), "seed", "an integer or None")
        check(self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
              "max_tokens", "an integer >= 1 or None")
        check(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens", "an integer >= 0")
        if self.max_tokens is not None:
            check(self.min_tokens <= self.max_tokens, "min_tokens", f"<= max_tokens ({self.max_tokens})")
        check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
              "logprobs", "None or an integer in [0, 20]")
        check(self.prompt_logprobs is None
              or (isinstance(self.prompt_logprobs, int) and 0 <= self.prompt_logprobs <= 20),
              "prompt_logprobs", "None or an integer in [0, 20]")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "non-empty strings")
        check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              "non-negative integers")
        if self.best_of != self.n:
            raise ValueError("best_of different from n is not supported: use n")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPSILON

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)

    def with_eos(self, eos_token_ids: set[int]) -> "SamplingParams":
        """A copy that also stops on the model's end-of-sequence tokens (unless ignore_eos)."""
        params = self.clone()
        params.all_stop_token_ids = set(self.stop_token_ids)
        if not self.ignore_eos:
            params.all_stop_token_ids |= set(eos_token_ids)
        return params
