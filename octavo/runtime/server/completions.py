"""POST /v1/completions: prompts (text or token ids, one or a batch) -> engine -> OpenAI's
text_completion objects, whole or streamed.

A batch of prompts becomes one engine request per prompt; choice `i * n + j` is sample j of
prompt i, as OpenAI numbers them. Usage counts are the engine's token counts: each prompt once,
every generated token of every choice.

`max_tokens: 0` with `echo` scores a prompt without generating (legacy OpenAI's and vLLM's way,
which lm-eval uses): the engine samples one token, which the response leaves out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from octavo.runtime.outputs import CompletionOutput, RequestOutput
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.server.errors import APIError, bad_request
from octavo.runtime.server.logprobs import TokenTexts, append_completion_logprobs, prompt_logprobs, token_texts
from octavo.runtime.server.protocol import (DEFAULT_COMPLETION_MAX_TOKENS, CompletionChoice, CompletionLogprobs,
                                            CompletionRequest, CompletionResponse, CompletionStreamResponse,
                                            UsageInfo)
from octavo.runtime.server.state import RequestAborted, ServingState, random_id
from octavo.runtime.server.streaming import (SSE_HEADERS, ChoiceTextEvents, cancel_on_disconnect, merge, sse_event,
                                             with_error_events)


@dataclass
class _Prompt:
    text: str | None  # what echo returns
    token_ids: list[int]
    params: SamplingParams
    zero_width: set[int] = field(default_factory=set)  # prompt tokens the echoed text leaves out


# A body of token-id prompts (no text, no echo) up to this many ids in all is checked on the event
# loop itself: it has nothing to tokenize, and the round trip through the tokenizer thread costs
# two thread hand-offs per request, which a burst of requests waits through one after another.
INLINE_PROMPT_IDS = 8192


def _prompt_items(raw: str | list) -> list[str | list[int]]:
    """The body's prompts one by one: a text, a list of token ids, or a batch of either ([]: none)."""
    if isinstance(raw, str):
        return [raw]
    if not raw:
        return []
    return list(raw) if isinstance(raw[0], (str, list)) else [raw]


def needs_tokenizer_thread(body: CompletionRequest) -> bool:
    """Whether preparing this body's prompts tokenizes or decodes text, or checks many ids."""
    items = _prompt_items(body.prompt)
    if body.echo or not items or any(not isinstance(item, list) for item in items):
        return True
    return sum(len(item) for item in items) > INLINE_PROMPT_IDS


def _prompts(state: ServingState, body: CompletionRequest, output_kind: RequestOutputKind) -> list[_Prompt]:
    items = _prompt_items(body.prompt)
    if not items:
        raise bad_request("prompt is empty: give a string, token ids, or a list of them", param="prompt")
    limit = state.settings.max_prompts_per_request  # at least 1: one prompt is never over it
    if len(items) > limit:
        raise bad_request(f"{len(items)} prompts in one request, over the limit of {limit} "
                          "(--max-prompts-per-request): send them in several requests", param="prompt")
    # max_tokens: null means the API's default (16), as in vLLM; 0 with echo scores the prompt.
    max_tokens = 1 if body.echo_only else (body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS)
    wanted = [n for n in (body.logprobs if body.echo else None, body.prompt_logprobs) if n is not None]
    state.check_logprobs(0, logprobs=body.logprobs, prompt_logprobs=body.prompt_logprobs)
    n = body.n or 1
    prompts = []
    entries = 0
    for item in items:
        zero_width: set[int] = set()
        if isinstance(item, str):
            text, add_special = item, body.add_special_tokens is not False
            if body.echo and body.logprobs is not None:
                token_ids, zero_width = state.encode_text(item, add_special)
            else:
                token_ids = state.encode(item, add_special)
        else:
            if not item:
                raise bad_request("a prompt of token ids is empty", param="prompt")
            text, token_ids = None, list(item)
        if body.truncate_prompt_tokens is not None and len(token_ids) > body.truncate_prompt_tokens:
            token_ids, text, zero_width = token_ids[-body.truncate_prompt_tokens:], None, set()
        state.check_prompt(token_ids, max_tokens)
        try:
            params = body.sampling_params(max_tokens, output_kind, body.logprobs,
                                          prompt_logprobs=max(wanted) if wanted else None,
                                          defaults=state.sampling_defaults)
        except ValueError as exc:
            raise bad_request(str(exc), param=getattr(exc, "param", None)) from exc
        if body.logprobs is not None:
            positions = (len(token_ids) if body.echo else 0) + (0 if body.echo_only else max_tokens)
            entries += n * positions * (body.logprobs + 1)
        if body.prompt_logprobs is not None:
            entries += len(token_ids) * (body.prompt_logprobs + 1)
        state.check_logprobs(entries)  # per prompt: a batch stops counting (and tokenizing) once over
        if body.echo and text is None:
            text = state.decode(token_ids)
        prompts.append(_Prompt(text, token_ids, params, zero_width))
    return prompts


