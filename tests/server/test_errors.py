"""Every error is OpenAI-shaped JSON with the right status: 400 for bad fields, 401 for the API
key, 404 for unknown routes, 429 when the queue is full, 503 while starting or draining, and a
500 that leaks nothing when a bug raises."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from server_testing import MAX_MODEL_LEN, MODEL_NAME, async_wait_until


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


BAD_COMPLETIONS = [
    ({"prompt": "hi", "max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ({"prompt": "hi " * (MAX_MODEL_LEN + 10)}, "prompt"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "n": 129}, "n"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, 2, 10**6]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "logprobs": False}, "logprobs"),
    ({"prompt": "hi", "logprobs": True}, "logprobs"),
    ({"prompt": "hi", "stop": ""}, None),
    ({"prompt": "hi", "min_tokens": 100, "max_tokens": 5}, None),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "hi", "logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"prompt": "hi", "suffix": "end"}, "suffix"),
    ({"prompt": "hi", "best_of": 3}, "best_of"),
    ({"prompt": "hi", "seed": 2**64}, "seed"),
    ({"prompt": "hi", "top_k": 2**40}, "top_k"),
    ({}, "prompt"),
]


@pytest.mark.parametrize("body,param", BAD_COMPLETIONS, ids=[str(i) for i in range(len(BAD_COMPLETIONS))])
async def test_completion_bad_fields_are_400(client, body, param):
    for stream in (False,) if "stream_options" in body else (False, True):  # errors come before any stream
        payload = {"model": MODEL_NAME, **body, "stream": stream}
        assert_error(await client.post("/v1/completions", json=payload), 400, param)


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 1000}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema"}},
     "response_format"),
]


@pytest.mark.parametrize("body,param", BAD_CHATS, ids=[str(i) for i in range(len(BAD_CHATS))])
async def test_chat_bad_fields_are_400(client, body, param):
    payload = {"model": MODEL_NAME, **body}
    assert_error(await client.post("/v1/chat/completions", json=payload), 400, param)
    assert_error(await client.post("/v1/chat/completions", json={**payload, "stream": True}), 400, param)


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [5]})])
async def test_unknown_model_is_404_model_not_found(client, path, body):
    """OpenAI and vLLM answer an unknown model with 404 model_not_found (not 400)."""
    for stream in (False, True) if path.startswith("/v1") else (False,):
        payload = {**body, "model": "no-such-model", **({"stream": True} if stream else {})}
        error = assert_error(await client.post(path, json=payload), 404, "model", code="model_not_found")
        assert error["type"] == "not_found_error" and MODEL_NAME in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"text"', b"", b"\xff\xfe", b'{"prompt": "a", "n": NaN}'])
async def test_malformed_bodies_are_400(client, raw):
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert_error(await client.post(path, content=raw, headers={"content-type": "application/json"}), 400)


async def test_unencodable_text_is_400(client):
    """JSON may carry lone surrogates (\\ud800), which no tokenizer can encode."""
    raw = {"/v1/completions": b'{"prompt": "a\\ud800b"}',
           "/v1/chat/completions": b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'}
    for path, body in raw.items():
        assert_error(await client.post(path, content=body, headers={"content-type": "application/json"}), 400)


async def test_unknown_route_is_404_and_wrong_method_405(client):
    assert_error(await client.get("/v1/nothing-here"), 404)
    assert_error(await client.post("/nowhere", json={}), 404)
    assert_error(await client.get("/v1/completions"), 405)
    assert_error(await client.get("/v1/models/not-served"), 404, code="model_not_found")


@pytest.mark.parametrize("settings_key", ["secret-key"])
async def test_api_key(engine, settings, settings_key):
    from octavo.runtime.server.app import build_app

    settings.api_keys = [settings_key, "rotated-key"]  # vLLM's several --api-key values: any one works
    app = build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as http:
        body = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
        missing = await http.post("/v1/completions", json=body)
        assert_error(missing, 401, code="invalid_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(await http.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(await http.post("/v1/completions", json=body, headers={"Authorization": settings_key}), 401)
        assert_error(await http.get("/v1/models", headers={"Authorization": "Bearer secret-keyX"}), 401)
        assert_error(await http.get("/v1/anything"), 401)  # nothing under /v1 is visible without the key
        assert_error(await http.post("/tokenize", json={"prompt": "hi"}), 401)  # the tokenizer routes too
        assert_error(await http.get("/tokenizer_info"), 401)
        for key in (settings_key, "rotated-key"):
            good = {"Authorization": f"Bearer {key}"}
            assert (await http.post("/v1/completions", json=body, headers=good)).status_code == 200
            assert (await http.get("/v1/models", headers=good)).status_code == 200
            assert (await http.post("/tokenize", json={"prompt": "hi"}, headers=good)).status_code == 200
        # Probes and scrapes need no key.
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/version")).status_code == 200


async def test_api_key_with_openai_client(engine, settings):
    import openai

    from octavo.runtime.server.app import build_app

    settings.api_keys = ["k-123"]
    app = build_app(engine, settings)
    for key, ok in (("k-123", True), ("nope", False)):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60)
        async with openai.AsyncOpenAI(base_url="http://t/v1", api_key=key, http_client=http, max_retries=0) as c:
            if ok:
                assert (await c.models.list()).data[0].id == MODEL_NAME
            else:
                with pytest.raises(openai.AuthenticationError):
                    await c.models.list()


async def test_starting_and_failed_phases_are_503(engine, settings):
    from octavo.runtime.server.app import build_app

    app = build_app(None, settings)
    state = app.state.serving
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as http:
        body = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
        response = await http.post("/v1/completions", json=body)
        assert_error(response, 503, code="starting")
        assert response.headers["retry-after"]
        assert_error(await http.get("/health"), 503, code="starting")
        assert (await http.get("/live")).status_code == 200  # loading is alive: no restart
        assert_error(await http.get("/v1/models"), 503)
        assert (await http.get("/metrics")).status_code == 200  # scrapes work while loading
        state.attach_engine(engine)
        assert (await http.get("/health")).status_code == 200
        assert (await http.post("/v1/completions", json=body)).status_code == 200

    failed = build_app(None, settings)
    failed.state.serving.fail("no such model")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=failed), base_url="http://t") as http:
        assert_error(await http.get("/health"), 503, code="load_failed")
        assert_error(await http.get("/live"), 503, code="load_failed")


async def test_draining_refuses_new_requests_with_503(app, client):
    app.state.serving.start_drain()
    response = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi"})
    assert_error(response, 503, code="draining")
    assert response.headers["connection"] == "close"
    assert_error(await client.get("/health"), 503, code="draining")
    assert (await client.get("/live")).status_code == 200  # draining is alive: no restart mid-drain


async def test_request_ids(client):
    mine = await client.get("/v1/models", headers={"X-Request-Id": "trace-42.a"})
    assert mine.headers["x-request-id"] == "trace-42.a"
    odd = await client.get("/v1/models", headers={"X-Request-Id": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces" and len(odd.headers["x-request-id"]) == 16


async def test_queue_full_is_429(engine, settings, engine_gate):
    """With one sequence running and one waiting, a queue limit of 1 refuses the next request."""
    from octavo.runtime.server.app import build_app

    settings.max_queue_len = 1
    app = build_app(engine, settings)
    core = engine.engine
    old_max_seqs = core.scheduler.config.max_num_seqs
    core.scheduler.config.max_num_seqs = 1  # one running sequence; the rest must wait
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as http:
            long = {"model": MODEL_NAME, "prompt": "long one", "max_tokens": 200, "ignore_eos": True}
            running = asyncio.create_task(http.post("/v1/completions", json=long))
            await async_wait_until(lambda: engine.stats.num_running == 1, timeout=30, message="one running")
            waiting = asyncio.create_task(http.post("/v1/completions", json={**long, "max_tokens": 2}))
            await async_wait_until(lambda: engine.stats.num_waiting == 1, timeout=30, message="one waiting")
            engine_gate.clear()  # hold the engine (and its gauges) in this state
            refused = await http.post("/v1/completions", json={**long, "max_tokens": 2})
            assert_error(refused, 429, code="queue_full")
            assert refused.headers["retry-after"]
            metrics = (await http.get("/metrics")).text
            assert 'octavo:request_rejected_total{model_name="tiny-llama",reason="queue_full"} 1.0' in metrics
            assert await app.state.serving.abort_all() == 2
            first, second = await asyncio.gather(running, waiting)
            engine_gate.set()
            assert_error(first, 503, code="aborted")  # aborted by the server, not finished
            assert_error(second, 503, code="aborted")
    finally:
        core.scheduler.config.max_num_seqs = old_max_seqs


async def test_internal_bug_is_500_without_leaking(app, client, monkeypatch, caplog):
    from octavo.runtime.server import completions

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(completions, "_response", broken)
    with caplog.at_level(logging.ERROR, logger="octavo.server"):
        response = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2})
    error = assert_error(response, 500)
    assert "secret" not in response.text
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)


async def test_internal_bug_in_stream_ends_stream_with_error_event(app, client, monkeypatch):
    from octavo.runtime.server import completions

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(completions, "append_completion_logprobs", broken)
    response = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2,
                                                          "logprobs": 1, "stream": True})
    assert response.status_code == 200
    assert "secret" not in response.text
    assert response.text.endswith('"code":null}}\n\ndata: [DONE]\n\n')


async def test_a_negative_token_id_is_named_as_such(client):
    """The union field's error comes from the branch the prompt's shape matched (token ids), not
    from the first branch (a string)."""
    for prompt, where in (([-1], "prompt.0"), ([[1, -1]], "prompt.0.1")):
        response = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt})
        error = assert_error(response, 400, param="prompt")
        assert error["message"] == f"{where}: Input should be greater than or equal to 0", error
