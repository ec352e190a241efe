"""From logits to tokens: penalties, temperature, top-k / top-p / min-p, per-request seeds and
log-probabilities. One row of logits per sampled position; all rows processed as one batch, with
per-row parameters as tensors.

Log-probabilities are those of the model's raw distribution (before penalties and temperature),
as vLLM reports them. A seeded request draws its randomness from its own generator, so its output
does not depend on what else is in the batch.

Nothing here waits for the device: every choice (which filters run, whether a batch is all greedy)
is made from the requests' parameters on the host, and per-row values reach the device in
non-blocking copies from pinned memory (host_staging). Under asynchronous scheduling the next step's host work then runs while
this step's forward and sampling are still on the GPU (a `bool(tensor)` or a blocking copy would
make the host wait for the forward).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from octavo.runtime.host_staging import host_tensor, stage, to_device
from octavo.runtime.request import Request


@dataclass
class SampledRow:
    token_id: int
    logprob: float | None = None  # of the chosen token, raw distribution
    rank: int | None = None
    top_logprobs: list[tuple[int, float]] | None = None  # (token id, logprob), best first


class Lookahead:
    """A request as it would stand with `extra` tokens appended: what penalties and min_tokens
    see at a draft position (speculative decoding), for the draft's distribution and the
    target's alike."""

    __slots__ = ("request", "extra")

    def __init__(self, request: Request, extra: list[int]) -> None:
        self.request = request
        self.extra = extra

    @property
    def sampling_params(self):
        return self.request.sampling_params

    @property
    def generator(self):
        return self.request.generator

    @property
    def all_token_ids(self) -> list[int]:
        return self.request.all_token_ids + self.extra if self.extra else self.request.all_token_ids

    @property
    def output_token_ids(self) -> list[int]:
        return self.request.output_token_ids + self.extra if self.extra else self.request.output_token_ids

    @property
    def num_output_tokens(self) -> int:
        return self.request.num_output_tokens + len(self.extra)


def needs_history(params) -> bool:
    """Whether sampling reads the values of earlier tokens (not just their count)."""
    return params.repetition_penalty != 1.0 or bool(params.presence_penalty) or bool(params.frequency_penalty)


def needs_penalties(request: Request) -> bool:
    params = request.sampling_params
    return needs_history(params) or (params.min_tokens > 0 and request.num_output_tokens < params.min_tokens)


