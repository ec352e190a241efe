"""Seeded requests: token-id prompts (no tokenizer needed, so dummy weights work) or windows of a
text, and output lengths, fixed or uniform over a range. The same seed gives the same requests to
octavo, the HF baseline and the vLLM peer."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int  # exact: requests run with ignore_eos (octavo) or min_new_tokens (HF)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def parse_range(text: str) -> tuple[int, int]:
    """"256:768" -> (256, 768), inclusive; "128" -> (128, 128)."""
    parts = str(text).split(":")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        low = high = 0
    if low < 1 or high < low:
        raise ValueError(f"a length range is LOW:HIGH with 1 <= LOW <= HIGH (e.g. 256:768), got {text!r}")
    return low, high


def _draw(num_requests: int, input_range: tuple[int, int], output_range: tuple[int, int], seed: int,
          prompt: Callable[[random.Random, int], list[int]]) -> list[BenchRequest]:
    """Per request, from one seeded generator: its prompt length, its output length (uniform over the
    inclusive ranges), then its prompt's token ids, prompt(rng, prompt length)."""
    if num_requests < 1:
        raise ValueError(f"the number of requests must be >= 1, got {num_requests}")
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        prompt_len, output_len = rng.randint(*input_range), rng.randint(*output_range)
        requests.append(BenchRequest(prompt(rng, prompt_len), output_len))
    return requests


def random_requests(num_requests: int, input_range: tuple[int, int], output_range: tuple[int, int],
                    vocab_size: int, seed: int) -> list[BenchRequest]:
    """Drawn step for step as the vLLM peer's `make_requests()` (../shared/peers/vllm-0.24.0/bench_vllm.py),
    so both engines get the same requests: token ids in the peer's [100, 32000), cut to the vocabulary
    (the whole of it when it has 100 ids or fewer)."""
    high = min(32000, vocab_size)
    low = 100 if high > 100 else 0
    return _draw(num_requests, input_range, output_range, seed,
                 lambda rng, length: [rng.randrange(low, high) for _ in range(length)])


def fixed_requests(num_requests: int, input_len: int, output_len: int, vocab_size: int,
                   seed: int) -> list[BenchRequest]:
    return random_requests(num_requests, (input_len, input_len), (output_len, output_len), vocab_size, seed)


def text_requests(corpus_ids: list[int], num_requests: int, input_range: tuple[int, int],
                  output_range: tuple[int, int], seed: int, bos_token_id: int | None = None) -> list[BenchRequest]:
    """Prompts cut out of a tokenized text at seeded offsets, each after BOS when given (a draft's
    acceptance depends on the text it continues, so a trained pair is measured on real text)."""
    bos = [] if bos_token_id is None else [bos_token_id]

    def window(rng: random.Random, prompt_len: int) -> list[int]:
        body = prompt_len - len(bos)
        if body > len(corpus_ids):
            raise ValueError(f"the prompt text has {len(corpus_ids)} tokens, fewer than a {prompt_len}-token prompt")
        start = rng.randrange(len(corpus_ids) - body + 1)
        return bos + list(corpus_ids[start:start + body])

    return _draw(num_requests, input_range, output_range, seed, window)


def batches(items: list, size: int) -> list[list]:
    """Consecutive chunks of `size` in the given order (a user's static batches)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
