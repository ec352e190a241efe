"""Availability under abuse (#24): huge bodies and prompts are refused before any parsing or
tokenizing and never stall the probes; admission counts sequences and cannot be raced past
--max-queue-len."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from server_testing import MAX_MODEL_LEN, MODEL_NAME, LiveServer

from test_errors import assert_error


def _probe_live(url: str, stop: threading.Event, latencies: list[float], statuses: list[int | str]) -> None:
    """GET /live every 200 ms until `stop`, recording each answer's latency (1 s timeout)."""
    with httpx.Client(timeout=1.0) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                statuses.append(http.get(f"{url}/live").status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
            latencies.append(time.monotonic() - started)
            stop.wait(0.2)


def _post_big(url: str, body: bytes, results: list, headers: dict[str, str] | None = None) -> None:
    with httpx.Client(timeout=60) as http:
        try:
            response = http.post(f"{url}/v1/completions", content=body,
                                 headers={"content-type": "application/json", **(headers or {})})
            results.append((response.status_code, response.json()["error"]["code"]))
        except httpx.HTTPError as exc:  # the server may close the socket while a refused body is sent
            results.append((type(exc).__name__, None))


def test_huge_prompts_are_refused_and_never_stall_probes(app):
    """Four 10 MB prompts in parallel while /live is probed every 200 ms: every probe answers 200
    within 1 s; the big requests get 413 (or, under the body limit, 400), none reaches the engine."""
    server = LiveServer(app).start()
    try:
        big = b'{"model": "%s", "prompt": "%s", "max_tokens": 1}' % (MODEL_NAME.encode(), b"a" * 10_000_000)
        under_limit = (b'{"model": "%s", "prompt": "%s", "max_tokens": 1}'
                       % (MODEL_NAME.encode(), b"a " * 1_500_000))  # 3 MB: under the 4 MiB body limit
        stop, latencies, statuses, results = threading.Event(), [], [], []
        prober = threading.Thread(target=_probe_live, args=(server.url, stop, latencies, statuses))
        prober.start()
        senders = [threading.Thread(target=_post_big, args=(server.url, big, results)) for _ in range(4)]
        senders += [threading.Thread(target=_post_big, args=(server.url, under_limit, results)) for _ in range(2)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        stop.wait(1.0)  # probes after the burst too
        stop.set()
        prober.join(10)
        assert not any(sender.is_alive() for sender in senders)
        assert len(latencies) >= 5, latencies
        assert all(status == 200 for status in statuses), statuses
        assert max(latencies) < 1.0, latencies
        big_results, small_results = results[:0], []
        for status, code in results:
            (small_results if code == "context_length_exceeded" else big_results).append((status, code))
        assert sorted(small_results) == [(400, "context_length_exceeded")] * 2, results
        # 413 unless the server closed the socket on a refused body before the client read the answer
        assert len(big_results) == 4 and all(s == 413 and c == "request_too_large" or c is None
                                             for s, c in big_results), results
        assert any(s == 413 for s, _ in big_results), results
        assert app.state.serving.engine.stats.num_waiting == 0
    finally:
        server.stop()


async def test_chunked_body_over_the_limit_is_413(engine, settings):
    from octavo.runtime.server.app import build_app

    settings.max_request_body_bytes = 1000
    app = build_app(engine, settings)

    async def chunks():
        for _ in range(5):
            yield b" " * 400  # no Content-Length: the limit is enforced while reading

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as http:
        response = await http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert_error(response, 413, code="request_too_large")
        declared = await http.post("/v1/chat/completions", content=b"x" * 1001,
                                   headers={"content-type": "application/json"})
        assert_error(declared, 413, code="request_too_large")
        small = await http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 1})
        assert small.status_code == 200, small.text


async def test_long_text_is_refused_before_tokenizing(client, app, monkeypatch):
    """A text longer than any prompt that fits the context never reaches the tokenizer."""
    state = app.state.serving
    assert state.max_prompt_chars is not None and state.max_prompt_chars >= MAX_MODEL_LEN
    calls = []
    encode = state.tokenizer.encode
    monkeypatch.setattr(state.tokenizer, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    text = "a" * (state.max_prompt_chars + 1)
    for path, body in (("/v1/completions", {"prompt": text}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}),
                       ("/tokenize", {"prompt": text})):
        response = await client.post(path, json={"model": MODEL_NAME, **body})
        assert_error(response, 400, code="context_length_exceeded")
    assert calls == []


async def test_too_many_prompts_is_400(client, app):
    limit = app.state.serving.settings.max_prompts_per_request
    response = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": ["hi"] * (limit + 1),
                                                           "max_tokens": 1})
    assert_error(response, 400, param="prompt")
    assert "--max-prompts-per-request" in response.json()["error"]["message"]


