"""Hermes / Qwen2.5 tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
block per call; the text before the first block is the content (vLLM's `hermes` parser)."""

from __future__ import annotations

from octavo.runtime.server.tool_parsers.calls import Parsed, held_back, read_call

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser:
    name = "hermes"
    # <tool_call> is a special token in Qwen2.5's and Hermes' vocabularies: keep it in the text.
    skip_special_tokens = False

    def parse(self, text: str, final: bool) -> Parsed:
        first = text.find(START)
        if first < 0:
            if final:
                return Parsed(content=text)
            return Parsed(content=text[:len(text) - held_back(text, START)].rstrip())
        result = Parsed(content=text[:first].rstrip() or None)
        pos = first
        while pos >= 0:
            read = read_call(text, pos + len(START))
            if read is None:
                return Parsed(content=text) if final else result
            call, end = read
            if call.name is None:  # an empty block, or one whose name is still being written
                break
            result.calls.append(call)
            if not call.complete:
                break
            pos = text.find(START, end)
        if final and (not result.calls or not all(c.complete for c in result.calls)):
            return Parsed(content=text)
        return result
