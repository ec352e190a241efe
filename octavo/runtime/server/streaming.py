"""Server-sent events in OpenAI's framing, merging several prompts' streams, and tying a request's
work to its client: when the client goes away, the work is cancelled, which aborts the engine
request and frees its KV blocks.

Framing: every event is `data: <json>\\n\\n`; the stream ends with `data: [DONE]\\n\\n`. An error
after the response has started (status 200 already sent) travels as one `data: {"error": ...}`
event before [DONE], as OpenAI's streams do.
"""

from __future__ import annotations

import asyncio
import logging
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json
from starlette.requests import Request

T = TypeVar("T")
logger = logging.getLogger("octavo.server")

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def with_error_events(events: AsyncIterator[bytes], request_id: str, what: str) -> AsyncIterator[bytes]:
    """Forward a stream's events; an abort or error after the response started becomes one in-stream
    error event (nothing internal leaks); the stream always ends with [DONE]."""
    from octavo.runtime.server.errors import APIError
    from octavo.runtime.server.state import RequestAborted

    try:
        async with aclosing(events) as inner:
            async for event in inner:
                yield event
    except RequestAborted:
        yield sse_event(APIError(503, "the request was stopped: the server is shutting down",
                                 code="aborted").payload())
    except APIError as exc:
        yield sse_event(exc.payload())
    except Exception:
        logger.exception("%s %s failed", what, request_id)
        yield sse_event(APIError(500, f"internal error (request {request_id})").payload())
    yield SSE_DONE


def sse_event(payload: BaseModel | dict[str, Any], exclude: set[str] | None = None) -> bytes:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude=exclude)
    else:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + body.encode() + b"\n\n"


class TextEvents:
    """SSE events that differ only in one text field (a stream's chunk per token): the response
    model serialized once with a placeholder text, then each text's JSON put in its place. Byte
    for byte what sse_event(build(text)) gives (the text goes through pydantic's own JSON
    encoder); per token it skips building the models and running their Python serializers."""

    PLACEHOLDER = "\x00octavo:text\x00"

    def __init__(self, build: Callable[[str], BaseModel], exclude: set[str] | None = None) -> None:
        self.build, self.exclude = build, exclude
        parts = sse_event(build(self.PLACEHOLDER), exclude).split(to_json(self.PLACEHOLDER))
        self.parts = parts if len(parts) == 2 else None  # a placeholder twice: build each event whole

    def __call__(self, text: str) -> bytes:
        if self.parts is None:
            return sse_event(self.build(text), self.exclude)
        return self.parts[0] + to_json(text) + self.parts[1]


class ChoiceTextEvents:
    """A TextEvents per choice of a stream, made at its first chunk: build(index, text) gives the
    response that carries that choice's text."""

    def __init__(self, build: Callable[[int, str], BaseModel], exclude: set[str] | None = None) -> None:
        self.build, self.exclude = build, exclude
        self.by_index: dict[int, TextEvents] = {}

    def __call__(self, index: int, text: str) -> bytes:
        events = self.by_index.get(index)
        if events is None:
            events = self.by_index[index] = TextEvents(lambda t: self.build(index, t), self.exclude)
        return events(text)


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they come, tagged with the iterator's index. An error in
    one ends the merge with that error; closing the merge closes every iterator."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async with aclosing(stream) as it:
                async for item in it:
                    await queue.put((index, item))
            await queue.put((index, done))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (the request body must
    already have been read, as FastAPI does before calling the handler)."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work_task.done():
            work_task.cancel()
            with suppress(asyncio.CancelledError):
                await work_task
            if watcher.done():
                raise ClientDisconnected()
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher
    return work_task.result()
