"""SamplingParams: how one request is decoded. Validated on construction, so a bad value fails
with a ValueError naming the field and its allowed range, before anything is scheduled."""

from __future__ import annotations

import copy
import json as jsonlib
from dataclasses import dataclass, field
from enum import IntEnum


class RequestOutputKind(IntEnum):
    CUMULATIVE = 0  # every output carries the whole text so far (vLLM's default)
    DELTA = 1  # every output carries only what is new since the last one
    FINAL_ONLY = 2  # one output, when the request finishes


_GREEDY_EPSILON = 1e-5


@dataclass
class StructuredOutputsParams:
    """What a request's output must match, with vLLM's names (its StructuredOutputsParams, formerly
    GuidedDecodingParams): exactly one of a JSON schema, a regex, a list of choices, a grammar
    (EBNF / GBNF, or Lark as vLLM takes it), any JSON object, or a structural tag. Only the shape is
    checked here; whether a schema or regex compiles is the grammar compiler's answer."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    disable_fallback: bool = False  # taken for vLLM's sake: octavo has one backend and never falls back

    KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __post_init__(self) -> None:
        if isinstance(self.json, str):
            try:
                self.json = jsonlib.loads(self.json)
            except ValueError as exc:
                raise ValueError(f"structured outputs: json is not valid JSON: {exc}") from None
        if self.json is not None and not isinstance(self.json, (dict, bool)):
            raise ValueError("structured outputs: json must be a JSON schema (an object)")
        if self.choice is not None:
            self.choice = list(self.choice)
            if not self.choice or not all(isinstance(c, str) for c in self.choice):
                raise ValueError("structured outputs: choice must be a non-empty list of strings")
        for name in ("regex", "grammar", "structural_tag"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured outputs: {name} must be a non-empty string")
        if self.json_object is False:
            self.json_object = None
        given = [kind for kind in self.KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError("structured outputs: give exactly one of " + ", ".join(self.KINDS)
                             + (f" (got {', '.join(given)})" if given else ""))

    @property
    def kind(self) -> str:
        return next(kind for kind in self.KINDS if getattr(self, kind) is not None)


GuidedDecodingParams = StructuredOutputsParams  # vLLM's older name


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
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: StructuredOutputsParams | None = None  # vLLM's older name for structured_outputs
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
        if self.guided_decoding is not None:
            if self.structured_outputs is not None and self.structured_outputs is not self.guided_decoding:
                raise ValueError("give structured_outputs or guided_decoding (its older name), not both")
            self.structured_outputs = self.guided_decoding
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        self.guided_decoding = self.structured_outputs
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
        check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
              "structured_outputs", "None or a StructuredOutputsParams")
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
