"""Tool calling through the server with the official `openai` client and langchain-openai:
tools and tool messages rendered by a Hermes/Qwen2.5-style template, named tool choices read back
as tool calls (streamed deltas add up to the whole answer), and the 400s for bad tool requests.

The tiny model cannot call tools by itself: tests of required and named tool choices get valid
JSON because the grammar backend (octavo.runtime.structured) enforces the schema the tool plan
puts in SamplingParams.structured_outputs.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest

from server_testing import MODEL_NAME

# Modelled on Qwen2.5's template: tools in the system turn, calls in <tool_call> blocks, tool
# results as <tool_response> in a user turn.
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{%- if message.content %}
{{ message.content }}{% endif %}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response id="{{ message.tool_call_id }}">
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# Small: the tiny model's context is 256 tokens.
# What the server renders (the tiny model's 256-token context holds no whole tool schema): tool
# names, calls, results.
COMPACT_TEMPLATE = ("{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}"
                    "{{ m.role[0] }}:{{ m.content or '' }}{% for c in m.tool_calls or [] %}"
                    "{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}"
                    "{{ m.tool_call_id or '' }};{% endfor %}{% if add_generation_prompt %}a:{% endif %}")
# The city is an enum so a constrained call ends within a few tokens: the tiny model, free to write a
# string, writes one longer than any max_tokens its context allows.
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
                  "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "forecast",
                                           "parameters": WEATHER_SCHEMA}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CONVERSATION = [
    {"role": "user", "content": "Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


@pytest.fixture
def settings():
    from octavo.runtime.server.state import ServerSettings

    return ServerSettings(served_model_names=[MODEL_NAME], chat_template=COMPACT_TEMPLATE,
                          enable_auto_tool_choice=True, tool_call_parser="hermes")


def test_the_template_sees_tools_calls_and_results(engine):
    from octavo.runtime.server.protocol import ChatCompletionRequest
    from octavo.runtime.server.tool_calling import template_message, template_tools
    from octavo.runtime.tokenizer import apply_chat_template

    body = ChatCompletionRequest(model=MODEL_NAME, messages=CONVERSATION, tools=TOOLS)
    text = apply_chat_template(engine.get_tokenizer(), [template_message(m) for m in body.messages],
                               chat_template=HERMES_TEMPLATE, tokenize=False, tools=template_tools(body.tools))
    assert '"name": "get_weather"' in text and '"description": "forecast"' in text  # the tools
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert '<tool_response id="call_1">\nsunny\n</tool_response>' in text
    assert text.endswith("<|im_start|>assistant\n")


async def test_a_tool_round_trip_is_accepted(openai_client, client, engine):
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATION, tools=TOOLS,
                                                         tool_choice="none", max_tokens=4, temperature=0)
    [choice] = result.choices
    assert choice.message.tool_calls is None and isinstance(choice.message.content, str)
    # the prompt holds what the template made of the tools and the round trip
    from octavo.runtime.tokenizer import apply_chat_template

    assert apply_chat_template(engine.get_tokenizer(), [{"role": "u", "content": "x"}], chat_template=COMPACT_TEMPLATE,
                               tokenize=False, tools=TOOLS) == "[get_weather]u:x;a:"
    without = await client.post("/tokenize", json={"model": MODEL_NAME, "messages": CONVERSATION[:1]})
    with_tools = await client.post("/tokenize", json={"model": MODEL_NAME, "messages": CONVERSATION, "tools": TOOLS})
    assert with_tools.status_code == 200, with_tools.text
    assert result.usage.prompt_tokens == with_tools.json()["count"] > without.json()["count"]


async def test_named_tool_choice_is_a_tool_call_and_its_stream_adds_up(openai_client):
    base = dict(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS, tool_choice=NAMED, max_tokens=12,
                temperature=0)
    whole = await openai_client.chat.completions.create(**base)
    [choice] = whole.choices
    [call] = choice.message.tool_calls
    assert choice.message.content is None
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("chatcmpl-tool-")
    assert choice.finish_reason in ("stop", "length")  # OpenAI's: a named function keeps stop

    stream = await openai_client.chat.completions.create(**base, stream=True)
    name, arguments, ids, finish = None, "", set(), None
    async for chunk in stream:
        for c in chunk.choices:
            for item in c.delta.tool_calls or []:
                assert item.index == 0
                if item.id:
                    ids.add(item.id)
                    name = item.function.name
                arguments += item.function.arguments or ""
            finish = c.finish_reason or finish
    assert len(ids) == 1 and name == "get_weather"
    assert arguments == call.function.arguments and finish == choice.finish_reason


@pytest.mark.parametrize("stream", [False, True])
async def test_named_tool_choice_arguments_validate_against_the_schema(openai_client, stream):
    base = dict(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS, tool_choice=NAMED, max_tokens=64,
                temperature=1.0, seed=4)
    result = await openai_client.chat.completions.create(**base)
    [call] = result.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)


async def test_required_tool_choice_calls_a_tool(openai_client):
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS,
                                                         tool_choice="required", parallel_tool_calls=False,
                                                         max_tokens=224, temperature=0)
    [choice] = result.choices  # one call (maxItems 1); the tiny model pads it with whitespace runs
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        json.loads(call.function.arguments)


def test_langchain_bind_tools_with_a_named_tool(live_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: Literal["Paris", "Rome", "Oslo"]) -> str:  # an enum ends within max_tokens
        """The forecast for a city."""
        return "sunny"

    llm = ChatOpenAI(model=MODEL_NAME, base_url=f"{live_server.url}/v1", api_key="unused", max_tokens=64,
                     temperature=0, max_retries=0)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city"}


async def test_auto_without_the_flags_is_vllms_400(client, engine):
    from octavo.runtime.server.app import build_app
    from octavo.runtime.server.state import ServerSettings

    import httpx

    app = build_app(engine, ServerSettings(served_model_names=[MODEL_NAME]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://octavo.test") as plain:
        for extra, param in (({}, "tools"), ({"tool_choice": "auto"}, "tool_choice")):
            response = await plain.post("/v1/chat/completions", json={
                "model": MODEL_NAME, "messages": CONVERSATION[:1], "tools": TOOLS, **extra})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == param
            assert "--enable-auto-tool-choice and --tool-call-parser" in error["message"]
        ok = await plain.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": CONVERSATION[:1],
                                                            "tools": TOOLS, "tool_choice": NAMED, "max_tokens": 2})
        assert ok.status_code == 200, ok.text  # named (and required) need no flag


async def test_auto_with_the_parser_answers_content_when_no_call_is_made(openai_client):
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS,
                                                         max_tokens=6, temperature=0)
    [choice] = result.choices
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("extra, param, words", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function"}]}, "tools", "tools.0"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools", "pattern"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools",
     "type object"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": "{bad"}}]}]},
     "messages", "not JSON"),
    ({"functions": [{"name": "f"}]}, "functions", "send tools and tool_choice"),
    # the grammar backend compiles a forced call's schema before the engine sees the request
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "nonsense"}}}}}], "tool_choice": "required"},
     "tools", "nonsense"),
    ({"tools": TOOLS, "tool_choice": NAMED, "response_format": {"type": "json_object"}}, "response_format",
     "cannot be combined with tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a+"}, "guided_regex", "drop one"),
])
async def test_bad_tool_requests_are_400s_naming_the_problem(client, extra, param, words):
    body = {"model": MODEL_NAME, "messages": CONVERSATION[:1], "max_tokens": 2, **extra}
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error


# ---- the chat route's tool plumbing with scripted model output (what a tool-calling model writes) ----
HERMES_OUTPUT = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
REQUIRED_OUTPUT = '[{"name": "get_weather", "parameters": {"city": "Paris"}}]'


@pytest.fixture
def scripted(monkeypatch):
    """Replaces the engine's output with a scripted text (streamed a character at a time); returns
    the SamplingParams each request was given."""
    from octavo.runtime.outputs import CompletionOutput, RequestOutput
    from octavo.runtime.sampling_params import RequestOutputKind
    from octavo.runtime.server.state import ServingState

    seen, script = [], {}

    async def generate(self, request_id, prompt_token_ids, prompt_text, params):
        seen.append(params)
        text = script["text"]
        pieces = list(text) if params.output_kind == RequestOutputKind.DELTA else [text]
        for i, piece in enumerate(pieces):
            done = i == len(pieces) - 1
            yield RequestOutput(request_id, None, prompt_token_ids, None,
                                [CompletionOutput(0, piece, [1], None, None, "stop" if done else None)], done)

    monkeypatch.setattr(ServingState, "generate", generate)

    def use(text):
        script["text"] = text
        return seen
    return use


async def streamed(openai_client, **kwargs):
    content, calls, finish = "", [], None
    async for chunk in await openai_client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            content += c.delta.content or ""
            for item in c.delta.tool_calls or []:
                if item.id:
                    assert item.index == len(calls) and item.type == "function"
                    calls.append([item.function.name, item.function.arguments or ""])
                else:
                    calls[item.index][1] += item.function.arguments
            finish = c.finish_reason or finish
    return content or None, [tuple(c) for c in calls], finish


async def test_auto_reads_hermes_calls_whole_and_streamed(openai_client, scripted):
    seen = scripted(HERMES_OUTPUT)
    base = dict(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS, max_tokens=30)
    result = await openai_client.chat.completions.create(**base)
    [choice] = result.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert seen[-1].structured_outputs is None and seen[-1].skip_special_tokens is False  # <tool_call> is special
    assert await streamed(openai_client, **base) == (
        "Checking.", [("get_weather", call.function.arguments)], "tool_calls")


async def test_required_builds_the_schema_and_reads_the_array(openai_client, scripted):
    seen = scripted(REQUIRED_OUTPUT)
    base = dict(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS, tool_choice="required", max_tokens=30)
    result = await openai_client.chat.completions.create(**base, parallel_tool_calls=False)
    schema = seen[-1].structured_outputs.json
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    [alternative] = schema["items"]["anyOf"]
    assert alternative["properties"]["name"] == {"type": "string", "enum": ["get_weather"]}
    assert alternative["properties"]["parameters"] == WEATHER_SCHEMA
    jsonschema.validate(json.loads(REQUIRED_OUTPUT), schema)  # the reader reads the shape the schema asks
    [choice] = result.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert await streamed(openai_client, **base) == (None, [("get_weather", call.function.arguments)], "tool_calls")


async def test_named_sets_the_functions_parameters_as_the_schema(openai_client, scripted):
    seen = scripted('{"city": "Paris"}')
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS,
                                                         tool_choice=NAMED, max_tokens=30)
    assert seen[-1].structured_outputs.json == WEATHER_SCHEMA
    [call] = result.choices[0].message.tool_calls
    assert call.function.arguments == '{"city": "Paris"}' and result.choices[0].finish_reason == "stop"


async def test_tool_choice_none_leaves_the_output_as_content(openai_client, scripted):
    seen = scripted(HERMES_OUTPUT)
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS,
                                                         tool_choice="none", max_tokens=30)
    assert result.choices[0].message.content == HERMES_OUTPUT and result.choices[0].message.tool_calls is None
    assert seen[-1].structured_outputs is None and result.choices[0].finish_reason == "stop"
