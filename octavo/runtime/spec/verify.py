"""Verification of speculative drafts: which proposals the target accepts, and the token it adds.

`rejection_sample` and `greedy_verify` are pure tensor functions over a batch, shared by the engine
and the sampling tests; `verify_step` applies them to one engine step's logits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from octavo.runtime.host_staging import to_device
from octavo.runtime.model_runner import RunnerOutput
from octavo.runtime.request import Request
from octavo.runtime.sampler import Lookahead, SampledRow, Sampler, needs_penalties
from octavo.runtime.scheduler import ScheduledRequest


@dataclass
class VerifyResult:
    output_tokens: torch.Tensor  # [B, K + 1] int64: accepted drafts, then the target's token; -1 after
    num_accepted: torch.Tensor  # [B] int64: accepted drafts per row (the row emits num_accepted + 1)


def _accepted_prefix(accept: torch.Tensor, num_draft: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True per row, at most its real drafts (padding follows them)."""
    return accept.to(torch.int64).cumprod(dim=1).sum(dim=1).minimum(num_draft)


def _assemble(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    batch, k = draft_tokens.shape
    positions = torch.arange(k, device=draft_tokens.device)
    out = torch.full((batch, k + 1), -1, dtype=torch.int64, device=draft_tokens.device)
    out[:, :k] = torch.where(positions[None, :] < num_accepted[:, None], draft_tokens.long(), -1)
    out[torch.arange(batch, device=out.device), num_accepted] = final.long()
    return out


def rejection_sample(target_probs: torch.Tensor, draft_probs: torch.Tensor | None, draft_tokens: torch.Tensor,
                     uniform_noise: torch.Tensor, recovery_noise: torch.Tensor,
                     num_draft: torch.Tensor | None = None) -> VerifyResult:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023), batched.

    target_probs [B, K+1, V]: the target's distribution at each draft position and one past.
    draft_probs [B, K, V]: the distribution each draft token was drawn from; None where every
    draft is a point mass (an n-gram lookup): q(x) = 1 at the drafted token.
    draft_tokens [B, K]; num_draft [B]: how many of a row's K drafts are real (the rest padding).
    uniform_noise [B, K] ~ U[0, 1); recovery_noise [B, V] ~ Exp(1).

    Draft token x at position i is accepted with probability min(1, p(x) / q(x)); at the first
    rejection the row ends with a token drawn from norm(max(0, p - q)), and if every draft is
    accepted with a bonus token drawn from p at position K. Each emitted token is then distributed
    exactly as p given the tokens before it. The final draw is an exponential race, argmax(w / E)
    with E ~ Exp(1) (Sampler.choose's), so w needs no normalisation."""
    batch, k = draft_tokens.shape
    rows = torch.arange(batch, device=draft_tokens.device)
    if num_draft is None:
        num_draft = torch.full((batch,), k, dtype=torch.int64, device=draft_tokens.device)
    if k == 0:
        final = (target_probs[:, 0] / recovery_noise).argmax(dim=-1)
        return VerifyResult(_assemble(draft_tokens, torch.zeros_like(num_draft), final), torch.zeros_like(num_draft))
    index = draft_tokens.long().clamp(min=0)[..., None]
    p_draft = target_probs[:, :k].gather(-1, index).squeeze(-1)
    q_draft = draft_probs.gather(-1, index).squeeze(-1) if draft_probs is not None else torch.ones_like(p_draft)
    # u < p/q written without the division: q > 0 for any token the draft could have drawn.
    num_accepted = _accepted_prefix(uniform_noise * q_draft < p_draft, num_draft)
    p_final = target_probs[rows, num_accepted]
    rejected = (num_accepted < num_draft).to(target_probs.dtype)
    at = num_accepted.clamp(max=k - 1)
    if draft_probs is not None:
        q_final = draft_probs[rows, at] * rejected[:, None]
    else:
        q_final = torch.zeros_like(p_final)
        q_final[rows, index[rows, at, 0]] = rejected
    residual = (p_final - q_final).clamp_min(0.0)
    # In exact arithmetic a rejection implies residual mass > 0; rounding can leave none.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, p_final)
    final = (residual / recovery_noise).argmax(dim=-1)
    return VerifyResult(_assemble(draft_tokens, num_accepted, final), num_accepted)


def greedy_verify(target_argmax: torch.Tensor, draft_tokens: torch.Tensor, num_draft: torch.Tensor) -> VerifyResult:
    """Greedy requests: accept drafts while they equal the target's argmax, then add its argmax at
    the first disagreement (or past the last draft): the target's greedy output, token for token."""
    batch, k = draft_tokens.shape
    num_accepted = _accepted_prefix(target_argmax[:, :k] == draft_tokens, num_draft)
    final = target_argmax[torch.arange(batch, device=draft_tokens.device), num_accepted]
    return VerifyResult(_assemble(draft_tokens, num_accepted, final), num_accepted)


def verify_step(output: RunnerOutput, items: list[ScheduledRequest], sampler: Sampler,
                draft_probs: Callable[[Request], torch.Tensor | None]) -> list[tuple[list[SampledRow], int]]:
    """Each speculated request's emitted tokens (accepted drafts, then one of the target's) with
    their raw log-probabilities, and how many drafts it accepted. `output` holds the target's
    logits at a request's k drafted positions and one past (output.inputs.sample_rows)."""
    device = output.logits.device
    requests = [item.request for item in items]
    counts = [item.num_spec_tokens for item in items]
    k = max(counts)
    row_index = [r for item in items for r in output.inputs.sample_rows[item.request.request_id]]
    raw = output.logits.index_select(0, to_device(row_index, torch.long, device))
    # Penalties and min_tokens at draft position i see the drafts before it.
    views = [Lookahead(request, request.spec_token_ids[:i]) for request, n in zip(requests, counts)
             for i in range(n + 1)]
    plain = all(v.sampling_params.greedy and not needs_penalties(v) for v in views)
    processed = raw if plain else sampler.processed_logits(raw, views)
    starts = [0, *itertools.accumulate(n + 1 for n in counts)]
    draft_tokens = to_device([r.spec_token_ids[:n] + [-1] * (k - n) for r, n in zip(requests, counts)],
                             torch.int64, device)
    num_draft = to_device(counts, torch.long, device)
    num_accepted = [0] * len(items)
    emitted: list[list[int]] = [[] for _ in items]

    def positions(rows: list[int]) -> torch.Tensor:
        """Each row's k + 1 positions in `processed`: past its own drafts it repeats its last."""
        return to_device([[starts[b] + min(i, counts[b]) for i in range(k + 1)] for b in rows], torch.long, device)

    def collect(verdict: VerifyResult, rows: list[int]) -> None:
        accepted, tokens = verdict.num_accepted.tolist(), verdict.output_tokens.tolist()
        for i, b in enumerate(rows):
            num_accepted[b], emitted[b] = accepted[i], tokens[i][: accepted[i] + 1]

    greedy_rows = [b for b, r in enumerate(requests) if r.sampling_params.greedy]
    if greedy_rows:
        index = to_device(greedy_rows, torch.long, device)
        target_argmax = processed.argmax(dim=-1)[positions(greedy_rows)]
        collect(greedy_verify(target_argmax, draft_tokens[index], num_draft[index]), greedy_rows)
    sampled_rows = [b for b, r in enumerate(requests) if not r.sampling_params.greedy]
    if sampled_rows:
        sampled, vocab = [requests[b] for b in sampled_rows], processed.shape[-1]
        target_probs = processed.softmax(dim=-1)[positions(sampled_rows)]
        drafts = [draft_probs(request) for request in sampled]
        q = None
        if any(d is not None for d in drafts):  # else every draft is a point mass (q = 1 at it)
            q = torch.zeros((len(sampled_rows), k, vocab), device=device)
            for i, (b, d) in enumerate(zip(sampled_rows, drafts)):
                n = counts[b]
                q[i, :n] = d[:n] if d is not None else torch.nn.functional.one_hot(draft_tokens[b, :n], vocab)
        uniform = torch.rand((len(sampled), k), generator=sampler.generator, device=device)
        for row, request in enumerate(sampled):
            if request.generator is not None:
                uniform[row].uniform_(0.0, 1.0, generator=request.generator)
        recovery = sampler.random_noise((len(sampled), vocab), sampled)
        index = to_device(sampled_rows, torch.long, device)
        collect(rejection_sample(target_probs, q, draft_tokens[index], uniform, recovery, num_draft[index]),
                sampled_rows)

    # Log-probabilities are the target's raw ones at each emitted position, as without drafts.
    if all(r.sampling_params.logprobs is None for r in requests):
        described = [SampledRow(token_id=t) for tokens in emitted for t in tokens]
    else:
        owners = [requests[b] for b, tokens in enumerate(emitted) for _ in tokens]
        rows = [starts[b] + i for b, tokens in enumerate(emitted) for i in range(len(tokens))]
        chosen = torch.tensor([t for tokens in emitted for t in tokens], device=device)
        described = Sampler.describe(raw.index_select(0, torch.tensor(rows, device=device)), chosen, owners)
    in_order = iter(described)
    return [([next(in_order) for _ in tokens], n) for tokens, n in zip(emitted, num_accepted)]