async def test_burst_never_has_more_sequences_waiting_than_the_limit(engine, settings, monkeypatch):
    """--max-queue-len 4, --max-num-seqs 4: 60 concurrent requests, some with n=4 or 8 or lists of
    prompts. The engine never holds more than 4 waiting sequences (checked after every step on
    the engine thread, and on /metrics during the burst); the excess gets 429 with Retry-After."""
    from octavo.runtime.server.app import build_app

    settings.max_queue_len = 4
    app = build_app(engine, settings)
    monkeypatch.setattr(engine.engine.scheduler.config, "max_num_seqs", 4)
    waiting_after_step: list[int] = []
    step = engine.engine.step

    def counted_step():
        outputs = step()
        waiting_after_step.append(engine.engine.scheduler.num_waiting)
        return outputs

    monkeypatch.setattr(engine.engine, "step", counted_step)
    base = {"model": MODEL_NAME, "max_tokens": 6, "ignore_eos": True}
    bodies = []
    for i in range(60):
        if i % 10 == 9:  # 8 sequences can never wait within a limit of 4: a 400, not a 429 to retry
            bodies.append({**base, "prompt": f"burst {i}", "n": 8})
        elif i % 3 == 0:
            bodies.append({**base, "prompt": f"burst {i}", "n": 4})
        elif i % 3 == 1:
            bodies.append({**base, "prompt": [f"burst {i}", f"burst {i} b"], "n": 2})
        else:
            bodies.append({**base, "prompt": f"burst {i}"})
    metrics_waiting: list[float] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as http:
        done = asyncio.Event()

        async def watch_metrics():
            while not done.is_set():
                text = (await http.get("/metrics")).text
                for line in text.splitlines():
                    if line.startswith("octavo:num_sequences_waiting{"):
                        metrics_waiting.append(float(line.rsplit(" ", 1)[1]))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_metrics())
        responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for body in bodies))
        done.set()
        await watcher
        too_big = await http.post("/v1/completions", json={**base, "prompt": ["a", "b", "c"], "n": 2})
    assert_error(too_big, 400, code="too_many_sequences")
    statuses = [r.status_code for r in responses]
    for body, response in zip(bodies, responses):
        if body.get("n") == 8:
            assert_error(response, 400, code="too_many_sequences")
    statuses = [status for body, status in zip(bodies, statuses) if body.get("n") != 8]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    for response in responses:
        if response.status_code == 429:
            assert_error(response, 429, code="queue_full")
            assert response.headers["retry-after"]
    for body, response in zip(bodies, responses):
        if response.status_code == 200:
            num_prompts = len(body["prompt"]) if isinstance(body["prompt"], list) else 1
            assert len(response.json()["choices"]) == num_prompts * body.get("n", 1)
    assert waiting_after_step and max(waiting_after_step) <= 4, waiting_after_step
    assert metrics_waiting and max(metrics_waiting) <= 4, metrics_waiting
    assert app.state.serving._reserved == {}


@pytest.mark.parametrize("stream", [False, True])
async def test_reservations_are_released(client, app, stream):
    """A request that ends (or fails in the engine) leaves no reservation behind."""
    state = app.state.serving
    response = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": ["a", "b"], "n": 2,
                                                           "max_tokens": 2, "stream": stream})
    assert response.status_code == 200
    assert state._reserved == {}
    assert state.sequences_waiting() == 0


async def test_tokenizing_and_templating_run_off_the_event_loop(client, app, monkeypatch):
    state = app.state.serving
    threads: list[str] = []
    for name in ("encode", "decode", "apply_chat_template"):
        original = getattr(state.tokenizer, name)

        def recording(*args, _original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(state.tokenizer, name, recording)
    completion = await client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2,
                                                             "echo": True, "logprobs": 1})
    chat = await client.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 2, "logprobs": True,
                                                            "messages": [{"role": "user", "content": "hi"}]})
    tokenized = await client.post("/tokenize", json={"model": MODEL_NAME, "prompt": "hi"})
    assert [r.status_code for r in (completion, chat, tokenized)] == [200] * 3
    assert threads and all(name.startswith("octavo-tokenizer") for name in threads), threads


async def test_logprobs_are_bounded(engine, settings):
    """--max-logprobs per position, --max-response-logprobs per response (echo x logprobs x n);
    a chat without max_tokens stops where the budget ends instead."""
    from octavo.runtime.server.app import build_app

    settings.max_logprobs, settings.max_response_logprobs = 5, 400
    app = build_app(engine, settings)
    base = {"model": MODEL_NAME, "prompt": "abuse me", "max_tokens": 4}
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as http:
        assert_error(await http.post("/v1/completions", json={**base, "logprobs": 6}), 400, param="logprobs")
        assert_error(await http.post("/v1/completions", json={**base, "prompt_logprobs": 6}), 400,
                     param="prompt_logprobs")
        assert_error(await http.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 6}),
                     400, param="top_logprobs")
        big = await http.post("/v1/completions", json={**base, "echo": True, "logprobs": 5, "n": 8})
        assert_error(big, 400, code="too_many_logprobs")
        fine = await http.post("/v1/completions", json={**base, "echo": True, "logprobs": 5})
        assert fine.status_code == 200, fine.text
        capped = await http.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 4,
                                                                "n": 2, "ignore_eos": True})
        assert capped.status_code == 200, capped.text
        assert capped.json()["usage"]["completion_tokens"] == 2 * (400 // (2 * 5))
        assert_error(await http.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 4,
                                                                    "n": 2, "max_tokens": 41}),
                     400, code="too_many_logprobs")
