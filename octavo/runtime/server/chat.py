"""POST /v1/chat/completions: messages -> the tokenizer's chat template -> engine -> OpenAI's
chat.completion objects, whole or streamed.

A stream opens each choice with a role delta, carries content deltas (and tool_calls deltas,
tool_calling.py), closes each choice with an empty delta and its finish_reason, adds a usage
chunk when asked (stream_options.include_usage) and ends with [DONE].
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from octavo.runtime.outputs import RequestOutput
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from octavo.runtime.server.errors import APIError, bad_request
from octavo.runtime.server.logprobs import chat_logprobs, prompt_logprobs, token_texts
from octavo.runtime.server.protocol import (AssistantMessage, ChatChoice, ChatChoiceLogprobs, ChatCompletionChunk,
                                            ChatCompletionRequest, ChatCompletionResponse, ChatStreamChoice,
                                            DeltaMessage, FunctionCall, TokenizeChatRequest, ToolCall, UsageInfo)
from octavo.runtime.server.state import RequestAborted, ServingState, random_id
from octavo.runtime.server.streaming import (SSE_HEADERS, ChoiceTextEvents, cancel_on_disconnect, sse_event,
                                             with_error_events)
from octavo.runtime.server.tool_calling import (ToolPlan, finish_reason, template_message, template_tools,
                                                tool_plan)
from octavo.runtime.server.tool_parsers import extract
from octavo.runtime.server.tool_parsers.stream import ToolCallStream, tool_call_id

ChatTemplateRequest = ChatCompletionRequest | TokenizeChatRequest


def render_prompt(state: ServingState, body: ChatTemplateRequest) -> list[int]:
    """The conversation's prompt token ids: the chat template (the request's, --chat-template's or
    the tokenizer's) rendered with the request's template fields; BOS added on top only with
    add_special_tokens (vLLM's default leaves that to the template)."""
    from octavo.runtime.tokenizer import apply_chat_template

    if state.tokenizer is None:
        raise bad_request("this model has no tokenizer, so it cannot chat: use /v1/completions with token ids",
                          param="messages")
    conversation = [template_message(m) for m in body.messages]
    state.check_text_length(sum(len(m["content"] or "") for m in conversation), param="messages")
    kwargs = dict(body.chat_template_kwargs or {})
    if body.continue_final_message:
        kwargs["continue_final_message"] = True
    if body.documents is not None:
        kwargs["documents"] = body.documents
    tools = template_tools(body.tools)
    if tools is not None:
        kwargs["tools"] = tools
    template = body.chat_template or state.settings.chat_template
    try:
        rendered = apply_chat_template(state.tokenizer, conversation,
                                       add_generation_prompt=body.add_generation_prompt is not False,
                                       chat_template=template, tokenize=not body.add_special_tokens, **kwargs)
    except ValueError as exc:  # no chat template
        raise bad_request(str(exc), param="messages") from exc
    except Exception as exc:  # the template refused the conversation (e.g. roles out of order)
        raise bad_request(f"the chat template cannot render these messages: {type(exc).__name__}: {exc}",
                          param="messages") from exc
    if body.add_special_tokens:
        return state.encode(rendered, add_special_tokens=True, param="messages")
    return rendered


def _params(state: ServingState, body: ChatCompletionRequest, token_ids: list[int],
            output_kind: RequestOutputKind, plan: ToolPlan | None) -> SamplingParams:
    max_tokens = state.check_prompt(token_ids, body.requested_max_tokens, param="messages")
    entries = 0
    if body.prompt_logprobs is not None:
        entries += len(token_ids) * (body.prompt_logprobs + 1)
    if body.num_logprobs is not None:
        per_token = (body.n or 1) * (body.num_logprobs + 1)
        if body.requested_max_tokens is None:  # the room left: stop (length) where the budget ends instead
            max_tokens = max(1, min(max_tokens, (state.settings.max_response_logprobs - entries) // per_token))
        entries += per_token * max_tokens
    state.check_logprobs(entries, top_logprobs=body.top_logprobs, prompt_logprobs=body.prompt_logprobs)
    try:
        params = body.sampling_params(max_tokens, output_kind, body.num_logprobs,
                                      prompt_logprobs=body.prompt_logprobs, defaults=state.sampling_defaults)
    except ValueError as exc:
        raise bad_request(str(exc), param=getattr(exc, "param", None)) from exc
    if plan is not None:
        if plan.schema is not None:  # no other constraint: ChatCompletionRequest.tool_problem refused it
            params.structured_outputs = params.guided_decoding = StructuredOutputsParams(json=plan.schema)
        if not plan.reader.skip_special_tokens and body.skip_special_tokens is not False:
            params.skip_special_tokens = False  # the format's markers are special tokens
    return params


def _text_of(state: ServingState, body: ChatCompletionRequest):
    return token_texts(lambda token_id: state.decode([token_id]), bool(body.return_tokens_as_token_ids))


def _logprobs(state: ServingState, body: ChatCompletionRequest, token_ids: list[int],
              positions) -> ChatChoiceLogprobs | None:
    if body.num_logprobs is None:
        return None
    return ChatChoiceLogprobs(content=chat_logprobs(token_ids, positions or [], body.num_logprobs,
                                                    _text_of(state, body)))


async def create_chat_completion(state: ServingState, body: ChatCompletionRequest, request: Request) -> Response:
    model = state.admit(body)
    stream = bool(body.stream)
    plan = tool_plan(body, state.settings.enable_auto_tool_choice, state.settings.tool_call_parser)
    token_ids = await state.run_tokenizer(render_prompt, state, body)
    if body.truncate_prompt_tokens is not None:
        token_ids = token_ids[-body.truncate_prompt_tokens:]
    params = _params(state, body, token_ids, RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
                     plan)
    # The tool plan's schema (tool_choice required or named) is checked like a client's: before the engine.
    constrained_by_tools = plan is not None and plan.schema is not None
    await state.check_structured_outputs(params, "tools" if constrained_by_tools else body.structured_outputs_field())
    request_id = f"chatcmpl-{body.request_id}" if body.request_id else random_id("chatcmpl")
    engine_id = random_id("chatcmpl")
    state.reserve([engine_id], params.n)  # no await between here and the engine's inbox counting it
    created = int(time.time())
    outputs = state.generate(engine_id, token_ids, None, params)
    if stream:
        return StreamingResponse(with_error_events(_events(state, body, model, request_id, created, outputs, plan),
                                                   request_id, "chat stream"),
                                 media_type="text/event-stream", headers=SSE_HEADERS,
                                 background=BackgroundTask(state.release, [engine_id]))

    async def final() -> RequestOutput:
        last = None
        async with aclosing(outputs) as it:
            async for output in it:
                last = output
        assert last is not None
        return last

    try:
        output = await cancel_on_disconnect(request, final())
    except RequestAborted:
        raise APIError(503, "the request was stopped: the server is shutting down", code="aborted") from None
    finally:
        state.release([engine_id])
    return await state.run_tokenizer(_final_response, state, body, model, request_id, created, output, plan)


def _message(plan: ToolPlan | None, text: str) -> AssistantMessage:
    if plan is None:
        return AssistantMessage(content=text)
    content, calls = extract(plan.reader, text)
    calls = calls[:plan.max_calls] if plan.max_calls is not None else calls
    return AssistantMessage(content=content, tool_calls=[
        ToolCall(id=tool_call_id(), function=FunctionCall(name=call.name, arguments=call.arguments))
        for call in calls] or None)


def _final_response(state: ServingState, body: ChatCompletionRequest, model: str, request_id: str, created: int,
                    output: RequestOutput, plan: ToolPlan | None) -> Response:
    choices = []
    for c in output.outputs:
        message = _message(plan, c.text)
        choices.append(ChatChoice(index=c.index, message=message,
                                  logprobs=_logprobs(state, body, c.token_ids, c.logprobs),
                                  finish_reason=finish_reason(plan, bool(message.tool_calls), c.finish_reason),
                                  stop_reason=c.stop_reason))
    completion_tokens = sum(len(c.token_ids) for c in output.outputs)
    usage = UsageInfo(prompt_tokens=len(output.prompt_token_ids), completion_tokens=completion_tokens,
                      total_tokens=len(output.prompt_token_ids) + completion_tokens)
    prompt_lp = None
    if body.prompt_logprobs is not None:
        prompt_lp = prompt_logprobs(output.prompt_token_ids, output.prompt_logprobs, body.prompt_logprobs,
                                    _text_of(state, body))
    response = ChatCompletionResponse(id=request_id, created=created, model=model, choices=choices, usage=usage,
                                      prompt_logprobs=prompt_lp)
    return JSONResponse(response.model_dump())


async def _events(state: ServingState, body: ChatCompletionRequest, model: str, request_id: str, created: int,
                  outputs: AsyncIterator[RequestOutput], plan: ToolPlan | None) -> AsyncIterator[bytes]:
    n = body.n or 1
    readers = {index: ToolCallStream(plan.reader, plan.max_calls) for index in range(n)} if plan else {}
    exclude = None if body.include_usage else {"usage"}
    usage = UsageInfo()
    finished: set[int] = set()

    def response(choice: ChatStreamChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, created=created, model=model, choices=[choice])

    def chunk(choice: ChatStreamChoice) -> bytes:
        return sse_event(response(choice), exclude)

    # A choice's chunks of content alone.
    content_chunk = ChoiceTextEvents(
        lambda index, text: response(ChatStreamChoice(index=index, delta=DeltaMessage(content=text))), exclude)

    for index in range(n):
        yield chunk(ChatStreamChoice(index=index, delta=DeltaMessage(role="assistant", content="")))
    async with aclosing(outputs) as it:
        async for output in it:
            usage.prompt_tokens = len(output.prompt_token_ids)
            for out in output.outputs:
                if out.index in finished:
                    continue
                usage.completion_tokens += len(out.token_ids)
                logprobs = _logprobs(state, body, out.token_ids, out.logprobs) if out.token_ids else None
                if plan is None:
                    delta = DeltaMessage(content=out.text) if out.text or logprobs is not None else None
                else:
                    content, calls = readers[out.index].feed(out.text, final=out.finish_reason is not None)
                    delta = None
                    if content or calls or logprobs is not None:
                        delta = DeltaMessage(content=content if content or not calls else None,
                                             tool_calls=calls or None)
                if out.finish_reason is not None:  # the last delta and the finish reason in one chunk, as vLLM's
                    finished.add(out.index)
                    called = out.index in readers and readers[out.index].called
                    yield chunk(ChatStreamChoice(index=out.index, delta=delta or DeltaMessage(), logprobs=logprobs,
                                                 finish_reason=finish_reason(plan, called, out.finish_reason),
                                                 stop_reason=out.stop_reason))
                elif delta is not None:
                    yield (content_chunk(out.index, out.text) if plan is None and logprobs is None
                           else chunk(ChatStreamChoice(index=out.index, delta=delta, logprobs=logprobs)))
    if body.include_usage:
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        yield sse_event(ChatCompletionChunk(id=request_id, created=created, model=model, choices=[], usage=usage))
