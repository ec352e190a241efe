"""The sampler's batched, host-decided path (#21: no wait for the device inside sampling) gives
exactly what the row-by-row version it replaced gave: penalties as indexed updates, filters chosen
from the requests' parameters. The row-by-row version is kept here as the reference. On a CUDA
device, sampling a mixed batch raises under torch's sync debug mode if anything in it waits."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from octavo import SamplingParams
from octavo.runtime.sampler import Sampler, apply_penalties

VOCAB = 97


def reference_penalties(logits: torch.Tensor, requests) -> torch.Tensor:
    """The row-by-row penalties (octavo before the batched version), for comparison."""
    vocab = logits.shape[-1]
    for row, request in enumerate(requests):
        params = request.sampling_params
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(request.all_token_ids)), dtype=torch.long)
            seen = seen[seen < vocab]
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / params.repetition_penalty,
                                            values * params.repetition_penalty)
        if (params.presence_penalty or params.frequency_penalty) and request.output_token_ids:
            out = torch.tensor(request.output_token_ids, dtype=torch.long)
            counts = torch.bincount(out[out < vocab], minlength=vocab).to(logits.dtype)
            logits[row] -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)
        if params.min_tokens and request.num_output_tokens < params.min_tokens:
            stops = [t for t in params.all_stop_token_ids if t < vocab]
            if stops:
                logits[row, stops] = float("-inf")
    return logits


def fake_request(rng: random.Random, params: SamplingParams, seed: int | None = None):
    prompt = [rng.randrange(VOCAB + 5) for _ in range(rng.randrange(1, 12))]  # a few ids past the vocabulary
    output = [rng.randrange(VOCAB) for _ in range(rng.randrange(0, 20))]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return SimpleNamespace(sampling_params=params, all_token_ids=prompt + output, output_token_ids=output,
                           num_output_tokens=len(output), generator=generator, grammar=None)


def mixed_params(rng: random.Random) -> SamplingParams:
    params = SamplingParams(
        temperature=rng.choice([0.0, 0.7, 1.0]), top_k=rng.choice([0, 5]), top_p=rng.choice([1.0, 0.8]),
        min_p=rng.choice([0.0, 0.1]), repetition_penalty=rng.choice([1.0, 1.3]),
        presence_penalty=rng.choice([0.0, 0.5]), frequency_penalty=rng.choice([0.0, -0.4, 0.9]),
        min_tokens=rng.choice([0, 30]), max_tokens=64, stop_token_ids=rng.choice([[], [3, 7]]))
    params.all_stop_token_ids |= {1}  # the model's end-of-sequence token
    return params


@pytest.mark.parametrize("seed", range(5))
def test_batched_penalties_equal_the_row_by_row_reference(seed):
    rng = random.Random(seed)
    requests = [fake_request(rng, mixed_params(rng)) for _ in range(16)]
    logits = torch.randn(len(requests), VOCAB, generator=torch.Generator().manual_seed(seed))
    expected = reference_penalties(logits.clone(), requests)
    assert not torch.equal(expected, logits)  # the case exercises the penalties
    assert torch.equal(apply_penalties(logits.clone(), requests), expected)


def test_filters_chosen_on_the_host_match_those_read_off_the_tensors():
    """processed_logits decides which filters run from the parameters; the result is the one
    the tensor-reading decision gives, for batches with and without each filter."""
    from octavo.runtime.sampler import filter_top_k_top_p_min_p

    rng = random.Random(3)
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(3))
    for kinds in ([{}] * 6, [{"top_k": 4}] + [{}] * 5, [{"min_p": 0.2}] * 6, [{"top_p": 0.5, "min_p": 0.05}] * 6):
        requests = [fake_request(rng, SamplingParams(temperature=1.0, **kind)) for kind in kinds]
        params = [r.sampling_params for r in requests]
        top_k = torch.tensor([p.top_k for p in params])
        top_p = torch.tensor([p.top_p for p in params])
        min_p = torch.tensor([p.min_p for p in params])
        assert torch.equal(Sampler(torch.device("cpu"), 0).processed_logits(logits, requests),
                           filter_top_k_top_p_min_p(logits.clone(), top_k, top_p, min_p))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_a_mixed_batch_never_waits_for_the_device():
    """Greedy and sampled rows, penalties, min_tokens, top-k/p, min-p and a seeded row: with
    sync debug mode at "error", any wait for the device inside the sampler raises."""
    rng = random.Random(0)
    requests = [fake_request(rng, mixed_params(rng)) for _ in range(15)]
    seeded = fake_request(rng, SamplingParams(temperature=0.9, seed=5))
    seeded.generator = torch.Generator(device="cuda").manual_seed(5)
    requests.append(seeded)
    sampler = Sampler(torch.device("cuda"), 0)
    logits = torch.randn(len(requests), VOCAB, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tokens = sampler.sample(logits, requests)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tokens.shape == (len(requests),) and bool(((tokens >= 0) & (tokens < VOCAB)).all())
