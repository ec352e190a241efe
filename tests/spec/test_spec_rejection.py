"""The verification functions alone: rejection sampling reproduces the target's distribution
(chi-square over many samples), and deliberately wrong acceptance rules fail the same test."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from octavo.runtime.spec.verify import VerifyResult, greedy_verify, rejection_sample

NUM_SAMPLES = 40_000
ALPHA = 1e-3  # a correct sampler passes at this level; the broken ones fail by far more


def distributions(generator: torch.Generator, vocab: int = 8, k: int = 2):
    """Fixed target p (k + 1 positions) and draft q (k positions) that differ markedly."""
    p = torch.softmax(torch.randn(k + 1, vocab, generator=generator) * 1.5, dim=-1)
    q = torch.softmax(torch.randn(k, vocab, generator=generator) * 1.5, dim=-1)
    return p, q


def run(sampler, p: torch.Tensor, q: torch.Tensor, seed: int = 1) -> VerifyResult:
    """NUM_SAMPLES independent verifications: drafts drawn from q, noise from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    k, vocab = q.shape
    draft_tokens = torch.stack([torch.multinomial(q[i], NUM_SAMPLES, replacement=True, generator=generator)
                                for i in range(k)], dim=1)
    uniform = torch.rand(NUM_SAMPLES, k, generator=generator)
    recovery = torch.empty(NUM_SAMPLES, vocab).exponential_(generator=generator)
    target = p.expand(NUM_SAMPLES, -1, -1)
    draft = q.expand(NUM_SAMPLES, -1, -1)
    return sampler(target, draft, draft_tokens, uniform, recovery)


