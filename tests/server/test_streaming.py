"""SSE streams: OpenAI's exact framing, deltas that add up to the non-streamed text, and many
concurrent streams on a real server that each get their own, correct output."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from octavo.runtime.server.streaming import TextEvents, sse_event
from server_testing import MODEL_NAME, parse_sse


@pytest.mark.parametrize("extra", [{}, {"stop": [" a", "e"]}, {"n": 2}, {"logprobs": 2}, {"echo": True}],
                         ids=["plain", "stop-strings", "n2", "logprobs", "echo"])
async def test_completion_stream_deltas_equal_whole_text(client, extra):
    body = {"model": MODEL_NAME, "prompt": "The quick brown fox", "max_tokens": 10, "temperature": 0.9,
            "seed": 1234, **extra}
    whole = (await client.post("/v1/completions", json=body)).json()
    response = await client.post("/v1/completions", json={**body, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for event in events[:-1]:
        assert event["object"] == "text_completion" and event["model"] == MODEL_NAME
        assert "usage" not in event  # only with stream_options.include_usage
        [choice] = event["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            assert choice["index"] not in finishes
            finishes[choice["index"]] = choice["finish_reason"]
    assert len({e["id"] for e in events[:-1]}) == 1
    for choice in whole["choices"]:
        assert texts[choice["index"]] == choice["text"]
        assert finishes[choice["index"]] == choice["finish_reason"]
    if not extra:  # one chunk per token, the last with the finish reason (as vLLM's): no chunk of its own
        assert len(events) - 1 == whole["usage"]["completion_tokens"]


async def test_chat_stream_framing_and_deltas(client):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8,
            "temperature": 0.8, "seed": 77, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    events = parse_sse(response.text)
    chunks = events[:-1]
    first, usage_chunk = chunks[0], chunks[-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] >= 1
    # As vLLM's: the last token's delta and the finish reason travel in one chunk.
    finish = chunks[-2]["choices"][0]
    assert set(finish["delta"]) <= {"content"} and finish["finish_reason"] in ("stop", "length")
    if finish["finish_reason"] == "length":  # this seed's last token completes text: it rides with the reason
        assert finish["delta"]["content"]
    content_chunks = chunks[1:-1]
    for chunk in content_chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None
    for chunk in content_chunks[:-1]:
        assert set(chunk["choices"][0]["delta"]) == {"content"}
        assert chunk["choices"][0]["finish_reason"] is None
    # A token that completes no text yet sends no chat chunk (as vLLM's), unless it is the last.
    assert 1 <= len(content_chunks) <= usage_chunk["usage"]["completion_tokens"]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    whole = (await client.post("/v1/chat/completions", json={**body, "stream": False,
                                                             "stream_options": None})).json()
    assert streamed == whole["choices"][0]["message"]["content"]
    assert usage_chunk["usage"] == whole["usage"]


async def test_chat_stream_ends_with_the_stop_reason_as_vllm(client):
    """The last chunk names what stopped the choice (vLLM's stop_reason): the stop string, as the
    non-streamed response does; earlier chunks carry none."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 40,
            "temperature": 0.0, "stop": ["e"]}
    whole = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    assert whole["finish_reason"] == "stop" and whole["stop_reason"] == "e"
    chunks = parse_sse((await client.post("/v1/chat/completions", json={**body, "stream": True})).text)[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["stop_reason"] == "e"
    assert all(c["choices"][0]["stop_reason"] is None for c in chunks[:-1])


async def test_concurrent_streaming_clients_get_their_own_outputs(engine, live_server):
    """32 streams at once on a real uvicorn server; each must equal the same request's greedy output
    computed in one batch beforehand, so no stream can have received another's tokens."""
    num_clients = 32
    prompts = [f"Request number {i} asks about {word}" for i, word in
               enumerate(["kernels", "blocks", "queues", "caches"] * 8)]
    common = {"model": MODEL_NAME, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=live_server.url, timeout=httpx.Timeout(120, connect=10),
                                 limits=httpx.Limits(max_connections=num_clients + 4)) as http:
        reference = (await http.post("/v1/completions", json={**common, "prompt": prompts})).json()
        expected = {c["index"]: c["text"] for c in reference["choices"]}
        assert len(set(expected.values())) > 1, "distinct prompts should give distinct outputs"

        async def one(i: int) -> tuple[str, int]:
            text, tokens = "", 0
            async with http.stream("POST", "/v1/completions",
                                   json={**common, "prompt": prompts[i], "stream": True,
                                         "stream_options": {"include_usage": True}}) as response:
                assert response.status_code == 200
                raw = "".join([part async for part in response.aiter_text()])
            for event in parse_sse(raw)[:-1]:
                if event["choices"]:
                    text += event["choices"][0]["text"]
                else:
                    tokens = event["usage"]["completion_tokens"]
            return text, tokens

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(num_clients))), timeout=150)
    for i, (text, tokens) in enumerate(results):
        assert tokens == 8
        assert text == expected[i], f"client {i} got another output"


@pytest.mark.parametrize("text", ["hello", " wor\"ld\\", "\u00e9\u4e2d\U0001f600", "\x01\x1f\n\t", "\u2028\u2029",
                                  "</script>", "", TextEvents.PLACEHOLDER])
def test_text_events_are_byte_for_byte_the_models_serialization(text):
    from octavo.runtime.server.protocol import (ChatCompletionChunk, ChatStreamChoice, CompletionChoice,
                                                CompletionStreamResponse, DeltaMessage)

    def completion(t):
        return CompletionStreamResponse(id="cmpl-1", created=7, model="m", choices=[CompletionChoice(index=2, text=t)])

    def chat(t):
        return ChatCompletionChunk(id="chatcmpl-1", created=7, model="m",
                                   choices=[ChatStreamChoice(index=0, delta=DeltaMessage(content=t))])

    for build, exclude in ((completion, {"usage"}), (completion, None), (chat, {"usage"})):
        events = TextEvents(build, exclude)
        assert events.parts is not None
        assert events(text) == sse_event(build(text), exclude)
    # A placeholder that the template holds twice (here: also in the model name) builds each event whole.
    twice = TextEvents(lambda t: CompletionStreamResponse(id="c", created=7, model=TextEvents.PLACEHOLDER,
                                                          choices=[CompletionChoice(index=0, text=t)]))
    assert twice.parts is None
    assert twice(text) == sse_event(CompletionStreamResponse(id="c", created=7, model=TextEvents.PLACEHOLDER,
                                                             choices=[CompletionChoice(index=0, text=text)]))
