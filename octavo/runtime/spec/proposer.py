"""What a proposer is: the one interface the engine drafts through.

A proposer guesses the next tokens of running requests; the target verifies every guess in its
next forward (spec/verify.py), so a wrong guess costs speed, never correctness.
"""

from __future__ import annotations

import torch

from octavo.runtime.request import Request


class Proposer:
    # The adaptive-k controller's prior for what one draft token costs, relative to a target
    # forward (a draft model: its streamed weights over the target's; a lookup: nothing).
    draft_cost_ratio: float = 0.0

    def kv_bytes_per_block(self) -> int:
        """KV-cache bytes the proposer needs per target block (sized together with the target's)."""
        return 0

    def initialize(self, num_blocks: int) -> None:
        """Called once the target's KV cache has `num_blocks` blocks."""

    def propose(self, plan: list[tuple[Request, int]]) -> None:
        """Before scheduling: fill each `request.spec_token_ids` with at most k guesses (or none)."""
        raise NotImplementedError

    def draft_probs(self, request: Request) -> torch.Tensor | None:
        """The distributions the guesses were drawn from; None for point masses (greedy, n-gram)."""
        return None

    def commit(self, request: Request) -> None:
        """After a step: the request's tokens are final; what is held past a rejected guess is stale."""

    def free(self, request: Request) -> None:
        """The request finished, was aborted or preempted."""

    def shutdown(self) -> None:
        """Release device resources (CUDA graphs) before the engine's workers leave."""

    def check_no_leaks(self) -> None:
        """Tests: raise if state is left for requests that are gone."""
