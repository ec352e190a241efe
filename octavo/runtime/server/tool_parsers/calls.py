"""What a tool parser reads out of model text, and the one scanning step every format shares: a
call object `{"name": ..., "arguments" | "parameters": {...}}` read from a prefix of the text.

A parser is a pure function of the text generated so far (`parse(text, final)`), so a stream and
a whole response read the same calls: the stream sends what grew since the last delta. While the
text is still growing (final=False) a parser only reports what later text cannot change.

Arguments are the exact text the model wrote for the arguments object (checked to be JSON when
the call is complete), not a re-serialization: that is what lets a stream send the arguments as
they are written and still add up to the non-streamed answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_NAME_FIRST = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_DECODER = json.JSONDecoder()


@dataclass
class CallDraft:
    """One tool call as far as the text shows it: the name once it is whole, the arguments text
    written so far, and whether the call object is closed."""

    name: str | None = None
    arguments: str = ""
    complete: bool = False


@dataclass
class Parsed:
    """A parser's reading of the text: the assistant's content (None: no text for the user) and
    the tool calls, in order."""

    content: str | None = None
    calls: list[CallDraft] = field(default_factory=list)


def container_end(text: str, start: int) -> int | None:
    """The index after the JSON object or array that opens at `start`, or None while it is
    still open (brackets counted outside strings; whether it is valid JSON is json's answer)."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def read_call(text: str, pos: int) -> tuple[CallDraft, int] | None:
    """The call object starting at `pos` (after optional whitespace) and the index after it.

    Name first (as the schemas for required and named tools ask, and models write): the
    arguments are read as they grow. Any other key order: nothing until the object is whole.
    None when the text there is not a call (not an object, no name, arguments not an object)."""
    header = _NAME_FIRST.match(text, pos)
    if header is not None and text.startswith("{", header.end()):
        try:
            name = json.loads(f'"{header.group(1)}"')
        except ValueError:  # a bad escape or a control character in the name
            return None
        args_start = header.end()
        args_end = container_end(text, args_start)
        if args_end is None:
            return CallDraft(name, text[args_start:]), len(text)
        arguments = text[args_start:args_end]
        obj_start = text.index("{", pos)
        obj_end = container_end(text, obj_start)
        if obj_end is None:
            return CallDraft(name, arguments), len(text)
        try:
            obj = json.loads(text[obj_start:obj_end])
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("arguments", obj.get("parameters")), dict):
            return None
        return CallDraft(name, arguments, complete=True), obj_end
    return _whole_object(text, pos)


def _whole_object(text: str, pos: int) -> tuple[CallDraft, int] | None:
    start = len(text) - len(text[pos:].lstrip())
    if start == len(text):
        return CallDraft(), len(text)
    if text[start] != "{":
        return None
    end = container_end(text, start)
    if end is None:
        return CallDraft(), len(text)
    try:
        obj, _ = _DECODER.raw_decode(text[start:end])
    except ValueError:
        return None
    args = obj.get("arguments", obj.get("parameters")) if isinstance(obj, dict) else None
    if not isinstance(obj.get("name") if isinstance(obj, dict) else None, str) or not isinstance(args, dict):
        return None
    return CallDraft(obj["name"], json.dumps(args, ensure_ascii=False), complete=True), end


def held_back(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker` (kept from a
    stream until the next delta says whether the marker follows)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
