"""A chat request's tools -> how its output is read and constrained, and its messages -> what
the chat template sees.

tool_choice none: tools go to the template (as vLLM does), the output is content. auto: the
--tool-call-parser reads calls out of free text (a 400 without --enable-auto-tool-choice, as
vLLM answers). A named function or required: a JSON schema in SamplingParams.structured_outputs
makes the output parseable (the grammar backend enforces it) and the output is read directly,
no parser flag needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from octavo.runtime.server.errors import bad_request
from octavo.runtime.server.protocol import ChatCompletionRequest, ChatMessage, ChatTool, NamedToolChoice
from octavo.runtime.server.tool_parsers import PARSERS
from octavo.runtime.server.tool_parsers.forced import NamedFunctionReader, RequiredCallsReader

AUTO_NEEDS_FLAGS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
_ANY_OBJECT = {"type": "object"}


@dataclass
class ToolPlan:
    """How one request's output becomes tool calls."""

    reader: Any  # parse(text, final) -> Parsed; see tool_parsers
    schema: dict | None  # the structured_outputs JSON schema; None: free text (auto)
    calls_finish: bool  # whether a finished output with calls ends with finish_reason tool_calls
    max_calls: int | None  # 1 with parallel_tool_calls=false


def parameters_schema(tool: ChatTool) -> dict:
    return tool.function.parameters or _ANY_OBJECT


def required_schema(tools: list[ChatTool], parallel: bool) -> dict:
    """vLLM's schema for tool_choice required: an array of {name, parameters}, one alternative
    per tool, name first (the readers stream arguments when the name comes first)."""
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": [
        {"properties": {"name": {"type": "string", "enum": [tool.function.name]},
                        "parameters": parameters_schema(tool)},
         "required": ["name", "parameters"]} for tool in tools]}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def tool_plan(body: ChatCompletionRequest, enable_auto_tool_choice: bool, tool_call_parser: str | None
              ) -> ToolPlan | None:
    """The request's plan, None when its output is plain content; raises a 400 for auto without
    the server's flags."""
    choice = body.effective_tool_choice
    parallel = body.parallel_tool_calls is not False
    max_calls = None if parallel else 1
    if choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in body.tools or [] if t.function.name == choice.function.name)
        return ToolPlan(NamedFunctionReader(tool.function.name), parameters_schema(tool), False, 1)
    if choice == "required":
        return ToolPlan(RequiredCallsReader(), required_schema(body.tools or [], parallel), True, max_calls)
    if not (enable_auto_tool_choice and tool_call_parser):
        raise bad_request(AUTO_NEEDS_FLAGS, param="tool_choice" if body.tool_choice else "tools")
    return ToolPlan(PARSERS[tool_call_parser](), None, True, max_calls)


def template_message(message: ChatMessage) -> dict:
    """A message as chat templates expect it: tool_calls' arguments as objects (templates write
    them with tojson, as vLLM passes them), tool results with their tool_call_id."""
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                           "content": message.text() if message.content is not None or not message.tool_calls
                           else None}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments)
            except ValueError as exc:
                raise bad_request(f"tool call {call.id}: arguments are not JSON ({exc}): send a JSON object "
                                  "as a string", param="messages") from None
            calls.append({"id": call.id, "type": "function",
                          "function": {"name": call.function.name, "arguments": arguments}})
        out["tool_calls"] = calls
    return out


def template_tools(tools: list[ChatTool] | None) -> list[dict] | None:
    return [tool.model_dump(exclude_none=True) for tool in tools] if tools else None


def finish_reason(plan: ToolPlan | None, called: bool, reason: str | None) -> str | None:
    """OpenAI's: tool_calls when auto or required made calls and the output stopped; a named
    function keeps stop (as OpenAI and vLLM answer)."""
    if plan is not None and plan.calls_finish and called and reason == "stop":
        return "tool_calls"
    return reason
