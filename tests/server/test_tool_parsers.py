"""Tool call parsers, whole and streamed: each format's calls and content, and a stream's deltas
(under many chunkings, one character at a time included) adding up to the non-streamed answer."""

from __future__ import annotations

import json
import random

import pytest

from octavo.runtime.server.tool_parsers import PARSERS, extract, parser_problem
from octavo.runtime.server.tool_parsers.forced import NamedFunctionReader, RequiredCallsReader
from octavo.runtime.server.tool_parsers.stream import ToolCallStream

WEATHER = '{"city": "Paris", "days": [1, {"unit": "}\\"c"}], "note": "a ; b </tool_call>"}'

HERMES = [
    (f'<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>',
     None, [("get_weather", WEATHER)]),
    (f'Let me check.\n<tool_call>{{"name": "get_weather", "arguments": {WEATHER}}}</tool_call>\n'
     '<tool_call>{"name": "noop", "arguments": {}}</tool_call>',
     "Let me check.", [("get_weather", WEATHER), ("noop", "{}")]),
    ('<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>', None, [("f", '{"x": 1}')]),
    ("Just words, <tool no call.", "Just words, <tool no call.", []),
    ('<tool_call>{"name": "f", "arguments": {"x": 1</tool_call>', None, None),  # broken: all content
    ('<tool_call>{"name": "f", "arguments": {"x": 1}}', None, [("f", '{"x": 1}')]),  # unclosed block, whole object
]

LLAMA = [
    (f'{{"name": "get_weather", "parameters": {WEATHER}}}', None, [("get_weather", WEATHER)]),
    (f'<|python_tag|>{{"name": "get_weather", "parameters": {WEATHER}}}; {{"name": "noop", "arguments": {{}}}}',
     None, [("get_weather", WEATHER), ("noop", "{}")]),
    ("The weather is fine {not json}", "The weather is fine {not json}", []),
    ('{"name": "f", "parameters": {"x": 1}} trailing words', None, None),
    ('{"city": "no name"}', None, None),
]


def whole(parser, text):
    content, calls = extract(parser, text)
    return content, [(c.name, c.arguments) for c in calls]


def check(parser, text, content, calls):
    got_content, got_calls = whole(parser, text)
    if calls is None:  # unreadable calls: the whole text is content
        assert (got_content, got_calls) == (text, [])
        return
    assert got_calls == calls
    assert got_content == content
    for _, arguments in got_calls:
        json.loads(arguments)


@pytest.mark.parametrize("text, content, calls", HERMES)
def test_hermes_reads_calls_and_content(text, content, calls):
    check(PARSERS["hermes"](), text, content, calls)


@pytest.mark.parametrize("text, content, calls", LLAMA)
def test_llama3_json_reads_calls_and_content(text, content, calls):
    check(PARSERS["llama3_json"](), text, content, calls)


def test_forced_readers():
    named = NamedFunctionReader("get_weather")
    assert whole(named, WEATHER) == (None, [("get_weather", WEATHER)])
    required = RequiredCallsReader()
    text = f'[{{"name": "get_weather", "parameters": {WEATHER}}}, {{"name": "noop", "parameters": {{}}}}]'
    assert whole(required, text) == (None, [("get_weather", WEATHER), ("noop", "{}")])
    assert whole(required, "no array") == ("no array", [])


def chunkings(text: str):
    yield [text]
    yield list(text)  # one character at a time
    rng = random.Random(len(text))
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def reassemble(parser, chunks, max_calls=None):
    """A stream's deltas put back together as the whole answer; checks the delta shapes."""
    stream = ToolCallStream(parser, max_calls)
    content, calls = "", []
    for i, chunk in enumerate(chunks):
        delta, items = stream.feed(chunk, final=i == len(chunks) - 1)
        content += delta
        for item in items:
            if item["index"] == len(calls):
                assert item["id"].startswith("chatcmpl-tool-") and item["type"] == "function"
                calls.append([item["function"]["name"], item["function"]["arguments"]])
            else:
                assert item["index"] == len(calls) - 1 or item["index"] < len(calls)
                assert set(item) == {"index", "function"} and set(item["function"]) == {"arguments"}
                calls[item["index"]][1] += item["function"]["arguments"]
    return content or None, [tuple(c) for c in calls]


STREAMED = [("hermes", t) for t, _, calls in HERMES if calls is not None] + \
           [("llama3_json", t) for t, _, calls in LLAMA if calls is not None]


@pytest.mark.parametrize("name, text", STREAMED)
def test_stream_deltas_reassemble_to_the_whole_answer(name, text):
    parser = PARSERS[name]()
    expected = whole(parser, text)
    for chunks in chunkings(text):
        assert reassemble(parser, chunks) == expected, chunks


def test_forced_streams_reassemble():
    text = f'[{{"name": "get_weather", "parameters": {WEATHER}}}, {{"name": "noop", "parameters": {{}}}}]'
    for reader, t in ((RequiredCallsReader(), text), (NamedFunctionReader("get_weather"), WEATHER)):
        expected = whole(reader, t)
        for chunks in chunkings(t):
            assert reassemble(reader, chunks) == expected


def test_arguments_stream_before_the_call_closes():
    stream = ToolCallStream(PARSERS["hermes"]())
    _, items = stream.feed('<tool_call>{"name": "f", "arguments": {"city": "Pa')
    assert items[0]["function"] == {"name": "f", "arguments": '{"city": "Pa'}
    _, items = stream.feed('ris"}}</tool_call>', final=True)
    assert items == [{"index": 0, "function": {"arguments": 'ris"}'}}]


def test_parallel_tool_calls_false_keeps_the_first():
    text = '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {}}'
    assert reassemble(PARSERS["llama3_json"](), list(text), max_calls=1) == (None, [("a", "{}")])


def test_a_marker_prefix_is_held_back_until_known():
    stream = ToolCallStream(PARSERS["hermes"]())
    assert stream.feed("Hi <tool")[0] == "Hi"
    assert stream.feed("box>", final=True)[0] == " <toolbox>"


def test_parser_names():
    assert parser_problem("hermes") is None and parser_problem("llama3_json") is None
    assert "not supported" in parser_problem("mistral")
    assert "not a tool call parser" in parser_problem("bogus")


@pytest.mark.parametrize("seed", range(5))
def test_no_text_makes_a_parser_raise(seed):
    """Model text is arbitrary: every prefix of random JSON-ish text reads without an exception
    (an exception here would be a 500), and streams of it still add up."""
    rng = random.Random(seed)
    atoms = ['{', '}', '[', ']', '"', '\\', ':', ',', ';', ' ', '\n', 'a', '1', '"name"', '"arguments"',
             '"parameters"', '<tool_call>', '</tool_call>', '<|python_tag|>', '\\x', '\\u12', '\x01']
    readers = [PARSERS["hermes"](), PARSERS["llama3_json"](), RequiredCallsReader(), NamedFunctionReader("f")]
    for _ in range(200):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 30)))
        for reader in readers:
            for end in range(len(text) + 1):
                reader.parse(text[:end], False)
            reader.parse(text, True)
            reassemble(reader, list(text))
