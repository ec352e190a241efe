"""A request's text as the user sees it: stop strings, the text held back while one could still
be forming, and the CompletionOutput of a request. Shared by the in-process engine and the front
of the multiprocess engine (which detokenizes while the engine core only samples token ids)."""

from __future__ import annotations

from typing import Any

from octavo.runtime.outputs import CompletionOutput
from octavo.runtime.request import Request
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.tokenizer import IncrementalDetokenizer


def check_text_params(params: SamplingParams, tokenizer: Any) -> None:
    """A model without a tokenizer produces no text (detokenize is switched off), and stop strings
    need text: a ValueError (the request fails alone) when they cannot be checked."""
    if params.detokenize and tokenizer is None:
        params.detokenize = False
    if params.stop and not params.detokenize:
        raise ValueError("stop strings need detokenization (a tokenizer and detokenize=True)")


def new_detokenizer(tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> IncrementalDetokenizer:
    """One sample's incremental detokenizer, primed with the prompt, as its params ask."""
    return IncrementalDetokenizer(tokenizer, prompt_token_ids, params.skip_special_tokens,
                                  params.spaces_between_special_tokens)


def match_stop_string(request: Request, delta: str) -> bool:
    """Whether the text `delta` just extended ends the request on a stop string; if so the text
    is cut at it (keeping it with include_stop_str_in_output) and the stop reason set."""
    params = request.sampling_params
    if not params.stop or not delta:
        return False
    text = request.output_text
    longest = max(len(s) for s in params.stop)
    search_from = max(0, len(text) - len(delta) - longest + 1)
    for stop in params.stop:
        at = text.find(stop, search_from)
        if at != -1:
            request.output_text = text[: at + (len(stop) if params.include_stop_str_in_output else 0)]
            request.stop_reason = stop
            return True
    return False


def visible_text(request: Request) -> str:
    """Text safe to show: while running, hold back what could be the start of a stop string."""
    text = request.output_text
    stops = request.sampling_params.stop
    if stops and not request.is_finished and not request.sampling_params.include_stop_str_in_output:
        hold = max(len(s) for s in stops) - 1
        return text[: max(0, len(text) - hold)]
    return text


def completion_output(request: Request, kind: RequestOutputKind) -> CompletionOutput:
    """The request's output so far (DELTA: what was not sent before, and marks it sent). A DELTA
    slices only the new tokens: copying the whole output each step made streaming a long answer
    quadratic in its length."""
    text = visible_text(request)
    ids, logprobs = request.output_token_ids, request.logprobs
    known = len(ids) - request.num_placeholders  # tokens read back (a launched step's are not yet)
    start = 0
    if kind == RequestOutputKind.DELTA:
        text_offset, start = request.sent_text_offset, request.sent_token_offset
        request.sent_text_offset, request.sent_token_offset = len(text), known
        text = text[text_offset:]
    return CompletionOutput(
        index=request.index, text=text, token_ids=ids[start:known],
        cumulative_logprob=request.cumulative_logprob if logprobs is not None else None,
        logprobs=logprobs[start:] if logprobs is not None else None,
        finish_reason=request.finish_reason, stop_reason=request.stop_reason)
