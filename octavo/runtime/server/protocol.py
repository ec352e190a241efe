"""The OpenAI wire format as pydantic models: requests (validated, with vLLM's extra fields) and
responses (serialized exactly as OpenAI's clients expect), and vLLM's tokenizer routes.

No request field is silently dropped. Every field of vLLM's request schema either works or is a
400 that names it (`REFUSED_FIELDS`: what octavo lacks, each with the values that ask for
nothing, so clients that send defaults still work); a field neither OpenAI nor vLLM defines is
ignored, as both do, and logged.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_serializer, model_validator

from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

logger = logging.getLogger("octavo.server")

# Bounds that keep hostile values out of torch (seeds, top-k tensors) without limiting real use.
_INT64_MAX = 2**63 - 1
MAX_N = 128  # OpenAI's limit on choices per request
MAX_LOGPROBS = 20  # the engine's limit on top log-probabilities per position
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's and vLLM's, also when a client sends null

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]

_LEGACY_FUNCTIONS = "the legacy {field} is not supported: send tools and tool_choice instead"

# vLLM request fields octavo does not implement -> (values that ask for nothing, why). Set to
# anything else, the field is a 400 that names it.
REFUSED_FIELDS: dict[str, tuple[tuple, str]] = {
    "functions": ((None,), _LEGACY_FUNCTIONS),
    "function_call": ((None, "none"), _LEGACY_FUNCTIONS),
    "prompt_embeds": ((None,), "prompt_embeds is not supported: send text or token ids"),
    "use_beam_search": ((None, False), "beam search is not supported: remove use_beam_search (n samples instead)"),
    "length_penalty": ((None, 1, 1.0), "length_penalty only applies to beam search, which is not supported"),
    "allowed_token_ids": ((None,), "allowed_token_ids is not supported: remove it"),
    "bad_words": ((None, []), "bad_words is not supported: remove it"),
    "logits_processors": ((None,), "custom logits processors are not supported: remove logits_processors"),
    "priority": ((None, 0), "priority scheduling is not supported (first come, first served): remove priority"),
    "cache_salt": ((None,), "cache_salt is not supported (one shared prefix cache): remove it"),
    "kv_transfer_params": ((None,), "KV cache transfer is not supported: remove kv_transfer_params"),
    "vllm_xargs": ((None,), "vllm_xargs is not supported (no extension reads it): remove it"),
    "mm_processor_kwargs": ((None,), "multimodal inputs are not supported: remove mm_processor_kwargs"),
    "reasoning_effort": ((None,), "reasoning_effort is not supported (no reasoning parser): remove it"),
    "include_reasoning": ((None, True), "include_reasoning is not supported (no reasoning parser): remove it"),
}


class _Request(BaseModel):
    # extra="allow": unknown fields are kept so that `refused()` can name vLLM's and log the rest.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    def refused(self) -> tuple[str, str] | None:
        """(field, message) for the first field set to something octavo does not do; logs
        fields that neither OpenAI nor vLLM define (both APIs ignore those)."""
        extra = self.model_extra or {}
        for name, value in extra.items():
            if name in REFUSED_FIELDS:
                neutral, message = REFUSED_FIELDS[name]
                if not any(value is n or (type(value) is type(n) and value == n) for n in neutral):
                    return name, message.format(field=name)
        unknown = sorted(set(extra) - set(REFUSED_FIELDS))
        if unknown:
            logger.warning("request fields ignored (neither OpenAI's nor vLLM's): %s", ", ".join(unknown))
        return None


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Part):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = Field(False, description="vLLM extra: usage in every chunk")


class JsonSchemaFormat(_Part):
    """response_format.json_schema: OpenAI's named schema (`strict` is always honoured: the
    output matches the schema whatever strict says, as vLLM does)."""

    name: str = Field(..., max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# vLLM's older per-field names -> StructuredOutputsParams' names.
GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar", "structural_tag": "structural_tag"}
GRAMMAR_BACKENDS = ("xgrammar", "auto")


class StructuredOutputsError(ValueError):
    """A structured-output field that asks for something malformed; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _SamplingRequest(_Request):
    """Fields shared by completions and chat: OpenAI's, then vLLM's extras."""

    model: str | None = Field(None, description="a served model name; omitted means the first one")
    n: int | None = Field(1, ge=1, le=MAX_N)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=_INT64_MAX - MAX_N)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="an end-user id (for the caller's records; not used)")
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extra sampling fields
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=1e4)
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(0, ge=0)
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    truncate_prompt_tokens: int | None = Field(None, ge=1, description="vLLM extra: keep the prompt's last N tokens")
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                        description="vLLM extra: log-probabilities of the prompt's tokens")
    return_tokens_as_token_ids: bool | None = Field(
        None, description="vLLM extra: log-probability tokens as 'token_id:N' strings")
    request_id: str | None = Field(None, max_length=128, description="vLLM extra: the response's id")
    # Structured outputs: vLLM's object, and its older per-field names.
    structured_outputs: dict[str, Any] | None = Field(None, description="vLLM extra: json, regex, choice, grammar, "
                                                      "json_object or structural_tag, and whitespace options")
    guided_json: str | dict[str, Any] | None = Field(None, description="vLLM extra: a JSON schema")
    guided_regex: str | None = Field(None, description="vLLM extra: a regular expression")
    guided_choice: list[str] | None = Field(None, description="vLLM extra: the output is one of these strings")
    guided_grammar: str | None = Field(None, description="vLLM extra: an EBNF (GBNF) or Lark grammar")
    structural_tag: str | None = Field(None, description="vLLM extra: an xgrammar structural tag (JSON)")
    guided_decoding_backend: str | None = Field(None, description="vLLM extra: xgrammar or auto (octavo's one backend)")
    guided_whitespace_pattern: str | None = Field(None, description="vLLM extra: only \"\" (no whitespace in JSON)")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def unsupported(self) -> tuple[str, str] | None:
        """(field, message) for a field set to something this server cannot do."""
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed with stream=true"
        if self.stream_options is not None and self.stream_options.continuous_usage_stats:
            return "stream_options", "stream_options.continuous_usage_stats is not supported: use include_usage"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported: remove it"
        if self.best_of is not None and self.best_of != (self.n or 1):
            return "best_of", "best_of different from n is not supported: use n"
        rf = self.response_format
        if rf is not None and rf.type == "json_schema" and (rf.json_schema is None or rf.json_schema.schema_ is None):
            return "response_format", "response_format of type json_schema needs json_schema.schema"
        if self.guided_decoding_backend is not None and self.guided_decoding_backend.split(":")[0] not in GRAMMAR_BACKENDS:
            return "guided_decoding_backend", (f"guided_decoding_backend {self.guided_decoding_backend!r} is not "
                                               "available: octavo's backend is xgrammar (or leave it out)")
        if self.prompt_logprobs is not None and self.stream:
            return "prompt_logprobs", "prompt_logprobs are not available with stream=true"
        return self.refused()

    def structured_outputs_field(self) -> str | None:
        """The request field that asks for structured outputs (the 400's param), or None."""
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format"
        if self.structured_outputs is not None:
            return "structured_outputs"
        return next((name for name in GUIDED_FIELDS if getattr(self, name) is not None), None)

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """What the output must match, from whichever field asks; ValueError if several do."""
        given: list[tuple[str, dict]] = []
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            given.append(("response_format", {"json_object": True}))
        elif rf is not None and rf.type == "json_schema":
            given.append(("response_format", {"json": rf.json_schema.schema_}))
        if self.structured_outputs is not None:
            given.append(("structured_outputs", dict(self.structured_outputs)))
        given += [(name, {kind: getattr(self, name)}) for name, kind in GUIDED_FIELDS.items()
                  if getattr(self, name) is not None]
        if not given:
            return None
        if len(given) > 1:
            raise StructuredOutputsError(given[1][0], "give one structured-output constraint, got "
                                         + ", ".join(name for name, _ in given))
        name, spec = given[0]
        if self.guided_whitespace_pattern is not None:
            spec.setdefault("whitespace_pattern", self.guided_whitespace_pattern)
        known = set(StructuredOutputsParams.__dataclass_fields__)
        unknown = sorted(set(spec) - known)
        if unknown:
            raise StructuredOutputsError(name, f"{name}: unknown key(s) {', '.join(unknown)}; "
                                               f"known: {', '.join(sorted(known))}")
        try:
            return StructuredOutputsParams(**spec)
        except (TypeError, ValueError) as exc:
            raise StructuredOutputsError(name, f"{name}: {exc}") from None

    def sampling_params(self, max_tokens: int, output_kind: RequestOutputKind, logprobs: int | None,
                        prompt_logprobs: int | None = None, defaults: dict[str, Any] | None = None) -> SamplingParams:
        """SamplingParams for this request, `defaults` (--generation-config) for the sampling
        fields it leaves out; raises ValueError (a 400) for values it rejects."""
        defaults = defaults or {}

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(self, name)
            return value if value is not None else defaults.get(name, fallback)

        return SamplingParams(
            n=self.n or 1,
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=pick("repetition_penalty", 1.0),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=bool(self.ignore_eos),
            max_tokens=max_tokens,
            min_tokens=self.min_tokens or 0,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            include_stop_str_in_output=bool(self.include_stop_str_in_output),
            skip_special_tokens=self.skip_special_tokens is not False,
            spaces_between_special_tokens=self.spaces_between_special_tokens is not False,
            output_kind=output_kind,
            structured_outputs=self.structured_outputs_params(),
        )


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        ..., description="a string, a list of strings, a list of token ids or a list of lists of token ids")
    max_tokens: int | None = Field(DEFAULT_COMPLETION_MAX_TOKENS, ge=0,
                                   description="0 with echo scores the prompt without generating; null: 16")
    echo: bool | None = False
    # Strict: `false` (the chat API's boolean, sent here by mistake) is no count of logprobs.
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    add_special_tokens: bool | None = Field(True, description="vLLM extra: add the tokenizer's BOS to string prompts")

    @property
    def echo_only(self) -> bool:
        """max_tokens 0 with echo: score the prompt, generate nothing."""
        return bool(self.echo) and self.max_tokens == 0

    def unsupported(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported: remove it"
        if self.max_tokens == 0 and not self.echo:
            return "max_tokens", "max_tokens 0 generates nothing: give max_tokens >= 1, or echo=true to score the prompt"
        return super().unsupported()


class TextContentPart(_Part):
    type: Literal["text"]
    text: str


FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(_Part):
    name: str = Field(..., pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments object")
    strict: bool | None = None


class ChatTool(_Part):
    """An OpenAI function tool."""

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Part):
    name: str


class NamedToolChoice(_Part):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(..., description="a JSON object, as a string")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Part):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="assistant: the calls it made")
    tool_call_id: str | None = Field(None, description="tool: the call this message answers")

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> "ChatMessage":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _ChatTemplateFields(_Request):
    """How messages become a prompt (vLLM's extras, shared by chat and /tokenize)."""

    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = Field(False, description="vLLM extra: the model continues the last message")
    add_special_tokens: bool | None = Field(False, description="vLLM extra: add the tokenizer's BOS on top of the "
                                                               "template's")
    chat_template: str | None = Field(None, description="vLLM extra: a Jinja template for this request")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM extra: variables for the template")
    documents: list[dict[str, str]] | None = Field(None, description="vLLM extra: documents for RAG templates")

    def template_problem(self) -> tuple[str, str] | None:
        if self.continue_final_message and self.add_generation_prompt:
            return "continue_final_message", ("continue_final_message and add_generation_prompt cannot both be "
                                               "true: set add_generation_prompt to false")
        return None


