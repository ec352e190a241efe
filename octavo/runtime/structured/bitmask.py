"""The token bitmask applied to logits on the device.

A bitmask row is int32 words, bit j of word w set when token 32 * w + j may come next (xgrammar's
layout). Only the constrained rows of a step's batch are masked; the others stay untouched. One
torch expression: works on CPU and CUDA alike, with no kernel to build.
"""

from __future__ import annotations

import torch

_BITS = 32


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, words] int32 -> [rows, vocab_size] bool: which tokens each row allows."""
    shifts = torch.arange(_BITS, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> None:
    """Set to -inf, in place, the logits the bitmask forbids: `bitmask[i]` masks `logits[rows[i]]`.
    `bitmask` and `rows` live on the logits' device; tokens past the bitmask's width stay allowed
    (the compiler sizes it to the model's vocabulary, so there are none)."""
    if rows.numel() == 0:
        return
    vocab = logits.shape[-1]
    width = min(vocab, bitmask.shape[-1] * _BITS)
    allowed = allowed_tokens(bitmask, width)
    selected = logits.index_select(0, rows)
    selected[:, :width].masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, rows, selected)


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """The same, one token at a time in Python: the tests' reference."""
    for i, row in enumerate(rows):
        words = bitmask[i].tolist()
        for token in range(logits.shape[-1]):
            word, bit = divmod(token, _BITS)
            if word < len(words) and not (words[word] >> bit) & 1:
                logits[row, token] = float("-inf")
