"""Tool call parsers, one module per output format, under vLLM's --tool-call-parser names, and
the readers of constrained tool output (forced.py)."""

from __future__ import annotations

from octavo.runtime.server.tool_parsers.calls import CallDraft, Parsed
from octavo.runtime.server.tool_parsers.hermes import HermesToolParser
from octavo.runtime.server.tool_parsers.llama3_json import Llama3JsonToolParser

PARSERS = {parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser)}

# vLLM's other parser names: refused with a line that lists octavo's.
VLLM_ONLY_PARSERS = ("mistral", "llama4_json", "llama4_pythonic", "pythonic", "internlm", "jamba", "granite",
                     "granite-20b-fc", "phi4_mini_json", "deepseek_v3", "deepseek_v31", "xlam", "minimax",
                     "kimi_k2", "qwen3_coder", "qwen3_xml", "hunyuan_a13b", "glm45", "step3", "openai", "seed_oss")


def parser_problem(name: str | None) -> str | None:
    """Why --tool-call-parser NAME cannot be served, or None."""
    if name is None or name in PARSERS:
        return None
    known = ", ".join(sorted(PARSERS))
    if name in VLLM_ONLY_PARSERS:
        return f"--tool-call-parser {name} is not supported: octavo has {known}"
    return f"--tool-call-parser {name} is not a tool call parser: choose one of {known}"


def extract(parser, text: str) -> tuple[str | None, list[CallDraft]]:
    """The non-streamed reading of a whole output: (content, tool calls); content None when the
    output is only tool calls."""
    parsed: Parsed = parser.parse(text, True)
    return parsed.content, parsed.calls


__all__ = ["PARSERS", "CallDraft", "Parsed", "extract", "parser_problem"]
