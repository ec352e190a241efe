"""vLLM's API edges that real clients (lm-eval, langchain, litellm, the openai SDK) rely on: the
tokenizer routes, add_special_tokens, prompt_logprobs, scoring a prompt with max_tokens 0 and
echo, vLLM's default for a null max_tokens, text_offset that indexes the returned text, the
response id from request_id, token ids as log-probability names, prompt truncation, chat
template fields, sampling defaults from generation_config.json, CORS."""

from __future__ import annotations

import json

import httpx
import pytest

from server_testing import MAX_MODEL_LEN, MODEL_NAME, parse_sse

CHAT = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def tokenizer(engine):
    return engine.get_tokenizer()


async def test_tokenize_and_detokenize_round_trip(client, tokenizer):
    text = "Paged attention stores keys"
    with_bos = (await client.post("/tokenize", json={"model": MODEL_NAME, "prompt": text,
                                                     "return_token_strs": True})).json()
    assert with_bos["tokens"] == tokenizer.encode(text) and with_bos["tokens"][0] == tokenizer.bos_token_id
    assert with_bos["count"] == len(with_bos["tokens"]) and with_bos["max_model_len"] == MAX_MODEL_LEN
    assert with_bos["token_strs"] == tokenizer.convert_ids_to_tokens(with_bos["tokens"])
    bare = (await client.post("/tokenize", json={"prompt": text, "add_special_tokens": False})).json()
    assert bare["tokens"] == with_bos["tokens"][1:] and bare["token_strs"] is None
    back = (await client.post("/detokenize", json={"model": MODEL_NAME, "tokens": bare["tokens"]})).json()
    assert back == {"prompt": text}
    bad = await client.post("/detokenize", json={"tokens": [len(tokenizer) + 5]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


async def test_tokenize_messages_is_the_prompt_chat_builds(client, openai_client, tokenizer):
    tokens = (await client.post("/tokenize", json={"messages": CHAT})).json()["tokens"]
    chat = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=1)
    assert chat.usage.prompt_tokens == len(tokens)
    assert tokenizer.decode(tokens) == "<|user|>Say hi<|end|><|assistant|>"
    continued = (await client.post("/tokenize", json={
        "messages": CHAT + [{"role": "assistant", "content": "Hel"}], "add_generation_prompt": False,
        "continue_final_message": True})).json()["tokens"]
    assert tokenizer.decode(continued).endswith("<|assistant|>Hel")  # no end marker: the model goes on
    both = await client.post("/tokenize", json={"messages": CHAT, "continue_final_message": True})
    assert both.status_code == 400 and both.json()["error"]["param"] == "continue_final_message"


async def test_tokenizer_info_is_what_lm_eval_probes(client, tokenizer):
    info = (await client.get("/tokenizer_info")).json()
    assert info["eos_token"] == tokenizer.eos_token and info["bos_token"] == tokenizer.bos_token
    assert info["chat_template"] == tokenizer.chat_template
    assert info["tokenizer_class"] and info["model_max_length"] == MAX_MODEL_LEN
    assert not {"vocab_file", "name_or_path", "added_tokens_decoder"} & set(info)  # no server paths


async def test_add_special_tokens_false_sends_no_bos(client, tokenizer):
    text = "Continuous batching"
    body = {"model": MODEL_NAME, "prompt": text, "max_tokens": 1, "echo": True, "logprobs": 0}
    with_bos = (await client.post("/v1/completions", json=body)).json()
    bare = (await client.post("/v1/completions", json={**body, "add_special_tokens": False})).json()
    assert with_bos["usage"]["prompt_tokens"] == len(tokenizer.encode(text))
    assert bare["usage"]["prompt_tokens"] == with_bos["usage"]["prompt_tokens"] - 1
    assert with_bos["choices"][0]["logprobs"]["tokens"][0] == tokenizer.bos_token
    assert bare["choices"][0]["logprobs"]["tokens"][0] != tokenizer.bos_token
    # Chat leaves special tokens to the template (vLLM's default); add_special_tokens adds a BOS.
    plain = (await client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1})).json()
    bos = (await client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1,
                                                           "add_special_tokens": True})).json()
    assert bos["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + 1


def assert_offsets_index_text(choice: dict) -> None:
    """text_offset[i] is where tokens[i] sits in the returned text (tokens the text leaves out, a
    BOS, take no room), so the text between two offsets is the token's text."""
    lp, text = choice["logprobs"], choice["text"]
    offsets = lp["text_offset"] + [len(text)]
    assert offsets == sorted(offsets) and offsets[-1] == len(text)
    for i, token in enumerate(lp["tokens"]):
        piece = text[offsets[i]:offsets[i + 1]]
        assert piece in (token, ""), (i, token, piece)


@pytest.mark.parametrize("stream", [False, True])
async def test_text_offset_indexes_the_returned_text(client, tokenizer, stream):
    text = "The quick brown fox"
    for prompt in (text, tokenizer.encode(text)):
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 5, "echo": True, "logprobs": 1,
                "temperature": 0.0, "stream": stream}
        response = await client.post("/v1/completions", json=body)
        if stream:
            choice = {"text": "", "logprobs": {"text_offset": [], "tokens": []}}
            for event in parse_sse(response.text)[:-1]:
                for part in event["choices"]:
                    choice["text"] += part["text"]
                    for key in ("text_offset", "tokens"):
                        choice["logprobs"][key] += (part["logprobs"] or {}).get(key, [])
        else:
            choice = response.json()["choices"][0]
        assert_offsets_index_text(choice)
        if isinstance(prompt, str):  # the BOS is not in the echoed text, and takes no room there
            assert choice["text"].startswith(text) and choice["logprobs"]["text_offset"][:2] == [0, 0]


