"""A parser's readings of a growing text -> the deltas of an OpenAI chat stream: content
fragments, and per tool call one `delta.tool_calls` item with index, id, type and name, then
argument fragments. What is sent is always a prefix of the final reading, so the deltas add up to
the non-streamed answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from octavo.runtime.server.ids import random_hex


def tool_call_id() -> str:
    """vLLM's form of a tool call id."""
    return f"chatcmpl-tool-{random_hex()}"


@dataclass
class ToolCallStream:
    parser: object  # anything with parse(text, final) -> Parsed
    max_calls: int | None = None  # 1 with parallel_tool_calls=false
    text: str = ""
    sent_content: str = ""
    sent_calls: list[list] = field(default_factory=list)  # per call: [id, arguments sent]

    @property
    def called(self) -> bool:
        return bool(self.sent_calls)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[dict]]:
        """The content and tool-call deltas the text `delta` adds (final: the output ended)."""
        self.text += delta
        parsed = self.parser.parse(self.text, final)
        content = parsed.content or ""
        content_delta = ""
        if content.startswith(self.sent_content) and len(content) > len(self.sent_content):
            content_delta = content[len(self.sent_content):]
            self.sent_content = content
        calls = parsed.calls[:self.max_calls] if self.max_calls is not None else parsed.calls
        items = []
        for index, call in enumerate(calls):
            if call.name is None:
                break
            if index == len(self.sent_calls):
                self.sent_calls.append([tool_call_id(), call.arguments])
                items.append({"index": index, "id": self.sent_calls[index][0], "type": "function",
                              "function": {"name": call.name, "arguments": call.arguments}})
                continue
            sent = self.sent_calls[index][1]
            if call.arguments.startswith(sent) and len(call.arguments) > len(sent):
                items.append({"index": index, "function": {"arguments": call.arguments[len(sent):]}})
                self.sent_calls[index][1] = call.arguments
        return content_delta, items
