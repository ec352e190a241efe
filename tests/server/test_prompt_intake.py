"""Which completions go through the tokenizer thread: bodies with text to tokenize, echo, or many
ids do; a body of token-id prompts is checked on the event loop (two thread hand-offs fewer per
request in a burst), with the same answers and the same errors."""

from __future__ import annotations

import pytest

from octavo.runtime.server.completions import INLINE_PROMPT_IDS, needs_tokenizer_thread
from octavo.runtime.server.protocol import CompletionRequest
from server_testing import MODEL_NAME, parse_sse


def body(**fields) -> CompletionRequest:
    return CompletionRequest(model=MODEL_NAME, **fields)


@pytest.mark.parametrize("fields, threaded", [
    ({"prompt": [5, 6, 7]}, False),
    ({"prompt": [[5, 6], [7, 8, 9]]}, False),
    ({"prompt": "some text"}, True),
    ({"prompt": ["text", "more"]}, True),
    ({"prompt": [5, 6, 7], "echo": True}, True),
    ({"prompt": [1] * (INLINE_PROMPT_IDS + 1)}, True),
    ({"prompt": [[1] * (INLINE_PROMPT_IDS // 2)] * 2}, False),
    ({"prompt": [[1] * (INLINE_PROMPT_IDS // 2 + 1)] * 2}, True),
])
def test_what_goes_through_the_tokenizer_thread(fields, threaded):
    assert needs_tokenizer_thread(body(**fields)) is threaded


async def test_token_id_prompts_skip_the_tokenizer_thread_with_the_same_answers(client, app, monkeypatch):
    state = app.state.serving
    calls = []
    original = state.run_tokenizer

    async def counting(fn, *args):
        calls.append(fn.__name__)
        return await original(fn, *args)

    monkeypatch.setattr(state, "run_tokenizer", counting)
    request = {"model": MODEL_NAME, "max_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    by_ids = await client.post("/v1/completions", json={**request, "prompt": [11, 12, 13, 14]})
    assert by_ids.status_code == 200, by_ids.text
    assert "_prompts" not in calls
    streamed = await client.post("/v1/completions", json={**request, "prompt": [11, 12, 13, 14], "stream": True})
    assert streamed.status_code == 200 and "_prompts" not in calls
    chunks = [event for event in parse_sse(streamed.text) if isinstance(event, dict)]
    text = by_ids.json()["choices"][0]["text"]
    assert text and "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == text
    by_text = await client.post("/v1/completions", json={**request, "prompt": "Machine learning is"})
    assert by_text.status_code == 200 and "_prompts" in calls
    # The same checks and errors as on the tokenizer thread.
    bad = await client.post("/v1/completions", json={**request, "prompt": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    empty = await client.post("/v1/completions", json={**request, "prompt": [[]]})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
