"""Llama 3.x JSON tool calls: the whole output is `{"name": ..., "parameters": {...}}` (or
"arguments"), optionally after `<|python_tag|>`, several calls separated by `;` (vLLM's
`llama3_json` parser). Output that starts otherwise is plain content."""

from __future__ import annotations

import re

from octavo.runtime.server.tool_parsers.calls import Parsed, read_call

PYTHON_TAG = "<|python_tag|>"
_SEPARATOR = re.compile(r"\s*;\s*")


class Llama3JsonToolParser:
    name = "llama3_json"
    skip_special_tokens = True  # <|python_tag|> may come or not: both read the same

    def parse(self, text: str, final: bool) -> Parsed:
        body = text.lstrip()
        if body.startswith(PYTHON_TAG):
            body = body[len(PYTHON_TAG):]
        elif not final and PYTHON_TAG.startswith(body):
            return Parsed()  # nothing yet, or the start of the tag
        if not body.lstrip().startswith("{"):
            if not final and not body.strip():
                return Parsed()
            return Parsed(content=text)
        result = Parsed()
        pos = 0
        while True:
            read = read_call(body, pos)
            if read is None:
                return Parsed(content=text) if final else result
            call, end = read
            if call.name is None:
                break
            result.calls.append(call)
            if not call.complete:
                break
            separator = _SEPARATOR.match(body, end)
            if separator is None or separator.end() == len(body):
                if body[end:].strip() and body[end:].strip() != ";":
                    return Parsed(content=text) if final else result
                break
            pos = separator.end()
        if final and (not result.calls or not all(c.complete for c in result.calls)):
            return Parsed(content=text)
        return result
