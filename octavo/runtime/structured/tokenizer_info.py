"""The model's vocabulary as xgrammar sees it.

xgrammar reads a Hugging Face tokenizer's decoder to tell byte-level BPE, byte-fallback and raw
vocabularies apart; a tokenizer without a decoder (the benchmark's synthetic word-level one) is
read as raw strings, which is what its tokens are. The vocabulary size is the model's (its logits'
width), which may exceed the tokenizer's: the extra ids are never allowed.
"""

from __future__ import annotations

from typing import Any


def build_tokenizer_info(tokenizer: Any, vocab_size: int, stop_token_ids: set[int]):
    import xgrammar as xgr

    size = max(vocab_size, len(tokenizer))
    return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=size, stop_token_ids=sorted(stop_token_ids) or None)
