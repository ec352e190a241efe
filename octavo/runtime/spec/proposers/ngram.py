"""Prompt lookup (n-gram) proposals: no draft model at all.

Where the longest suffix of a request's tokens (prompt_lookup_max down to prompt_lookup_min
tokens) also occurs earlier, the text is taken to repeat, and what followed its latest earlier
occurrence is proposed: cheap (a vectorised search of the context), and strong where outputs copy
their input (editing, extraction, code, summaries with quotes). A proposal is a point mass, so a
sampled request accepts a guess x with probability p(x), else draws from p with x removed: exact.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from octavo.runtime.config import SpeculativeConfig
from octavo.runtime.request import Request
from octavo.runtime.spec.proposer import Proposer


def lookup(tokens: np.ndarray, k: int, n_min: int, n_max: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix."""
    length = len(tokens)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        windows = sliding_window_view(tokens[: length - 1], n)  # every earlier n-gram, not the suffix itself
        hits = np.flatnonzero((windows == tokens[length - n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return tokens[start : start + k].tolist()
    return []


class NgramProposer(Proposer):
    def __init__(self, config: SpeculativeConfig, **_) -> None:
        self.n_min, self.n_max = config.prompt_lookup_min, config.prompt_lookup_max

    def propose(self, plan: list[tuple[Request, int]]) -> None:
        for request, k in plan:
            request.spec_token_ids = lookup(np.asarray(request.all_token_ids), k, self.n_min, self.n_max)


PROPOSER = NgramProposer
