"""Engine log-probabilities (one {token id: Logprob} dict per position) in the API's formats:
the legacy completions one (parallel lists), chat's (one entry per token with its top
alternatives) and vLLM's `prompt_logprobs` (the engine's dicts, keyed by token id).

A token's text is its decoded text, or `token_id:N` when the request asks for ids
(return_tokens_as_token_ids: texts that are not valid UTF-8 on their own stay identifiable)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from octavo.runtime.outputs import Logprob
from octavo.runtime.server.protocol import ChatLogprobEntry, ChatTokenLogprob, CompletionLogprobs, PromptLogprob

Decode = Callable[[int], str]


@dataclass(frozen=True)
class TokenTexts:
    """A token's text (what it adds to the response's text) and its name in log-probabilities
    (the text, or `token_id:N` with return_tokens_as_token_ids)."""

    decode: Decode
    as_token_ids: bool = False

    def text(self, token_id: int, entry: Logprob | None) -> str:
        if entry is not None and entry.decoded_token is not None:
            return entry.decoded_token
        return self.decode(token_id)

    def name(self, token_id: int, entry: Logprob | None) -> str:
        return f"token_id:{token_id}" if self.as_token_ids else self.text(token_id, entry)


def token_texts(decode: Decode, as_token_ids: bool = False) -> TokenTexts:
    return TokenTexts(decode, as_token_ids)


def _top(position: dict[int, Logprob], num: int) -> list[tuple[int, Logprob]]:
    """The `num` most likely tokens at a position (the chosen one is in the dict even when it is
    not among them; sorting by log-probability puts it last then)."""
    return sorted(position.items(), key=lambda item: item[1].logprob, reverse=True)[:num]


def _finite(value: float) -> float:
    # JSON has no -inf: a token that could not be drawn gets the most negative float instead.
    return value if value > -3.0e38 else -9999.0


def append_completion_logprobs(target: CompletionLogprobs, token_ids: list[int],
                               positions: list[dict[int, Logprob] | None], num: int, text_of: TokenTexts,
                               text_offset: int, zero_width: set[int] = frozenset()) -> int:
    """Extend `target` with the tokens' entries; returns the text offset after them.

    `text_offset` indexes the text the response returns: each token advances it by its text's
    length, except the positions in `zero_width`, tokens the returned text leaves out (a BOS the
    tokenizer added, special tokens skipped in generated text)."""
    for i, (token_id, position) in enumerate(zip(token_ids, positions)):
        entry = position.get(token_id) if position else None
        text = text_of.name(token_id, entry)
        target.tokens.append(text)
        target.text_offset.append(text_offset)
        if i not in zero_width:
            text_offset += len(text_of.text(token_id, entry))
        if entry is None:  # the prompt's first token has no log-probability
            target.token_logprobs.append(None)
            target.top_logprobs.append(None)
            continue
        target.token_logprobs.append(_finite(entry.logprob))
        top: dict[str, float] = {}
        for alt_id, alt in _top(position, num):  # best first: on equal texts the likelier token wins
            top.setdefault(text_of.name(alt_id, alt), _finite(alt.logprob))
        top.setdefault(text, _finite(entry.logprob))
        target.top_logprobs.append(top)
    return text_offset


def chat_logprobs(token_ids: list[int], positions: list[dict[int, Logprob]], num: int,
                  text_of: TokenTexts) -> list[ChatTokenLogprob]:
    content: list[ChatTokenLogprob] = []
    for token_id, position in zip(token_ids, positions):
        entry = position.get(token_id)
        text = text_of.name(token_id, entry)
        content.append(ChatTokenLogprob(
            token=text, logprob=_finite(entry.logprob) if entry else -9999.0, bytes=list(text.encode()),
            top_logprobs=[ChatLogprobEntry(token=(t_text := text_of.name(t, e)), logprob=_finite(e.logprob),
                                           bytes=list(t_text.encode()))
                          for t, e in _top(position, num)]))
    return content


def prompt_logprobs(token_ids: list[int], positions: list[dict[int, Logprob] | None] | None, num: int,
                    text_of: TokenTexts) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's `prompt_logprobs`: per prompt token, None (the first) or {token id: logprob, rank,
    decoded_token} for the prompt's token and the `num` likeliest."""
    positions = positions or [None] * len(token_ids)
    out: list[dict[str, PromptLogprob] | None] = []
    for token_id, position in zip(token_ids, positions):
        if not position:
            out.append(None)
            continue
        chosen = dict(_top(position, num))
        if token_id in position:
            chosen[token_id] = position[token_id]
        out.append({str(t): PromptLogprob(logprob=_finite(e.logprob), rank=e.rank, decoded_token=text_of.name(t, e))
                    for t, e in chosen.items()})
    return out
