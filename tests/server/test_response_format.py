"""Structured outputs against a real `octavo serve` of the demo model, through real clients: the
`openai` client's parse (greedy and sampled, stream and not), langchain-openai's
with_structured_output, vLLM's guided_* fields over 50 sampled requests each, constrained and
unconstrained requests batched together, invalid constraints (400) and max_tokens (length)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from server_testing import ServerProcess, wait_until

MODEL = "octavo-demo"
PROMPT = [{"role": "user", "content": "Give your verdict on the king, as JSON."}]


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confident: bool
    score: int = Field(ge=0, le=9)
    name: str = Field(max_length=8)


@pytest.fixture(scope="module")
def server():
    process = ServerProcess([sys.executable, "-m", "octavo.cli", "serve", MODEL, "--port", "0", "--device", "cpu",
                             "--max-model-len", "1024", "--num-gpu-blocks-override", "512", "--seed", "0"])
    try:
        url = process.wait_bound()
        with httpx.Client(base_url=url, timeout=10) as http:
            wait_until(lambda: http.get("/health").status_code == 200 or process.proc.poll() is not None,
                       timeout=120, message="the model to load")
        assert process.proc.poll() is None, process.log()
        yield url
    finally:
        process.stop()


@pytest.fixture
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)


def parse(client, **kwargs):
    """openai >= 3 has chat.completions.parse; older clients have it under beta."""
    completions = client.chat.completions
    return (completions.parse if hasattr(completions, "parse") else client.beta.chat.completions.parse)(**kwargs)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_openai_parse_returns_the_pydantic_object(openai_client, temperature):
    completion = parse(openai_client, model=MODEL, messages=PROMPT, response_format=Verdict,
                       temperature=temperature, seed=3, max_tokens=400)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Verdict)
    assert Verdict.model_validate_json(message.content) == message.parsed


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_openai_parse_streamed_equals_the_whole_answer(openai_client, temperature):
    kwargs = dict(model=MODEL, messages=PROMPT, response_format=Verdict, temperature=temperature, seed=5,
                  max_tokens=400)
    stream_api = openai_client.chat.completions if hasattr(openai_client.chat.completions, "stream") \
        else openai_client.beta.chat.completions
    with stream_api.stream(**kwargs) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, Verdict) and len(deltas) > 1
    assert "".join(deltas) == final.choices[0].message.content
    whole = parse(openai_client, **kwargs)  # seeded: the same tokens, whole
    assert whole.choices[0].message.parsed == parsed


def test_langchain_with_structured_output(server):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=server + "/v1", api_key="unused", model=MODEL, temperature=0, max_tokens=400,
                       timeout=120, max_retries=0)
    result = model.with_structured_output(Verdict).invoke("Give your verdict on the king.")
    assert isinstance(result, Verdict)


CONSTRAINTS = {
    "guided_choice": (["to be", "not to be", "Exeunt"], lambda text: text in ("to be", "not to be", "Exeunt")),
    "guided_regex": (r"(sir|lord) [A-Z][a-z]{1,8}, [0-9]{1,2}!", None),
}


async def _many(server: str, body: dict, count: int = 50) -> list[dict]:
    async with httpx.AsyncClient(base_url=server, timeout=300) as http:
        responses = await asyncio.gather(*[http.post("/v1/completions", json={**body, "seed": i}) for i in range(count)])
    assert all(r.status_code == 200 for r in responses), responses[0].text
    return [r.json()["choices"][0] for r in responses]


@pytest.mark.parametrize("field", sorted(CONSTRAINTS))
def test_guided_outputs_match_over_50_sampled_requests(server, field):
    value, matches = CONSTRAINTS[field]
    choices = asyncio.run(_many(server, {"model": MODEL, "prompt": "HAMLET:", "temperature": 1.0, "max_tokens": 60,
                                         field: value}))
    for choice in choices:
        assert choice["finish_reason"] == "stop", choice
        assert matches(choice["text"]) if matches else re.fullmatch(value, choice["text"]), choice["text"]
    assert len({c["text"] for c in choices}) > 1  # sampled: not one answer fifty times


def test_json_object_over_50_sampled_requests(server):
    body = {"model": MODEL, "prompt": "A JSON object:", "temperature": 1.0, "max_tokens": 300,
            "response_format": {"type": "json_object"}}
    choices = asyncio.run(_many(server, body))
    finished = [c for c in choices if c["finish_reason"] == "stop"]
    for choice in finished:
        assert isinstance(json.loads(choice["text"]), dict), choice["text"]
    assert len(finished) >= 25, [c["text"][:80] for c in choices if c["finish_reason"] != "stop"][:3]


def _token_ids(choice: dict) -> list[str]:
    return choice["logprobs"]["tokens"]  # "token_id:N" with return_tokens_as_token_ids


async def _mixed(server: str, with_constrained: bool) -> list[list[str]]:
    plain = {"model": MODEL, "temperature": 0.0, "max_tokens": 24, "ignore_eos": True, "logprobs": 0,
             "return_tokens_as_token_ids": True}
    constrained = {"model": MODEL, "temperature": 0.0, "max_tokens": 400, "guided_json": Verdict.model_json_schema()}
    prompts = ["ROMEO:", "First Citizen:\nBefore we proceed", "KING RICHARD II:", "JULIET:\nO"]
    async with httpx.AsyncClient(base_url=server, timeout=300) as http:
        calls = [http.post("/v1/completions", json={**plain, "prompt": p}) for p in prompts]
        if with_constrained:
            calls += [http.post("/v1/completions", json={**constrained, "prompt": p}) for p in prompts]
        responses = await asyncio.gather(*calls)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    if with_constrained:
        for response in responses[len(prompts):]:
            choice = response.json()["choices"][0]
            assert choice["finish_reason"] == "stop" and Verdict.model_validate_json(choice["text"])
    return [_token_ids(r.json()["choices"][0]) for r in responses[:len(prompts)]]


def test_unconstrained_requests_batched_with_constrained_ones_are_token_identical(server):
    alone = asyncio.run(_mixed(server, False))
    together = asyncio.run(_mixed(server, True))
    assert together == alone and all(len(tokens) == 24 for tokens in alone)


@pytest.mark.parametrize("path, body, param, problem", [
    ("/v1/chat/completions", {"messages": PROMPT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}},
     "response_format", "nonsense"),
    ("/v1/completions", {"prompt": "x", "guided_regex": "a(b"}, "guided_regex", "parenthesis"),
    ("/v1/completions", {"prompt": "x", "guided_grammar": "root ::= foo"}, "guided_grammar", "foo"),
    ("/v1/completions", {"prompt": "x", "guided_choice": []}, "guided_choice", "choice"),
    ("/v1/completions", {"prompt": "x", "structured_outputs": {"regex": "a", "json": {}}}, "structured_outputs",
     "exactly one"),
    ("/v1/completions", {"prompt": "x", "guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "one"),
    ("/v1/completions", {"prompt": "x", "guided_json": {"type": "object"}, "guided_decoding_backend": "outlines"},
     "guided_decoding_backend", "xgrammar"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_constraints_are_400_naming_the_problem(server, path, body, param, problem, stream):
    response = httpx.post(server + path, json={"model": MODEL, **body, "stream": stream}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and problem in error["message"], error


def test_a_schema_the_model_cannot_finish_in_max_tokens_ends_with_length(openai_client):
    completion = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=4,
        response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": Verdict.model_json_schema()}})
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.content.lstrip().startswith("{")