async def test_prompt_logprobs_are_returned_not_dropped(client, tokenizer):
    text = "Machine learning is"
    ids = tokenizer.encode(text)
    body = {"model": MODEL_NAME, "prompt": text, "max_tokens": 2, "prompt_logprobs": 2}
    choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    positions = choice["prompt_logprobs"]
    assert len(positions) == len(ids) and positions[0] is None
    for token_id, position in zip(ids[1:], positions[1:]):
        assert str(token_id) in position and 2 <= len(position) <= 3  # the top 2 and the prompt's token
        assert set(position[str(token_id)]) == {"logprob", "rank", "decoded_token"}
    # The same numbers echo + logprobs gives.
    echoed = (await client.post("/v1/completions", json={**body, "echo": True, "logprobs": 0,
                                                          "prompt_logprobs": None})).json()["choices"][0]
    assert echoed["logprobs"]["token_logprobs"][1:len(ids)] == pytest.approx(
        [position[str(t)]["logprob"] for t, position in zip(ids[1:], positions[1:])])
    chat = (await client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1,
                                                            "prompt_logprobs": 0})).json()
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]
    assert "prompt_logprobs" not in (await client.post("/v1/chat/completions", json={
        "messages": CHAT, "max_tokens": 1})).json()  # only when asked
    streamed = await client.post("/v1/completions", json={**body, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"


async def test_max_tokens_0_with_echo_scores_the_prompt(client, openai_client, tokenizer):
    text = "Speculative decoding"
    scored = await openai_client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=0, echo=True,
                                                    logprobs=1)
    choice = scored.choices[0]
    assert choice.text == text and choice.finish_reason == "length"
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == len(tokenizer.encode(text))
    assert len(choice.logprobs.tokens) == len(tokenizer.encode(text))
    assert choice.logprobs.token_logprobs[0] is None and all(v <= 0 for v in choice.logprobs.token_logprobs[1:])
    events = parse_sse((await client.post("/v1/completions", json={
        "model": MODEL_NAME, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1, "stream": True})).text)
    assert "".join(c["text"] for e in events[:-1] for c in e["choices"]) == text


async def test_max_tokens_0_without_echo_is_a_400(client):
    response = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"


async def test_null_max_tokens_is_vllms_default_of_16(client):
    body = {"model": MODEL_NAME, "prompt": "Kubernetes operators", "max_tokens": None, "ignore_eos": True}
    assert (await client.post("/v1/completions", json=body)).json()["usage"]["completion_tokens"] == 16
    # Chat keeps OpenAI's meaning: no limit but the context.
    chat = (await client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": None,
                                                            "ignore_eos": True})).json()
    assert chat["usage"]["completion_tokens"] + chat["usage"]["prompt_tokens"] == MAX_MODEL_LEN


async def test_request_id_token_ids_and_truncation(client, tokenizer):
    text = "Paged attention stores keys and values"
    ids = tokenizer.encode(text)
    body = {"model": MODEL_NAME, "prompt": text, "max_tokens": 2, "echo": True, "logprobs": 1,
            "request_id": "trace-42", "return_tokens_as_token_ids": True, "truncate_prompt_tokens": 4}
    result = (await client.post("/v1/completions", json=body)).json()
    assert result["id"] == "cmpl-trace-42"
    assert result["usage"]["prompt_tokens"] == 4  # the prompt's last 4 tokens
    tokens = result["choices"][0]["logprobs"]["tokens"]
    assert tokens[:4] == [f"token_id:{t}" for t in ids[-4:]]
    assert result["choices"][0]["text"].startswith(tokenizer.decode(ids[-4:]))
    assert all(key.startswith("token_id:") for top in result["choices"][0]["logprobs"]["top_logprobs"][1:]
               for key in top)
    chat = (await client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2, "logprobs": True,
                                                            "request_id": "c-1", "return_tokens_as_token_ids": True})
            ).json()
    assert chat["id"] == "chatcmpl-c-1"
    assert all(entry["token"].startswith("token_id:") for entry in chat["choices"][0]["logprobs"]["content"])