def _text_of(state: ServingState, body: CompletionRequest) -> TokenTexts:
    return token_texts(lambda token_id: state.decode([token_id]), bool(body.return_tokens_as_token_ids))


def _generated(body: CompletionRequest, choice: CompletionOutput) -> tuple[str, list[int], list]:
    """The choice's text, token ids and log-probabilities as the response shows them (nothing
    when the request only scores its prompt)."""
    if body.echo_only:
        return "", [], []
    return choice.text, choice.token_ids, choice.logprobs or []


def _choice_logprobs(state: ServingState, body: CompletionRequest, prompt: _Prompt, output: RequestOutput,
                     token_ids: list[int], positions: list, echo: bool, text_offset: int) -> tuple[CompletionLogprobs, int]:
    """A choice's logprobs (the prompt's first when echoing); returns the text offset after them."""
    logprobs = CompletionLogprobs()
    text_of = _text_of(state, body)
    if echo:
        append_completion_logprobs(logprobs, output.prompt_token_ids,
                                   output.prompt_logprobs or [None] * len(output.prompt_token_ids),
                                   body.logprobs, text_of, 0, prompt.zero_width)
        text_offset = len(prompt.text or "")  # the generated text follows the echoed prompt exactly
    skipped = state.special_positions(token_ids) if prompt.params.skip_special_tokens else set()
    text_offset = append_completion_logprobs(logprobs, token_ids, positions, body.logprobs, text_of, text_offset,
                                             skipped)
    return logprobs, text_offset


def _prompt_logprobs(state: ServingState, body: CompletionRequest, output: RequestOutput):
    if body.prompt_logprobs is None:
        return None
    return prompt_logprobs(output.prompt_token_ids, output.prompt_logprobs, body.prompt_logprobs,
                           _text_of(state, body))


async def create_completion(state: ServingState, body: CompletionRequest, request: Request) -> Response:
    model = state.admit(body)
    stream = bool(body.stream)
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    prompts = (await state.run_tokenizer(_prompts, state, body, kind) if needs_tokenizer_thread(body)
               else _prompts(state, body, kind))
    await state.check_structured_outputs(prompts[0].params, body.structured_outputs_field())  # one spec for all
    response_id = f"cmpl-{body.request_id}" if body.request_id else random_id("cmpl")
    engine_id = random_id("cmpl")
    engine_ids = [engine_id if len(prompts) == 1 else f"{engine_id}-{i}" for i in range(len(prompts))]
    state.reserve(engine_ids, body.n or 1)  # no await between here and the engine's inbox counting it
    created = int(time.time())
    if stream:
        generators = [state.generate(rid, p.token_ids, p.text, p.params) for rid, p in zip(engine_ids, prompts)]
        return StreamingResponse(with_error_events(_events(state, body, model, response_id, created, prompts,
                                                           generators), response_id, "completion stream"),
                                 media_type="text/event-stream", headers=SSE_HEADERS,
                                 background=BackgroundTask(state.release, engine_ids))

    async def final(rid: str, prompt: _Prompt) -> RequestOutput:
        last = None
        async with aclosing(state.generate(rid, prompt.token_ids, prompt.text, prompt.params)) as outputs:
            async for output in outputs:
                last = output
        assert last is not None
        return last

    async def run_all() -> list[RequestOutput]:
        tasks = [asyncio.ensure_future(final(rid, p)) for rid, p in zip(engine_ids, prompts)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one failed (or we were cancelled): stop the others too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = await cancel_on_disconnect(request, run_all())
    except RequestAborted:
        raise APIError(503, "the request was stopped: the server is shutting down", code="aborted") from None
    finally:
        state.release(engine_ids)
    response = await state.run_tokenizer(_response, state, body, model, response_id, created, prompts, results)
    return JSONResponse(response.model_dump())


def _response(state: ServingState, body: CompletionRequest, model: str, response_id: str, created: int,
              prompts: list[_Prompt], results: list[RequestOutput]) -> CompletionResponse:
    n = body.n or 1
    choices: list[CompletionChoice] = []
    usage = UsageInfo()
    for prompt_index, (prompt, output) in enumerate(zip(prompts, results)):
        usage.prompt_tokens += len(output.prompt_token_ids)
        prompt_lp = _prompt_logprobs(state, body, output)
        for choice in output.outputs:
            text, token_ids, positions = _generated(body, choice)
            usage.completion_tokens += len(token_ids)
            logprobs = None
            if body.logprobs is not None:
                logprobs, _ = _choice_logprobs(state, body, prompt, output, token_ids, positions, bool(body.echo), 0)
            if body.echo:
                text = (prompt.text or "") + text
            finish = "length" if body.echo_only else choice.finish_reason
            choices.append(CompletionChoice(index=prompt_index * n + choice.index, text=text, logprobs=logprobs,
                                            finish_reason=finish, stop_reason=None if body.echo_only else
                                            choice.stop_reason, prompt_logprobs=prompt_lp))
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return CompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)


