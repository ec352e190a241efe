"""Incremental detokenization yields the same text as decoding all tokens at once, for
multi-byte characters split across byte-level BPE tokens."""

from __future__ import annotations

import random

from octavo.runtime.tokenizer import IncrementalDetokenizer
from tiny_models import build_tokenizer


def test_incremental_text_equals_full_decode():
    tokenizer = build_tokenizer()
    samples = ["Ünïcödé: naïve café, 東京 🚀🔥 ½", "Привет мир — “quotes”", "crème brûlée and 東京"]
    rng = random.Random(0)
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        prompt = tokenizer.encode("Prompt:", add_special_tokens=False)
        detok = IncrementalDetokenizer(tokenizer, prompt)
        pieces = []
        i = 0
        while i < len(ids):
            step = rng.randint(1, 3)
            pieces.append(detok.add(ids[i : i + step]))
            i += step
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)
