"""Tokenizer at the engine's edge: loading (never remote code), the chat template, end-of-sequence
ids, and incremental detokenization.

Detokenizing token by token is not concatenating each token's text: byte-level BPE splits a
multi-byte character across tokens, and SentencePiece decides a leading space from the previous
token. The incremental detokenizer decodes a short window that ends at the new tokens and emits
only text that is complete (no trailing U+FFFD) and new.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger("octavo")

_CONTEXT_TOKENS = 6  # prompt tokens kept as context for the first output tokens' spacing


def load_tokenizer(path: str, required: bool = True):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # missing files raise several exception types across versions
        if required:
            raise ValueError(f"cannot load a tokenizer from {path}: {exc}") from exc
        logger.info("no tokenizer at %s (%s): prompts must be token ids and text is not produced", path,
                    type(exc).__name__)
        return None


def eos_token_ids(tokenizer: Any, model_path: str, hf_config: Any) -> set[int]:
    """The ids that end generation: the tokenizer's EOS, config.json's and generation_config.json's."""
    ids: set[int] = set()

    def add(value: Any) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))

    if tokenizer is not None:
        add(tokenizer.eos_token_id)
    add(getattr(hf_config, "eos_token_id", None))
    gen_path = os.path.join(model_path, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path) as f:
            add(json.load(f).get("eos_token_id"))
    return ids


def apply_chat_template(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
                        chat_template: str | None = None, tokenize: bool = True, **template_kwargs: Any):
    """The conversation as the template renders it: token ids, or the text with tokenize=False.
    `template_kwargs` (continue_final_message, documents, a template's own variables) go to
    transformers' apply_chat_template."""
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer, and this model has none")
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template; pass chat_template=")
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             chat_template=chat_template, tokenize=tokenize, **template_kwargs)
    if not tokenize:
        return rendered
    if isinstance(rendered, dict) or hasattr(rendered, "keys"):  # transformers 5 returns a BatchEncoding
        rendered = rendered["input_ids"]
    return list(rendered)


def _decode_stream(context: list[int], skip_special_tokens: bool) -> Any:
    """A DecodeStream primed with the prompt's context, or None where tokenizers is older than
    0.22 (no ``ids``: the stream could not know the text it continues)."""
    try:
        from tokenizers.decoders import DecodeStream

        return DecodeStream(ids=context, skip_special_tokens=skip_special_tokens)
    except (ImportError, TypeError):
        return None


class IncrementalDetokenizer:
    """Text as tokens arrive, holding back an incomplete UTF-8 character. A fast tokenizer's
    DecodeStream (Rust, one step per token) does it where there is one: 1.7 against 15.6 us a
    token for the demo tokenizer (CPU; /tmp/detok_bench.py in the commit message), per token of
    every running request on the engine's step path. Others decode a short window twice per token."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        context = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        # A stream started on broken UTF-8 (a token-id prompt cut inside a character) can emit the
        # prompt's bytes as output: such a prompt takes the window path.
        if self.backend is not None and "\ufffd" in self._decode(context):
            self.backend = None
        if self.backend is not None:
            # Fast tokenizers' decode ignores spaces_between_special_tokens, and so does the stream.
            self.stream = _decode_stream(context, skip_special_tokens)
            if self.stream is not None:
                return
            self.backend = None
        self.token_ids = context
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text they complete (possibly empty)."""
        if self.backend is not None:
            return "".join(self.stream.step(self.backend, token_id) or "" for token_id in token_ids)
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            delta = full_text[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
            return delta
        return ""

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