async def _events(state: ServingState, body: CompletionRequest, model: str, response_id: str, created: int,
                  prompts: list[_Prompt], generators: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[bytes]:
    n = body.n or 1
    usage = UsageInfo()
    exclude = None if body.include_usage else {"usage"}
    finished: set[int] = set()
    echo_pending = {i * n + j for i in range(len(prompts)) for j in range(n)} if body.echo else set()
    text_offsets: dict[int, int] = {}
    counted_prompts: set[int] = set()

    def response(choice: CompletionChoice) -> CompletionStreamResponse:
        return CompletionStreamResponse(id=response_id, created=created, model=model, choices=[choice])

    def chunk(choice: CompletionChoice) -> bytes:
        return sse_event(response(choice), exclude)

    # A choice's chunks without logprobs.
    text_chunk = ChoiceTextEvents(lambda index, text: response(CompletionChoice(index=index, text=text)), exclude)

    async with aclosing(merge(generators)) as outputs:
        async for prompt_index, output in outputs:
            if prompt_index not in counted_prompts:
                counted_prompts.add(prompt_index)
                usage.prompt_tokens += len(output.prompt_token_ids)
            prompt = prompts[prompt_index]
            for out in output.outputs:
                index = prompt_index * n + out.index
                if index in finished:
                    continue
                text, token_ids, positions = _generated(body, out)
                usage.completion_tokens += len(token_ids)
                echo = index in echo_pending
                logprobs = None
                if body.logprobs is not None:
                    logprobs, text_offsets[index] = _choice_logprobs(state, body, prompt, output, token_ids,
                                                                     positions, echo, text_offsets.get(index, 0))
                if echo:
                    echo_pending.discard(index)
                    text = (prompt.text or "") + text
                # A chunk per new token, even when it completes no text yet (as vLLM does):
                # clients time tokens by chunks. The last one carries the finish reason too.
                carries = bool(text or token_ids or (logprobs is not None and logprobs.tokens))
                if out.finish_reason is not None:
                    finished.add(index)
                    yield chunk(CompletionChoice(index=index, text=text if carries else "",
                                                 logprobs=logprobs if carries else None,
                                                 finish_reason="length" if body.echo_only else out.finish_reason,
                                                 stop_reason=None if body.echo_only else out.stop_reason))
                elif carries:
                    yield text_chunk(index, text) if logprobs is None else chunk(
                        CompletionChoice(index=index, text=text, logprobs=logprobs))
    if body.include_usage:
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        yield sse_event(CompletionStreamResponse(id=response_id, created=created, model=model, choices=[],
                                                 usage=usage))