async def test_chat_template_fields(client, engine, settings):
    from octavo.runtime.server.app import build_app

    template = "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}{{ suffix | default('') }}]{% endfor %}"
    body = {"messages": CHAT, "chat_template": template, "chat_template_kwargs": {"suffix": "!"}}
    tokens = (await client.post("/tokenize", json=body)).json()["tokens"]
    assert engine.get_tokenizer().decode(tokens) == "[user:Say hi!]"
    response = await client.post("/v1/chat/completions", json={**body, "max_tokens": 1})
    assert response.json()["usage"]["prompt_tokens"] == len(tokens)
    # --chat-template replaces the tokenizer's for every request that brings none.
    settings.chat_template = template
    app = build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c:
        served = (await c.post("/tokenize", json={"messages": CHAT})).json()["tokens"]
        info = (await c.get("/tokenizer_info")).json()
    assert engine.get_tokenizer().decode(served) == "[user:Say hi]" and info["chat_template"] == template


def test_sampling_defaults_follow_generation_config(tmp_path):
    from octavo.runtime.sampling_params import RequestOutputKind
    from octavo.runtime.server.defaults import check_generation_config, sampling_defaults
    from octavo.runtime.server.protocol import CompletionRequest

    model = tmp_path / "model"
    model.mkdir()
    (model / "generation_config.json").write_text(json.dumps({
        "temperature": 0.6, "top_p": 0.9, "top_k": 20, "do_sample": True, "max_new_tokens": 100}))
    assert sampling_defaults("auto", str(model)) == {"temperature": 0.6, "top_p": 0.9, "top_k": 20}
    assert sampling_defaults("vllm", str(model)) == {}
    assert sampling_defaults(str(model), None, {"temperature": 0.1}) == {"temperature": 0.1, "top_p": 0.9, "top_k": 20}
    assert check_generation_config(str(model)) is None and check_generation_config("auto") is None
    assert "no generation_config.json" in check_generation_config(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not sampling defaults"):
        sampling_defaults("vllm", None, {"max_new_tokens": 5})
    defaults = sampling_defaults("auto", str(model))
    left_out = CompletionRequest(prompt="x").sampling_params(4, RequestOutputKind.FINAL_ONLY, None, defaults=defaults)
    assert (left_out.temperature, left_out.top_p, left_out.top_k) == (0.6, 0.9, 20)
    given = CompletionRequest(prompt="x", temperature=0.0, top_k=-1).sampling_params(
        4, RequestOutputKind.FINAL_ONLY, None, defaults=defaults)
    assert (given.temperature, given.top_p, given.top_k) == (0.0, 0.9, 0)


async def test_generation_config_reaches_requests(engine, settings, monkeypatch):
    """--generation-config auto reads the served model's file; what a request leaves out, it fills."""
    from pathlib import Path

    from octavo.runtime.server.app import build_app
    from octavo.runtime.server.state import ServingState

    real_generate, seen = ServingState.generate, []

    def spy(self, request_id, token_ids, text, params):
        seen.append(params)
        return real_generate(self, request_id, token_ids, text, params)

    monkeypatch.setattr(ServingState, "generate", spy)
    path = Path(engine.engine.config.model_config.model) / "generation_config.json"
    saved = path.read_text()  # save_pretrained's: token ids only, no sampling defaults
    path.write_text(json.dumps({**json.loads(saved), "temperature": 0.0, "top_k": 7}))
    try:  # apps read it when built: only these see it
        app = build_app(engine, settings)
        settings_vllm = type(settings)(served_model_names=settings.served_model_names, generation_config="vllm")
        plain = build_app(engine, settings_vllm)
    finally:
        path.write_text(saved)
    for built in (app, plain):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=built), base_url="http://g", timeout=60) as c:
            assert (await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})).status_code == 200
            assert (await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "temperature": 1.0}
                                 )).status_code == 200
    assert (seen[0].temperature, seen[0].top_k) == (0.0, 7)
    assert (seen[1].temperature, seen[1].top_k) == (1.0, 7)
    assert (seen[2].temperature, seen[2].top_k) == (1.0, 0)  # --generation-config vllm: vLLM's own defaults


async def test_cors_and_docs(engine, settings):
    from octavo.runtime.server.app import build_app

    settings.allowed_origins = ["https://ui.example"]
    settings.api_keys = ["k"]
    app = build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c", timeout=60) as c:
        preflight = await c.options("/v1/completions", headers={
            "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200  # answered before the key is checked, as browsers need
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        other = await c.options("/v1/completions", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        assert (await c.get("/openapi.json")).status_code == 200
    settings.disable_docs = True
    app = build_app(engine, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c", timeout=60) as c:
        assert (await c.get("/openapi.json")).status_code == 404
        assert (await c.get("/docs")).status_code == 404


async def test_root_path_keeps_the_api_key_gate(engine, settings):
    """Behind --root-path the scope's path carries the prefix: the key is still required."""
    from octavo.runtime.server.app import build_app

    settings.api_keys = ["k"]
    app = build_app(engine, settings)
    transport = httpx.ASGITransport(app=app, root_path="/llm")
    async with httpx.AsyncClient(transport=transport, base_url="http://r", timeout=60) as c:
        body = {"prompt": "x", "max_tokens": 1}
        assert (await c.post("/llm/v1/completions", json=body)).status_code == 401
        assert (await c.post("/llm/tokenize", json={"prompt": "x"})).status_code == 401
        ok = await c.post("/llm/v1/completions", json=body, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200, ok.text
