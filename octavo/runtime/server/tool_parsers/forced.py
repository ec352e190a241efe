"""Readers for output that constrained decoding shaped (no --tool-call-parser needed):
tool_choice naming a function (the output is that function's arguments object) and
tool_choice "required" (a JSON array of {"name", "parameters"} objects, vLLM's shape)."""

from __future__ import annotations

import re

from octavo.runtime.server.tool_parsers.calls import CallDraft, Parsed, read_call

_SEPARATOR = re.compile(r"\s*,")
_CLOSE = re.compile(r"\s*\]\s*$")


class NamedFunctionReader:
    """The output is the arguments of the one named function."""

    skip_special_tokens = True

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name

    def parse(self, text: str, final: bool) -> Parsed:
        return Parsed(calls=[CallDraft(self.function_name, text, complete=final)])


class RequiredCallsReader:
    """The output is `[{"name": ..., "parameters": {...}}, ...]`."""

    skip_special_tokens = True

    def parse(self, text: str, final: bool) -> Parsed:
        body = text.lstrip()
        if not body:
            return Parsed(content=text) if final else Parsed()
        if not body.startswith("["):
            return Parsed(content=text)
        result = Parsed()
        pos = 1
        while True:
            read = read_call(body, pos)
            if read is None:
                break
            call, end = read
            if call.name is None:
                break
            result.calls.append(call)
            if not call.complete:
                break
            separator = _SEPARATOR.match(body, end)
            if separator is None:
                if final and not _CLOSE.match(body, end):
                    return Parsed(content=text)
                break
            pos = separator.end()
        if final and (not result.calls or not all(c.complete for c in result.calls)):
            return Parsed(content=text)
        return result
