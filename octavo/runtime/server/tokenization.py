"""vLLM's tokenizer routes: POST /tokenize (a prompt, or the messages chat would render), POST
/detokenize, GET /tokenizer_info. Evaluation harnesses (lm-eval's remote tokenizer) count
context tokens with these, so /tokenize must tokenize exactly as /v1/completions does."""

from __future__ import annotations

from typing import Any

from octavo.runtime.server.chat import render_prompt
from octavo.runtime.server.errors import bad_request
from octavo.runtime.server.protocol import (DetokenizeRequest, DetokenizeResponse, TokenizeChatRequest,
                                            TokenizeCompletionRequest, TokenizeResponse)
from octavo.runtime.server.state import ServingState

# tokenizer_config fields that are paths on the server, not configuration
_PRIVATE_KEYS = ("vocab_file", "merges_file", "tokenizer_file", "name_or_path", "is_local", "local_files_only",
                 "added_tokens_decoder")


def tokenize(state: ServingState, body: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
    state.admit(body)
    if isinstance(body, TokenizeChatRequest):
        token_ids = render_prompt(state, body)
    else:
        token_ids = state.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
    strs = list(state.tokenizer.convert_ids_to_tokens(token_ids)) if body.return_token_strs else None
    return TokenizeResponse(count=len(token_ids), max_model_len=state.max_model_len, tokens=token_ids,
                            token_strs=strs)


def detokenize(state: ServingState, body: DetokenizeRequest) -> DetokenizeResponse:
    state.admit(body)
    if state.tokenizer is None:
        raise bad_request("this model has no tokenizer", param="tokens")
    vocab = len(state.tokenizer)
    bad = next((t for t in body.tokens if t >= vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="tokens")
    return DetokenizeResponse(prompt=state.decode(body.tokens))


def tokenizer_info(state: ServingState) -> dict[str, Any]:
    """The tokenizer's configuration as vLLM reports it: tokenizer_config's fields (paths left
    out), the class name, the chat template in use and the special tokens by name; and, unlike
    vLLM (which echoes the tokenizer's own, often 1e30), model_max_length is the served context."""
    tokenizer = state.tokenizer
    if tokenizer is None:
        raise bad_request("this model has no tokenizer")
    info = {key: _plain(value) for key, value in (getattr(tokenizer, "init_kwargs", None) or {}).items()
            if key not in _PRIVATE_KEYS}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            info[name] = _plain(value)
    info["tokenizer_class"] = type(tokenizer).__name__
    template = state.settings.chat_template or getattr(tokenizer, "chat_template", None)
    if template:
        info["chat_template"] = template
    info["model_max_length"] = state.max_model_len
    return info


def _plain(value: Any) -> Any:
    """JSON-safe: AddedToken -> its text; containers element-wise; anything else as a string."""
    if hasattr(value, "content"):
        return value.content
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
