"""Engine log-probabilities (one {token id: Logprob} dict per position) in OpenAI's two formats:
the legacy completions one (parallel lists) and chat's (one entry per token with its top
alternatives)."""

from __future__ import annotations

from collections.abc import Callable

from octavo.runtime.outputs import Logprob
from octavo.runtime.server.protocol import ChatLogprobEntry, ChatTokenLogprob, CompletionLogprobs

Decode = Callable[[int], str]


def _token_text(token_id: int, entry: Logprob | None, decode: Decode) -> str:
    if entry is not None and entry.decoded_token is not None:
        return entry.decoded_token
    return decode(token_id)


def _top(position: dict[int, Logprob], num: int) -> list[tuple[int, Logprob]]:
    """The `num` most likely tokens at a position (the chosen one is in the dict even when it is
    not among them; sorting by log-probability puts it last then)."""
    return sorted(position.items(), key=lambda item: item[1].logprob, reverse=True)[:num]


def _finite(value: float) -> float:
    # JSON has no -inf: a token that could not be drawn gets the most negative float instead.
    return value if value > -3.0e38 else -9999.0


def append_completion_logprobs(target: CompletionLogprobs, token_ids: list[int],
                               positions: list[dict[int, Logprob] | None], num: int, decode: Decode,
                               text_offset: int) -> int:
    """Extend `target` with the tokens' entries; returns the text offset after them."""
    for token_id, position in zip(token_ids, positions):
        entry = position.get(token_id) if position else None
        text = _token_text(token_id, entry, decode)
        target.tokens.append(text)
        target.text_offset.append(text_offset)
        text_offset += len(text)
        if entry is None:  # the prompt's first token has no log-probability
            target.token_logprobs.append(None)
            target.top_logprobs.append(None)
            continue
        target.token_logprobs.append(_finite(entry.logprob))
        top: dict[str, float] = {}
        for alt_id, alt in _top(position, num):  # best first: on equal texts the likelier token wins
            top.setdefault(_token_text(alt_id, alt, decode), _finite(alt.logprob))
        top.setdefault(text, _finite(entry.logprob))
        target.top_logprobs.append(top)
    return text_offset


def chat_logprobs(token_ids: list[int], positions: list[dict[int, Logprob]], num: int,
                  decode: Decode) -> list[ChatTokenLogprob]:
    content: list[ChatTokenLogprob] = []
    for token_id, position in zip(token_ids, positions):
        entry = position.get(token_id)
        text = _token_text(token_id, entry, decode)
        content.append(ChatTokenLogprob(
            token=text, logprob=_finite(entry.logprob) if entry else -9999.0, bytes=list(text.encode()),
            top_logprobs=[ChatLogprobEntry(token=(t_text := _token_text(t, e, decode)), logprob=_finite(e.logprob),
                                           bytes=list(t_text.encode()))
                          for t, e in _top(position, num)]))
    return content