def p_value(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * len(tokens)
    keep = expected >= 5
    observed, expected = counts[keep], expected[keep]
    expected *= observed.sum() / expected.sum()
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


def position_p_values(result: VerifyResult, p: torch.Tensor) -> list[float]:
    """Token i of each row is distributed as p[i] (in this synthetic setting p[i] does not depend
    on the tokens before it), among rows that reach position i."""
    values = []
    for i in range(p.shape[0]):
        reached = result.num_accepted >= i
        values.append(p_value(result.output_tokens[reached, i], p[i]))
    return values


# ---- deliberately broken samplers: each is a plausible bug ----------------------------------
def variant(accept_rule, residual_rule):
    """A plain re-statement of speculative sampling with pluggable rules (the harness for the
    broken variants; with the right rules it must pass like the real function)."""

    def sample(target, draft, draft_tokens, uniform, recovery):
        batch, k = draft_tokens.shape
        rows = torch.arange(batch)
        p_x = target[:, :k].gather(-1, draft_tokens[..., None]).squeeze(-1)
        q_x = draft.gather(-1, draft_tokens[..., None]).squeeze(-1)
        accept = accept_rule(uniform, p_x, q_x)
        num_accepted = accept.long().cumprod(dim=1).sum(dim=1)
        p_final = target[rows, num_accepted]
        q_final = draft[rows, num_accepted.clamp(max=k - 1)] * (num_accepted < k)[:, None]
        weights = torch.where((num_accepted < k)[:, None], residual_rule(p_final, q_final), p_final)
        final = (weights / recovery).argmax(dim=-1)
        out = torch.where(torch.arange(k)[None] < num_accepted[:, None], draft_tokens, -1)
        out = torch.cat([out, torch.full((batch, 1), -1)], dim=1)
        out[rows, num_accepted] = final
        return VerifyResult(out, num_accepted)

    return sample


def right_accept(u, p_x, q_x):
    return u < p_x / q_x


def right_residual(p, q):
    return (p - q).clamp_min(0)


BROKEN = {
    "always-accept": variant(lambda u, p_x, q_x: torch.ones_like(u, dtype=torch.bool), right_residual),
    "inverted-ratio": variant(lambda u, p_x, q_x: u < q_x / p_x, right_residual),
    "resample-from-target": variant(right_accept, lambda p, q: p),
    "residual-without-clamp": variant(right_accept, lambda p, q: (p - q).abs()),
}


def test_rejection_sampling_reproduces_target_distribution():
    p, q = distributions(torch.Generator().manual_seed(0))
    result = run(rejection_sample, p, q)
    values = position_p_values(result, p)
    assert min(values) > ALPHA, values
    # The per-position acceptance probability is sum(min(p, q)).
    first_accept = (result.num_accepted >= 1).double().mean().item()
    assert abs(first_accept - torch.minimum(p[0], q[0]).sum().item()) < 0.01


def test_harness_with_the_right_rules_passes():
    p, q = distributions(torch.Generator().manual_seed(0))
    assert min(position_p_values(run(variant(right_accept, right_residual), p, q), p)) > ALPHA


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_wrong_acceptance_rules_are_detected(name):
    p, q = distributions(torch.Generator().manual_seed(0))
    values = position_p_values(run(BROKEN[name], p, q), p)
    assert min(values) < 1e-9, (name, values)


def test_identical_distributions_accept_everything_and_add_a_bonus():
    p = torch.softmax(torch.randn(3, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    result = run(rejection_sample, p, p[:2].clone())
    assert bool((result.num_accepted == 2).all())
    assert p_value(result.output_tokens[:, 2], p[2]) > ALPHA


def test_padding_rows_and_zero_drafts():
    """Rows with fewer real drafts than K: padding is never accepted and the row ends right after
    its real drafts."""
    vocab, k = 5, 3
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), vocab).float()
    target = one_hot[None].expand(3, -1, -1).clone()  # the target is certain: 1, 2, 3, then 4
    draft = one_hot[None, :k].expand(3, -1, -1).clone()
    tokens = torch.tensor([[1, 2, 3], [1, 2, -1], [1, -1, -1]])
    result = rejection_sample(target, draft, tokens, torch.rand(3, k), torch.ones(3, vocab),
                              num_draft=torch.tensor([3, 2, 1]))
    assert result.num_accepted.tolist() == [3, 2, 1]
    assert result.output_tokens.tolist() == [[1, 2, 3, 4], [1, 2, 3, -1], [1, 2, -1, -1]]
    empty = rejection_sample(target[:, :1], draft[:, :0], tokens[:, :0], torch.rand(3, 0), torch.ones(3, vocab))
    assert empty.output_tokens.tolist() == [[1], [1], [1]]


def test_greedy_verify_accepts_while_argmax_agrees():
    target_argmax = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    drafts = torch.tensor([[5, 6, 7], [5, 9, 7], [4, 6, 7]])
    result = greedy_verify(target_argmax, drafts, num_draft=torch.tensor([3, 3, 2]))
    assert result.num_accepted.tolist() == [3, 1, 0]
    assert result.output_tokens.tolist() == [[5, 6, 7, 8], [5, 6, -1, -1], [5, -1, -1, -1]]


def test_point_mass_drafts_need_no_distribution_and_stay_exact():
    """An n-gram guess is a point mass: draft_probs=None means q(x) = 1 at the drafted token. The
    verdicts equal those with explicit one-hot q, and the emitted tokens follow p."""
    p, _ = distributions(torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(2)
    k, vocab = 2, p.shape[1]
    guess = torch.tensor([int(p[0].argmax()), 3])
    draft_tokens = guess.expand(NUM_SAMPLES, -1)
    uniform = torch.rand(NUM_SAMPLES, k, generator=generator)
    recovery = torch.empty(NUM_SAMPLES, vocab).exponential_(generator=generator)
    target = p.expand(NUM_SAMPLES, -1, -1)
    implicit = rejection_sample(target, None, draft_tokens, uniform, recovery)
    one_hot = torch.nn.functional.one_hot(draft_tokens, vocab).float()
    explicit = rejection_sample(target, one_hot, draft_tokens, uniform, recovery)
    assert torch.equal(implicit.output_tokens, explicit.output_tokens)
    assert p_value(implicit.output_tokens[:, 0], p[0]) > ALPHA
    assert abs((implicit.num_accepted >= 1).double().mean().item() - p[0, guess[0]].item()) < 0.01