class ChatCompletionRequest(_SamplingRequest, _ChatTemplateFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI: use max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="unset: auto with tools, none without")
    parallel_tool_calls: bool | None = Field(None, description="false: at most one tool call")
    echo: bool | None = Field(False, description="vLLM extra: not supported")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """none | auto | required | a NamedToolChoice; unset means auto with tools (OpenAI's and
        vLLM's default), none without."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice

    def tool_problem(self) -> tuple[str, str] | None:
        choice = self.tool_choice
        names = [tool.function.name for tool in self.tools or []]
        if choice not in (None, "none") and not self.tools:
            return "tool_choice", "tool_choice needs tools: send the tools it chooses from"
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                return "tool_choice", (f"tool_choice names {choice.function.name!r}, which is not among the "
                                       f"tools ({', '.join(names)})")
        constraint = self.structured_outputs_field()
        if constraint is not None and (choice == "required" or isinstance(choice, NamedToolChoice)):
            forced = choice if choice == "required" else f"naming {choice.function.name!r}"
            return constraint, (f"{constraint} cannot be combined with tool_choice {forced}: the tool call's "
                                "schema constrains the output; drop one of them")
        if len(set(names)) != len(names):
            return "tools", "two tools have the same function name: names must be unique"
        for tool in self.tools or []:
            if tool.function.parameters is not None and tool.function.parameters.get("type", "object") != "object":
                return "tools", (f"tool {tool.function.name!r}: parameters must be a JSON schema of type object "
                                 "(the arguments are an object)")
        return None

    def unsupported(self) -> tuple[str, str] | None:
        problem = self.tool_problem()
        if problem:
            return problem
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs=true"
        if self.echo:
            return "echo", "echo in chat (prepending the last message) is not supported: remove echo"
        return self.template_problem() or super().unsupported()


class TokenizeCompletionRequest(_Request):
    """POST /tokenize with a prompt (vLLM's shape)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool | None = True
    return_token_strs: bool | None = False

    def unsupported(self) -> tuple[str, str] | None:
        return self.refused()


class TokenizeChatRequest(_ChatTemplateFields):
    """POST /tokenize with messages: the prompt chat would build (vLLM's shape)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    return_token_strs: bool | None = False
    tools: list[ChatTool] | None = None

    def unsupported(self) -> tuple[str, str] | None:
        return self.template_problem() or self.refused()


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[TokenId]

    def unsupported(self) -> tuple[str, str] | None:
        return self.refused()


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


# ---- responses ---------------------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """vLLM's form of one token's log-probability in `prompt_logprobs`."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[str, PromptLogprob] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = Field(None, description="vLLM extra: the stop string or token id that ended it")
    prompt_logprobs: PromptLogprobs | None = Field(None, description="vLLM extra: with prompt_logprobs")

    @model_serializer(mode="wrap")
    def _drop_unasked(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("prompt_logprobs") is None:
            data.pop("prompt_logprobs", None)
        return data


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionStreamResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ChatLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatLogprobEntry):
    top_logprobs: list[ChatLogprobEntry] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)
        return data


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    prompt_logprobs: PromptLogprobs | None = Field(None, description="vLLM extra: with prompt_logprobs")

    @model_serializer(mode="wrap")
    def _drop_unasked(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("prompt_logprobs") is None:
            data.pop("prompt_logprobs", None)
        return data


class DeltaMessage(BaseModel):
    """A streamed piece of the assistant's message: only the fields that changed appear."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="index; on a call's first chunk id, type and function.name; then function.arguments "
                          "fragments")

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM's: on the last chunk, the stop string or token that ended it


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "octavo"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class VersionResponse(BaseModel):
    version: str
