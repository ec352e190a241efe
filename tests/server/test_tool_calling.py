"""Tool calling through the server with the official `openai` client and langchain-openai:
tools and tool messages rendered by a Hermes/Qwen2.5-style template, named tool choices read back
as tool calls (streamed deltas add up to the whole answer), and the 400s for bad tool requests.

The tiny model cannot call tools by itself: tests that need its output to be valid JSON wait for
the grammar backend (issue #23 part A) that enforces SamplingParams.structured_outputs.
"""

from __future__ import annotations

import importlib.util
import json

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
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                  "additionalProperties": False}
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


def grammar_backend_available() -> bool:
    """Whether structured_outputs is enforced: part A of issue #23 adds the backend. xgrammar alone
    (installed) is not enough; its module in octavo is."""
    return any(importlib.util.find_spec(name) is not None for name in
               ("octavo.runtime.structured", "octavo.runtime.structured_outputs"))


needs_grammar = pytest.mark.skipif(not grammar_backend_available(), reason=(
    "needs the grammar backend (issue #23 part A: octavo.runtime.structured) so the tiny model's output is "
    "valid JSON"))


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


@needs_grammar
@pytest.mark.parametrize("stream", [False, True])
async def test_named_tool_choice_arguments_validate_against_the_schema(openai_client, stream):
    base = dict(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS, tool_choice=NAMED, max_tokens=64,
                temperature=1.0, seed=4)
    result = await openai_client.chat.completions.create(**base)
    [call] = result.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)


@needs_grammar
async def test_required_tool_choice_calls_a_tool(openai_client):
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=CONVERSATION[:1], tools=TOOLS,
                                                         tool_choice="required", max_tokens=96, temperature=0)
    [choice] = result.choices
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        json.loads(call.function.arguments)


@needs_grammar
def test_langchain_bind_tools_with_a_named_tool(live_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
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
])
async def test_bad_tool_requests_are_400s_naming_the_problem(client, extra, param, words):
    body = {"model": MODEL_NAME, "messages": CONVERSATION[:1], "max_tokens": 2, **extra}
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error
