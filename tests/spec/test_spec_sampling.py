"""Sampling through the engine with a draft: the output distribution is the target's (chi-square
against exact marginals), a wrong acceptance rule would be caught, seeds reproduce, and filters
hold."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import octavo.runtime.spec.verify as verify
from spec_helpers import make_llm, spec_totals, token_ids
from octavo import SamplingParams

PROMPT = [1, 5, 9, 13]
NUM_SAMPLES = 600


def exact_marginals(model_dir, prompt: list[int] = PROMPT) -> list[torch.Tensor]:
    """The target's marginal distribution of output tokens 1, 2 and 3 after the prompt, enumerating
    every prefix (24 and 24^2 of them) with transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocab = model.config.vocab_size

    def next_probs(prefixes: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor(prefixes)).logits[:, -1].double().softmax(dim=-1)

    p1 = next_probs([prompt])[0]
    p2 = next_probs([prompt + [a] for a in range(vocab)])
    p3 = next_probs([prompt + [a, b] for a in range(vocab) for b in range(vocab)]).view(vocab, vocab, vocab)
    joint12 = p1[:, None] * p2
    return [p1, p1 @ p2, torch.einsum("ab,abc->c", joint12, p3)]


def sample_tokens(llm, prompt: list[int] = PROMPT) -> torch.Tensor:
    # Four tokens, so the first verification (k = 2) covers output tokens 2 and 3 (and a bonus).
    params = SamplingParams(temperature=1.0, max_tokens=4, ignore_eos=True, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": prompt}] * NUM_SAMPLES, params, use_tqdm=False)
    return torch.tensor(token_ids(outputs))


def p_values(tokens: torch.Tensor, marginals: list[torch.Tensor]) -> list[float]:
    values = []
    for position, probs in enumerate(marginals):
        counts = torch.bincount(tokens[:, position], minlength=probs.numel()).double()
        expected = probs * len(tokens)
        keep = expected >= 5
        observed, expected = counts[keep], expected[keep]
        expected *= observed.sum() / expected.sum()
        values.append(float(chisquare(observed.numpy(), expected.numpy()).pvalue))
    return values


@pytest.fixture(scope="module")
def marginals(tiny_vocab_pair):
    return exact_marginals(tiny_vocab_pair[0])


def distribution_llm(pair):
    target, draft = pair
    return make_llm(target, draft, k=2, num_gpu_blocks=NUM_SAMPLES + 64, max_num_seqs=NUM_SAMPLES, seed=7)


def test_engine_samples_from_the_target_distribution(tiny_vocab_pair, marginals):
    llm = distribution_llm(tiny_vocab_pair)
    tokens = sample_tokens(llm)
    drafted, accepted, _ = spec_totals(llm)
    assert drafted >= NUM_SAMPLES and 0.1 < accepted / drafted < 0.9  # the draft really disagrees
    values = p_values(tokens, marginals)
    assert min(values) > 1e-3, values


def test_a_wrong_acceptance_rule_fails_the_same_test(tiny_vocab_pair, marginals, monkeypatch):
    """The test has power: accepting every draft (a plausible bug) is rejected by it."""
    right = verify.rejection_sample

    def accept_everything(target_probs, draft_probs, draft_tokens, uniform_noise, recovery_noise, num_draft=None):
        return right(target_probs, draft_probs, draft_tokens,
                                            torch.zeros_like(uniform_noise), recovery_noise, num_draft)

    monkeypatch.setattr(verify, "rejection_sample", accept_everything)
    tokens = sample_tokens(distribution_llm(tiny_vocab_pair))
    values = p_values(tokens, marginals)
    assert values[0] > 1e-3  # the first token comes from the target's prefill, untouched
    assert min(values[1:]) < 1e-6, values


def test_seeded_requests_reproduce(pair):
    """Same seed, same output: on the same engine again (adaptive k starts a seeded request from
    a fixed prior) and on a fresh one."""
    target, draft = pair
    params = [SamplingParams(temperature=0.9, top_p=0.95, max_tokens=20, seed=s, ignore_eos=True) for s in (1, 2)]
    prompts = ["Machine learning is", "Paged attention"]
    llm = make_llm(target, draft, adaptive=True)
    first = token_ids(llm.generate(prompts, params, use_tqdm=False))
    llm.generate(["Warm up the acceptance estimate with something else"], SamplingParams(max_tokens=16),
                 use_tqdm=False)
    again = token_ids(llm.generate(prompts, params, use_tqdm=False))
    fresh = token_ids(make_llm(target, draft, adaptive=True).generate(prompts, params, use_tqdm=False))
    assert first == again == fresh
    assert first[0] != first[1]
    assert spec_totals(llm)[0] > 0


def test_top_k_holds_under_speculation(tiny_vocab_pair):
    target, draft = tiny_vocab_pair
    llm = make_llm(target, draft, k=3)
    params = SamplingParams(temperature=1.0, top_k=2, max_tokens=12, ignore_eos=True, logprobs=0, seed=3,
                            detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": PROMPT}] * 8, params, use_tqdm=False)
    ranks = [entry[token].rank for o in outputs for token, entry in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
    assert len(ranks) == 8 * 12 and max(ranks) <= 2
    assert spec_totals(llm)[0] > 0


def test_parallel_samples_share_the_prompt(pair):
    """n > 1: siblings share the target's prompt blocks, each has its own draft state and seed."""
    target, draft = pair
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
    llm = make_llm(target, draft)
    first = llm.generate(["Continuous batching admits new requests"], params, use_tqdm=False)[0]
    again = llm.generate(["Continuous batching admits new requests"], params, use_tqdm=False)[0]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) == 3
    assert all(len(c.token_ids) == 12 for c in first.outputs)
    assert spec_totals(llm)[0] > 0


def test_ngram_guesses_keep_the_target_distribution(tiny_vocab_pair):
    """Point-mass guesses from prompt lookup (a repeating prompt: a request has a guess when its
    first token repeats the prompt's; the strong check is test_spec_rejection's)."""
    prompt = [5, 9, 5, 9, 5]
    target = tiny_vocab_pair[0]
    llm = make_llm(target, num_gpu_blocks=NUM_SAMPLES + 64, max_num_seqs=NUM_SAMPLES, seed=7,
                   speculative_config={"method": "ngram", "num_speculative_tokens": 2, "adaptive": False})
    tokens = sample_tokens(llm, prompt)
    drafted, accepted, _ = spec_totals(llm)
    assert drafted >= 50 and 0 < accepted < drafted
    values = p_values(tokens, exact_marginals(target, prompt))
    assert min(values) > 1e-3, values
