"""Grammar compilation off the engine's step path: a worker thread compiles, a cache keyed by
(kind, spec) keeps each grammar's future, so a schema compiles once however many requests (and
the server's validation) ask for it, and a slow schema never holds a step.

The engine keeps a request out of the scheduler until its future is done; the server awaits the
same future (with a timeout) to answer an invalid schema, regex or grammar with a 400.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from octavo.runtime.config import StructuredOutputsConfig
from octavo.runtime.sampling_params import StructuredOutputsParams
from octavo.runtime.structured.tokenizer_info import build_tokenizer_info

logger = logging.getLogger("octavo")

# xgrammar's messages start with "[12:00:00] /project/cpp/file.cc:123: ": the place in its C++,
# which says nothing to a client.
_CPP_PLACE = re.compile(r"^\s*\[[0-9:]+\]\s+\S+:\d+:\s*")


class GrammarError(ValueError):
    """A schema, regex or grammar that does not compile: the request's fault (a 400)."""


def grammar_key(spec: StructuredOutputsParams) -> tuple:
    """What a compiled grammar depends on: the constraint and the whitespace options."""
    value = getattr(spec, spec.kind)
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return (spec.kind, text, spec.disable_any_whitespace, spec.disable_additional_properties,
            spec.whitespace_pattern)


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar matching exactly one of the strings (JSON string escapes are EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def _whitespace(spec: StructuredOutputsParams, config: StructuredOutputsConfig) -> dict:
    """xgrammar's whitespace arguments for JSON. It takes no whitespace regex: an empty pattern
    means none, anything else is refused by name."""
    if spec.whitespace_pattern is not None:
        if spec.whitespace_pattern != "":
            raise GrammarError("guided_whitespace_pattern is not supported by the xgrammar backend: leave it out "
                               "(JSON may hold whitespace) or set disable_any_whitespace")
        return {"any_whitespace": False}
    if spec.disable_any_whitespace or config.disable_any_whitespace:
        return {"any_whitespace": False}
    return {"any_whitespace": True, "max_whitespace_cnt": config.max_whitespace or None}


def compile_spec(compiler: Any, spec: StructuredOutputsParams, config: StructuredOutputsConfig | None = None):
    """StructuredOutputsParams -> xgrammar CompiledGrammar; GrammarError naming what is wrong."""
    config = config or StructuredOutputsConfig()
    kind = spec.kind
    try:
        if kind == "json":
            schema = spec.json if not isinstance(spec.json, bool) else {}
            # strict_mode: properties a schema leaves open are closed, as OpenAI's strict schemas
            # are (vLLM's xgrammar default too).
            return compiler.compile_json_schema(json.dumps(schema), strict_mode=True, **_whitespace(spec, config))
        if kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', strict_mode=False, **_whitespace(spec, config))
        if kind == "regex":
            return compiler.compile_regex(spec.regex)
        if kind == "choice":
            return compiler.compile_grammar(choice_grammar(spec.choice))
        if kind == "grammar":
            # vLLM takes EBNF/GBNF (`root ::= ...`) and Lark (`start: ...`).
            if "::=" in spec.grammar:
                return compiler.compile_grammar(spec.grammar)
            return compiler.compile_lark(spec.grammar)
        return compiler.compile_structural_tag(spec.structural_tag)
    except GrammarError:
        raise
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with its parser's message
        names = {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regex",
                 "choice": "choice", "grammar": "grammar", "structural_tag": "structural tag"}
        message = _CPP_PLACE.sub("", str(exc)).strip() or type(exc).__name__
        raise GrammarError(f"invalid {names[kind]}: {message}") from None


class GrammarCompiler:
    """Compiles StructuredOutputsParams on one worker thread; futures cached by grammar_key (the
    most recent `max_cached`, failures too: the same bad schema fails the same way)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int],
                 config: StructuredOutputsConfig | None = None, max_cached: int = 512) -> None:
        if tokenizer is None:
            raise ValueError("structured outputs need the model's tokenizer (this model has none)")
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = set(stop_token_ids)
        self.config = config or StructuredOutputsConfig()
        # int32 words per bitmask row: the model's vocabulary or the tokenizer's, the larger.
        self.bitmask_width = (max(vocab_size, len(tokenizer)) + 31) // 32
        self.max_cached = max_cached
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="octavo-grammar")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._xgr_compiler = None  # built on the worker thread: a large vocabulary takes a while
        self.num_compiled = 0
        self.compile_seconds = 0.0  # summed over grammars compiled (cache hits cost nothing)

    def submit(self, spec: StructuredOutputsParams) -> Future:
        """The compiled grammar's future (done at once for a cached grammar)."""
        key = grammar_key(spec)
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future
            future = self._executor.submit(self._compile, spec)
            self._cache[key] = future
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return future

    def _compile(self, spec: StructuredOutputsParams):
        import xgrammar as xgr

        if self._xgr_compiler is None:
            info = build_tokenizer_info(self.tokenizer, self.vocab_size, self.stop_token_ids)
            self._xgr_compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # ours is the cache
        started = time.perf_counter()
        compiled = compile_spec(self._xgr_compiler, spec, self.config)
        elapsed = time.perf_counter() - started
        self.num_compiled += 1
        self.compile_seconds += elapsed
        logger.info("compiled a %s grammar in %.1f ms", spec.kind, elapsed * 1e3)
        return compiled

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
