"""One sequence's grammar state: which tokens may come next, advanced on each accepted token.

n > 1 samples each have their own. Preemption recomputes KV only: the tokens a matcher accepted
stay the request's tokens, so its state stays right. A grammar that has finished allows only the
stop tokens (the engine's end-of-sequence ids and the request's stop_token_ids), so it ends with
one of them.
"""

from __future__ import annotations

import torch


class RequestGrammar:
    def __init__(self, compiled, stop_token_ids: set[int]) -> None:
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=sorted(stop_token_ids) or None)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (a CPU int32 tensor)."""
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the grammar does not allow it."""
        return self.matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token accepted: nothing may follow."""
        return self.matcher.is_terminated()


class BitmaskFiller:
    """Fills a step's bitmask rows for many sequences at once (xgrammar's batch fill spreads the
    rows over threads: at 64 constrained sequences a step, one at a time would add up)."""

    def __init__(self) -> None:
        import xgrammar as xgr

        self._batch = xgr.BatchGrammarMatcher()

    def fill(self, grammars: list[RequestGrammar], bitmask: torch.Tensor) -> None:
        """bitmask[i] <- grammars[i]'s allowed next tokens."""
        if len(grammars) == 1:
            grammars[0].fill_bitmask(bitmask, 0)
        else:
            self._batch.batch_fill_next_token_bitmask([g.matcher for g in grammars], bitmask)
