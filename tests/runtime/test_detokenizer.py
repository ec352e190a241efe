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


class SlowOnly:
    """The tokenizer without its Rust backend: the detokenizer's window path."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def test_stream_path_equals_the_full_decode():
    """Random ids (special tokens, byte pieces that split characters among them), one to three at a
    time after a prompt: the text so far is the full decode's continuation of the prompt, short only
    of a trailing incomplete character. A prompt that decodes to broken UTF-8 takes the window path."""
    tokenizer = build_tokenizer()
    rng = random.Random(1)
    vocab = len(tokenizer)
    streamed = 0
    for trial in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        prompt = [rng.randrange(vocab) for _ in range(8)]
        for skip in (True, False):
            detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
            context_text = tokenizer.decode(prompt[-6:], skip_special_tokens=skip)
            assert (detok.backend is not None) == ("\ufffd" not in context_text)
            if detok.backend is None:
                continue
            streamed += 1
            i, text = 0, ""
            while i < len(ids):
                step = rng.randint(1, 3)
                text += detok.add(ids[i : i + step])
                i += step
            full = tokenizer.decode(prompt[-6:] + ids, skip_special_tokens=skip)
            assert full.startswith(context_text)
            want = full[len(context_text):]
            assert want.startswith(text) and (text == want or want.endswith("\ufffd")), (trial, skip, text, want)
    assert streamed > 20


def test_window_path_on_text():
    tokenizer = build_tokenizer()
    ids = tokenizer.encode("crème brûlée and 東京 🚀", add_special_tokens=False)
    detok = IncrementalDetokenizer(SlowOnly(tokenizer), tokenizer.encode("Prompt:", add_special_tokens=False))
    assert detok.backend is None
    assert "".join(detok.add([t]) for t in ids) == "crème brûlée and 東京 🚀"
