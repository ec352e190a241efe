"""Adaptive k: how many tokens each request drafts in the next step (0 = plain decoding).

Two calls: `step_k(batch_size)` before a step, `record(step)` after it. A draft token is worth
what the acceptance rate says and costs what steps at this batch size measurably take, so k
maximises expected tokens per unit of step time,

    goodput(k) = (1 + f (E(a, k) - 1)) / ratio(k),   E(a, k) = 1 + a + ... + a^k,

where a is the running acceptance rate, f the share of requests that had a draft to offer (an
n-gram lookup may find none) and ratio(k) a speculative step's time over a plain one's at this
batch size (`AdaptiveK.ratio`). Speculation must win by `min_gain`; plain decoding is timed
first (a bucket's first `decide_every` steps), and a decision holds for `decide_every` steps.

The arm not chosen is probed now and then (`probe_steps` steps) once the time since the last
probe pays for it within `probe_budget` (interval = probe cost / budget): a pair that never pays
(a draft as slow as the target) costs about the budget, and an expensive probe comes rarely.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from octavo.runtime.config import SpeculativeConfig
from octavo.runtime.step_record import StepRecord

KNEE_TOKENS = 256.0  # prior: tokens per forward past which a step is compute-bound (H100 bf16)
FORWARD_OVERHEAD = 0.05  # prior: a forward's fixed launch cost, in target forwards


def expected_tokens(a: float, k: int) -> float:
    """Tokens a verification of k drafts emits when each is accepted with probability a."""
    return k + 1.0 if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def prior_ratio(k: int, batch_size: int, draft_cost_ratio: float, knee: float = KNEE_TOKENS) -> float:
    """A step with k drafts over a plain one, by a roofline model: a forward streams its weights
    (time ~ their size) then computes (time ~ size x tokens past the knee); the target verifies
    B (k + 1) tokens, the draft runs k forwards over B tokens."""
    def forward(weights: float, tokens: int) -> float:
        return FORWARD_OVERHEAD + weights * (1.0 + tokens / knee)
    spec = forward(1.0, batch_size * (k + 1)) + (k * forward(draft_cost_ratio, batch_size) if draft_cost_ratio else 0.0)
    return spec / forward(1.0, batch_size)


def bucket(batch_size: int) -> int:
    """The smallest batch size of batch_size's bucket: each size below 8, then four an octave, so the
    batch varies by at most a quarter within one (a launch-bound step's time grows with the batch)."""
    if batch_size < 8:
        return batch_size
    shift = batch_size.bit_length() - 3
    return batch_size >> shift << shift


def quantile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@dataclass
class Bucket:
    """All a batch-size bucket knows: step times per arm, the decision in force, the probe clock."""

    size: int  # the smallest batch size it holds
    plain: collections.deque
    spec: dict[int, collections.deque] = field(default_factory=dict)
    k: int = 0
    hold: int = 0  # steps the decision still holds
    probing: bool = False
    clock: float = 0.0  # seconds of this bucket's steps since the last probe began
    probe_cost: float | None = None  # seconds the last probe's steps took (the one under way: so far)


class AdaptiveK:
    def __init__(self, config: SpeculativeConfig, draft_cost_ratio: float, knee: float = KNEE_TOKENS) -> None:
        self.config = config
        self.k_max = config.num_speculative_tokens
        self.draft_cost_ratio = draft_cost_ratio
        self.knee = knee
        self.buckets: dict[int, Bucket] = {}
        self.accepted, self.tried = 0.0, 0.0  # decaying counts of judged drafts
        self.offered, self.asked = 0.0, 0.0  # decaying counts of requests with a draft, of those asked
        self._last: StepRecord | None = None
        self._in_steady_run = False  # whether the last step continued a run of its arm and bucket
        self._probe_asked: Bucket | None = None  # the probe the step about to be recorded belongs to
        self._last_probe: Bucket | None = None  # the probe the last recorded step belongs to

    def step_k(self, batch_size: int) -> int:
        """Before a step: the k its requests draft (0: plain decoding), by the decision in force."""
        if not self.config.adaptive:
            return self.k_max
        b = self._bucket(batch_size)
        if b.hold > 0:
            b.hold -= 1
        else:
            b.probing = False
            best = self.best_k(batch_size)
            other = 0 if best else self.k_max  # the arm not chosen
            cost = b.probe_cost  # what the last probe took; before the first, what it would take
            if cost is None and b.plain:
                plain = quantile(b.plain, self.config.plain_quantile)
                cost = self.config.probe_steps * plain * self.ratio(b, b.size, other)
            if cost is not None and b.clock * self.config.probe_budget >= cost:
                b.probing, b.probe_cost, b.clock = True, 0.0, 0.0
                b.k, b.hold = other, self.config.probe_steps - 1
            else:
                b.k, b.hold = best, self.config.decide_every - 1
        self._probe_asked = b if b.probing else None
        return b.k

    @property
    def acceptance(self) -> float:
        prior = 0.7  # what a draft of the target's family usually achieves, until measured
        return (self.accepted + prior) / (self.tried + 1.0)

    @property
    def offer_rate(self) -> float:
        return (self.offered + 1.0) / (self.asked + 1.0)

    def best_k(self, batch_size: int) -> int:
        """The k with the most expected tokens per unit of step time; 0 unless it wins by min_gain."""
        b = self._bucket(batch_size)
        if not b.plain:
            return 0  # plain decoding is timed first: every ratio is measured against it
        a, f = self.acceptance, self.offer_rate
        best_k, best = 0, 1.0 + self.config.min_gain  # plain decoding: 1 token per ratio 1
        for k in range(1, self.k_max + 1):
            goodput = (1.0 + f * (expected_tokens(a, k) - 1.0)) / self.ratio(b, batch_size, k)
            if goodput > best:
                best_k, best = k, goodput
        return best_k

    def ratio(self, b: Bucket, batch_size: int, k: int) -> float:
        """A step with k drafts over a plain step: measured (plain times read low, since host noise
        only adds time and comes in bursts; speculative ones at the median, so noise errs towards
        plain decoding), else the prior's shape scaled to the nearest measured k, else the prior."""
        prior = prior_ratio(k, batch_size, self.draft_cost_ratio, self.knee)
        measured = [kk for kk, times in b.spec.items() if times]
        if not k or not b.plain or not measured:
            return prior
        near = min(measured, key=lambda kk: (abs(kk - k), kk))
        seen = quantile(b.spec[near], self.config.spec_quantile) / quantile(b.plain, self.config.plain_quantile)
        return seen if near == k else prior * seen / prior_ratio(near, batch_size, self.draft_cost_ratio, self.knee)

    def record(self, step: StepRecord) -> None:
        """Learn from a finished step: acceptance from its verifications, and the previous step's
        time, from its start to this one's (so that what a step leaves behind, tokens to stream
        and outputs to build, is charged to it). That time is a sample only in steady state: a
        decode step of the same arm and batch as the step before it, with the next one seeing the
        same batch. Why: the first plain step after speculative ones streams several tokens per
        request, which made plain decoding look 2-3x slower than it is in a server."""
        decay = 0.9  # about the last ten verifications
        if step.num_drafted:
            self.accepted = decay * self.accepted + step.num_accepted
            self.tried = decay * self.tried + step.num_judged
        if step.k_asked:
            self.offered = decay * self.offered + step.num_speculated
            self.asked = decay * self.asked + step.num_decoding
        last, self._last = self._last, step
        probe, self._last_probe, self._probe_asked = self._last_probe, self._probe_asked, None
        if last is None:
            return
        seconds = step.started - last.started
        b = self._bucket(last.num_requests)
        b.clock += seconds
        if probe is not None:
            probe.probe_cost += seconds
        decode_only = not last.num_prefill_tokens and last.num_decoding == last.num_requests
        undisturbed = not step.num_prefill_tokens and step.num_requests == last.num_requests
        sample = decode_only and self._in_steady_run and undisturbed
        same_arm = last.k == step.k and bucket(last.num_requests) == bucket(step.num_requests)
        self._in_steady_run = decode_only and same_arm
        if sample:
            times = b.plain if last.k == 0 else b.spec.setdefault(last.k, collections.deque(maxlen=self.config.window))
            times.append(seconds)

    def _bucket(self, batch_size: int) -> Bucket:
        key = bucket(batch_size)
        if key not in self.buckets:
            self.buckets[key] = Bucket(key, plain=collections.deque(maxlen=self.config.window))
        return self.buckets[key]
