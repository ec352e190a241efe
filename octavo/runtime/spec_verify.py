"""Verification of speculative drafts: which proposals the target accepts, and the token it adds.

Pure tensor functions over a batch, shared by the engine and the sampling tests. Sampled rows go
through exact rejection sampling, so the emitted tokens are distributed as the target's own;
greedy rows accept while the draft matches the target's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VerifyResult:
    output_tokens: torch.Tensor  # [B, K + 1] int64: accepted drafts, then the target's token; -1 after
    num_accepted: torch.Tensor  # [B] int64: accepted drafts per row (the row emits num_accepted + 1)


def _accepted_prefix(accept: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True per row."""
    return accept.to(torch.int64).cumprod(dim=1).sum(dim=1)


def _assemble(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    batch, k = draft_tokens.shape
    positions = torch.arange(k, device=draft_tokens.device)
    out = torch.full((batch, k + 1), -1, dtype=torch.int64, device=draft_tokens.device)
    out[:, :k] = torch.where(positions[None, :] < num_accepted[:, None], draft_tokens.long(), -1)
    out[torch.arange(batch, device=out.device), num_accepted] = final.long()
    return out


def _num_draft(draft_tokens: torch.Tensor, num_draft: torch.Tensor | None) -> torch.Tensor:
    if num_draft is None:
        return torch.full((draft_tokens.shape[0],), draft_tokens.shape[1], dtype=torch.int64,
                          device=draft_tokens.device)
    return num_draft.to(device=draft_tokens.device, dtype=torch.int64)


def rejection_sample(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor,
                     uniform_noise: torch.Tensor, recovery_noise: torch.Tensor,
                     num_draft: torch.Tensor | None = None) -> VerifyResult:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023), batched.

    target_probs [B, K+1, V]: the target's distribution at each draft position and one past.
    draft_probs [B, K, V]: the distribution each draft token was drawn from.
    draft_tokens [B, K]; num_draft [B]: how many of a row's K drafts are real (the rest padding).
    uniform_noise [B, K] ~ U[0, 1); recovery_noise [B, V] ~ Exp(1).

    Draft token x at position i is accepted with probability min(1, p(x) / q(x)); at the first
    rejection the row ends with a token drawn from norm(max(0, p - q)), and if every draft is
    accepted with a bonus token drawn from p at position K. Each emitted token is then distributed
    exactly as p given the tokens before it. The final draw is an exponential race,
    argmax(w / E) with E ~ Exp(1), which picks index i with probability w_i / sum(w): no
    normalisation needed.
    """
    batch, k = draft_tokens.shape
    num_draft = _num_draft(draft_tokens, num_draft)
    rows = torch.arange(batch, device=draft_tokens.device)
    if k == 0:
        final = (target_probs[:, 0] / recovery_noise).argmax(dim=-1)
        return VerifyResult(_assemble(draft_tokens, torch.zeros_like(num_draft), final), torch.zeros_like(num_draft))
    valid = torch.arange(k, device=draft_tokens.device)[None, :] < num_draft[:, None]
    index = draft_tokens.long().clamp(min=0)[..., None]
    p_draft = target_probs[:, :k].gather(-1, index).squeeze(-1)
    q_draft = draft_probs.gather(-1, index).squeeze(-1)
    # u < p/q written without the division: q > 0 for any token the draft could have drawn.
    accept = (uniform_noise * q_draft < p_draft) & valid
    num_accepted = _accepted_prefix(accept)
    p_final = target_probs[rows, num_accepted]
    rejected = (num_accepted < num_draft).to(draft_probs.dtype)
    q_final = draft_probs[rows, num_accepted.clamp(max=k - 1)] * rejected[:, None]
    residual = (p_final - q_final).clamp_min(0.0)
    # In exact arithmetic a rejection implies residual mass > 0; rounding can leave none.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, p_final)
    final = (residual / recovery_noise).argmax(dim=-1)
    return VerifyResult(_assemble(draft_tokens, num_accepted, final), num_accepted)


def greedy_verify(target_argmax: torch.Tensor, draft_tokens: torch.Tensor,
                  num_draft: torch.Tensor | None = None) -> VerifyResult:
    """Greedy requests: accept drafts while they equal the target's argmax, then emit the target's
    argmax at the first disagreement (or one past the last draft). The output is the target's
    greedy sequence token for token."""
    batch, k = draft_tokens.shape
    num_draft = _num_draft(draft_tokens, num_draft)
    valid = torch.arange(k, device=draft_tokens.device)[None, :] < num_draft[:, None]
    num_accepted = _accepted_prefix((target_argmax[:, :k] == draft_tokens) & valid)
    final = target_argmax[torch.arange(batch, device=draft_tokens.device), num_accepted]
    return VerifyResult(_assemble(draft_tokens, num_accepted, final), num_accepted)