def apply_penalties(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Repetition (HF's: prompt + output tokens), presence and frequency (OpenAI's: output tokens)
    penalties, and min_tokens (end-of-sequence tokens masked until enough were produced). Each
    kind is one indexed update over (row, token) pairs gathered on the host."""
    vocab, device = logits.shape[-1], logits.device
    repeated: tuple[list[int], list[int], list[float]] = ([], [], [])  # rows, tokens, penalties
    counted: tuple[list[int], list[int], list[float], list[float], list[float]] = ([], [], [], [], [])
    stopped: tuple[list[int], list[int]] = ([], [])
    for row, request in enumerate(requests):
        params = request.sampling_params
        if params.repetition_penalty != 1.0:
            seen = sorted(t for t in set(request.all_token_ids) if t < vocab)
            repeated[0].extend([row] * len(seen))
            repeated[1].extend(seen)
            repeated[2].extend([params.repetition_penalty] * len(seen))
        if (params.presence_penalty or params.frequency_penalty) and request.output_token_ids:
            counts = collections.Counter(t for t in request.output_token_ids if t < vocab)
            counted[0].extend([row] * len(counts))
            counted[1].extend(counts)
            counted[2].extend(counts.values())
            counted[3].extend([params.frequency_penalty] * len(counts))
            counted[4].extend([params.presence_penalty] * len(counts))
        # A grammar decides when its output may end: min_tokens never holds back its stop token
        # (masking it would leave a finished grammar nothing to sample).
        if (params.min_tokens and request.num_output_tokens < params.min_tokens
                and getattr(request, "grammar", None) is None):
            stops = sorted({t for t in params.all_stop_token_ids if t < vocab})
            stopped[0].extend([row] * len(stops))
            stopped[1].extend(stops)
    if repeated[0]:
        rows, tokens = to_device(repeated[0], torch.long, device), to_device(repeated[1], torch.long, device)
        penalty = to_device(repeated[2], logits.dtype, device)
        values = logits[rows, tokens]
        logits[rows, tokens] = torch.where(values > 0, values / penalty, values * penalty)
    if counted[0]:
        rows, tokens = to_device(counted[0], torch.long, device), to_device(counted[1], torch.long, device)
        counts, frequency, presence = (to_device(v, logits.dtype, device) for v in counted[2:])
        logits[rows, tokens] -= frequency * counts + presence
    if stopped[0]:
        rows, tokens = to_device(stopped[0], torch.long, device), to_device(stopped[1], torch.long, device)
        logits[rows, tokens] = float("-inf")
    return logits


def filter_top_k_top_p_min_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                             min_p: torch.Tensor, *, truncate: bool | None = None,
                             use_min_p: bool | None = None) -> torch.Tensor:
    """Mask (to -inf) what top-k, top-p and min-p exclude; each row has its own values
    (top_k 0 = off, top_p 1 = off, min_p 0 = off). `truncate` / `use_min_p`: whether any row uses
    top-k or top-p / min-p, when the caller knows it on the host (else read off the tensors,
    which waits for the device)."""
    vocab = logits.shape[-1]
    if truncate is None:
        truncate = bool((top_k > 0).any()) or bool((top_p < 1.0).any())
    if use_min_p is None:
        use_min_p = bool((min_p > 0).any())
    if truncate:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
        drop = ranks >= k[:, None]
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        drop |= before > top_p[:, None]
        drop[:, 0] = False  # always keep the best token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if use_min_p:
        probs = logits.softmax(dim=-1)
        threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


class Sampler:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        # Unseeded requests share this generator: runs are reproducible for a fixed engine seed.
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def processed_logits(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """Penalties, temperature and filters applied: what sampling draws from."""
        logits = apply_penalties(logits.clone(), requests)
        params = [r.sampling_params for r in requests]
        device = logits.device
        temperature, top_k, top_p, min_p = stage([
            host_tensor([1.0 if p.greedy else max(p.temperature, 1e-5) for p in params], torch.float32),
            host_tensor([p.top_k for p in params], torch.long),
            host_tensor([p.top_p for p in params], torch.float32),
            host_tensor([p.min_p for p in params], torch.float32)], device)  # one copy
        logits = logits / temperature[:, None]
        return filter_top_k_top_p_min_p(logits, top_k, top_p, min_p,
                                        truncate=any(p.top_k > 0 or p.top_p < 1.0 for p in params),
                                        use_min_p=any(p.min_p > 0 for p in params))

    def random_noise(self, shape: tuple[int, int], requests: list[Request]) -> torch.Tensor:
        """Exponential(1) noise per row: a seeded request's row from its own generator."""
        noise = torch.empty(shape, device=self.device).exponential_(generator=self.generator)
        for row, request in enumerate(requests):
            if request.generator is not None and not request.sampling_params.greedy:
                noise[row].exponential_(generator=request.generator)
        return noise

    def choose(self, processed: torch.Tensor, requests: list[Request],
               probs: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy rows take the argmax; others sample by the exponential race
        (argmax of p / E with E ~ Exp(1), which draws from p). `probs`: processed's softmax, if
        the caller has it."""
        flags = [r.sampling_params.greedy for r in requests]
        argmax = processed.argmax(dim=-1)
        if all(flags):
            return argmax
        greedy = to_device(flags, torch.bool, processed.device)
        probs = processed.softmax(dim=-1) if probs is None else probs
        sampled = (probs / self.random_noise(tuple(probs.shape), requests)).argmax(dim=-1)
        return torch.where(greedy, argmax, sampled)

    def sample(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """The chosen token ids, on the logits' device."""
        if all(r.sampling_params.greedy and not needs_penalties(r) for r in requests):
            return logits.argmax(dim=-1)  # filters never drop the best token
        return self.choose(self.processed_logits(logits, requests), requests)

    @staticmethod
    def describe(logits: torch.Tensor, chosen: torch.Tensor, requests: list[Request],
                 num_logprobs: list[int | None] | None = None) -> list[SampledRow]:
        """The chosen tokens with the raw log-probabilities each request asked for."""
        wanted = num_logprobs or [r.sampling_params.logprobs for r in requests]
        rows = [SampledRow(token_id=t) for t in chosen.tolist()]
        if all(n is None for n in wanted):
            return rows
        logprobs = logits.float().log_softmax(dim=-1)
        top_n = max(n or 0 for n in wanted)
        chosen_lp = logprobs.gather(-1, chosen[:, None]).squeeze(-1)
        ranks = (logprobs > chosen_lp[:, None]).sum(dim=-1) + 1
        top_values, top_ids = logprobs.topk(top_n, dim=-1) if top_n else (None, None)
        chosen_lp, ranks = chosen_lp.tolist(), ranks.tolist()
        top_values = top_values.tolist() if top_n else None
        top_ids = top_ids.tolist() if top_n else None
        for i, n in enumerate(wanted):
            if n is None:
                continue
            rows[i].logprob, rows[i].rank = chosen_lp[i], ranks[i]
            rows[i].top_logprobs = list(zip(top_ids[i][:n], top_values[i][:n])) if n else []
        return rows
