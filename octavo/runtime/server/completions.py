"""POST /v1/completions: prompts (text or token ids, one or a batch) -> engine -> OpenAI's
text_completion objects, whole or streamed.

A batch of prompts becomes one engine request per prompt; choice `i * n + j` is sample j of
prompt i, as OpenAI numbers them. Usage counts are the engine's token counts: each prompt once,
every generated token of every choice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from octavo.runtime.outputs import RequestOutput
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.server.errors import APIError, bad_request
from octavo.runtime.server.logprobs import append_completion_logprobs
from octavo.runtime.server.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest,
                                            CompletionResponse, CompletionStreamResponse, UsageInfo)
from octavo.runtime.server.state import RequestAborted, ServingState, random_id
from octavo.runtime.server.streaming import SSE_HEADERS, cancel_on_disconnect, merge, sse_event, with_error_events



class _Prompt:
    def __init__(self, text: str | None, token_ids: list[int], params: SamplingParams) -> None:
        self.text = text
        self.token_ids = token_ids
        self.params = params


def _prompts(state: ServingState, body: CompletionRequest, output_kind: RequestOutputKind) -> list[_Prompt]:
    raw = body.prompt
    if isinstance(raw, str):
        items: list[str | list[int]] = [raw]
    elif not raw:
        raise bad_request("prompt is empty: give a string, token ids, or a list of them", param="prompt")
    elif isinstance(raw[0], (str, list)):
        items = list(raw)  # a batch
    else:
        items = [list(raw)]  # one prompt of token ids
    num_logprobs = body.logprobs
    prompts = []
    for item in items:
        if isinstance(item, str):
            text, token_ids = item, state.encode(item)
        else:
            if not item:
                raise bad_request("a prompt of token ids is empty", param="prompt")
            text, token_ids = None, list(item)
        max_tokens = state.check_prompt(token_ids, body.max_tokens)
        try:
            params = body.sampling_params(max_tokens, output_kind, num_logprobs,
                                          prompt_logprobs=num_logprobs if body.echo else None)
        except ValueError as exc:
            raise bad_request(str(exc)) from exc
        if body.echo and text is None:
            text = state.decode(token_ids)
        prompts.append(_Prompt(text, token_ids, params))
    return prompts


def _echo_logprobs(state: ServingState, output: RequestOutput, num: int, target: CompletionLogprobs) -> int:
    positions = output.prompt_logprobs or [None] * len(output.prompt_token_ids)
    return append_completion_logprobs(target, output.prompt_token_ids, positions, num, _decoder(state), 0)


def _decoder(state: ServingState):
    return lambda token_id: state.decode([token_id])


async def create_completion(state: ServingState, body: CompletionRequest, request: Request) -> Response:
    model = state.admit(body)
    stream = bool(body.stream)
    prompts = _prompts(state, body, RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)
    state.check_capacity()
    request_id = random_id("cmpl")
    engine_ids = [request_id if len(prompts) == 1 else f"{request_id}-{i}" for i in range(len(prompts))]
    created = int(time.time())
    if stream:
        generators = [state.generate(rid, p.token_ids, p.text, p.params) for rid, p in zip(engine_ids, prompts)]
        return StreamingResponse(with_error_events(_events(state, body, model, request_id, created, prompts,
                                                           generators), request_id, "completion stream"),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

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
    return JSONResponse(_response(state, body, model, request_id, created, prompts, results).model_dump())


def _response(state: ServingState, body: CompletionRequest, model: str, request_id: str, created: int,
              prompts: list[_Prompt], results: list[RequestOutput]) -> CompletionResponse:
    n = body.n or 1
    choices: list[CompletionChoice] = []
    usage = UsageInfo()
    for prompt_index, (prompt, output) in enumerate(zip(prompts, results)):
        usage.prompt_tokens += len(output.prompt_token_ids)
        for choice in output.outputs:
            usage.completion_tokens += len(choice.token_ids)
            text = choice.text
            logprobs = None
            if body.logprobs is not None:
                logprobs = CompletionLogprobs()
                offset = _echo_logprobs(state, output, body.logprobs, logprobs) if body.echo else 0
                append_completion_logprobs(logprobs, choice.token_ids, choice.logprobs or [], body.logprobs,
                                           _decoder(state), offset)
            if body.echo:
                text = (prompt.text or "") + text
            choices.append(CompletionChoice(index=prompt_index * n + choice.index, text=text, logprobs=logprobs,
                                            finish_reason=choice.finish_reason, stop_reason=choice.stop_reason))
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return CompletionResponse(id=request_id, created=created, model=model, choices=choices, usage=usage)


async def _events(state: ServingState, body: CompletionRequest, model: str, request_id: str, created: int,
                  prompts: list[_Prompt], generators: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[bytes]:
    n = body.n or 1
    usage = UsageInfo()
    exclude = None if body.include_usage else {"usage"}
    finished: set[int] = set()
    echo_pending = {i * n + j for i in range(len(prompts)) for j in range(n)} if body.echo else set()
    text_offsets: dict[int, int] = {}
    counted_prompts: set[int] = set()

    def chunk(choice: CompletionChoice) -> bytes:
        return sse_event(CompletionStreamResponse(id=request_id, created=created, model=model, choices=[choice]),
                         exclude)

    async with aclosing(merge(generators)) as outputs:
        async for prompt_index, output in outputs:
            if prompt_index not in counted_prompts:
                counted_prompts.add(prompt_index)
                usage.prompt_tokens += len(output.prompt_token_ids)
            for out in output.outputs:
                index = prompt_index * n + out.index
                if index in finished:
                    continue
                usage.completion_tokens += len(out.token_ids)
                text = out.text
                logprobs = None
                if body.logprobs is not None:
                    logprobs = CompletionLogprobs()
                    offset = text_offsets.get(index, 0)
                    if index in echo_pending:
                        offset = _echo_logprobs(state, output, body.logprobs, logprobs)
                    text_offsets[index] = append_completion_logprobs(
                        logprobs, out.token_ids, out.logprobs or [], body.logprobs, _decoder(state), offset)
                if index in echo_pending:
                    echo_pending.discard(index)
                    text = (prompts[prompt_index].text or "") + text
                # A chunk per new token, even when it completes no text yet (as vLLM does):
                # clients time tokens by chunks.
                if text or out.token_ids or (logprobs is not None and logprobs.tokens):
                    yield chunk(CompletionChoice(index=index, text=text, logprobs=logprobs))
                if out.finish_reason is not None:
                    finished.add(index)
                    yield chunk(CompletionChoice(index=index, text="", finish_reason=out.finish_reason,
                                                 stop_reason=out.stop_reason))
    if body.include_usage:
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        yield sse_event(CompletionStreamResponse(id=request_id, created=created, model=model, choices=[],
                                                 usage=usage))
