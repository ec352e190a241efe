"""Adaptive speculation: how many tokens to draft per step (0 = plain decoding).

The policy weighs what a draft token is worth (the running acceptance rate) against what it
costs (step time at this batch size): `choose_step_k` picks the k with the most tokens per unit
of step time. Step times come from a cost model (`SpecCostModel`, the prior) and, in the engine,
from this machine's measured steps (`MeasuredStepCost`), so speculation is dropped wherever it
loses, whatever the model believed.
"""

from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SpecCostModel:
    """How long a step takes, in units of one target forward over a tiny batch.

    A forward first streams its weights from memory (time proportional to their size), then
    computes (time proportional to weights x tokens). Below `knee_tokens` tokens per forward the
    weight stream dominates, so extra tokens are nearly free; above it they cost in proportion.
    On an H100 in bf16 the knee is near 2 FLOP/param/token against 2 bytes/param: peak FLOP/s
    over bandwidth, ~300 tokens. `forward_overhead` is the fixed cost of launching a forward
    (kernels, host work); the draft pays it for every one of its k steps.
    """

    draft_cost_ratio: float = 0.1  # draft weights streamed per forward / the target's
    knee_tokens: float = 256.0
    forward_overhead: float = 0.05

    def forward_time(self, weight_ratio: float, num_tokens: int) -> float:
        return self.forward_overhead + weight_ratio * (1.0 + num_tokens / self.knee_tokens)

    def step_time(self, k: int, batch_size: int) -> float:
        """Target over batch_size x (k + 1) tokens plus k draft forwards over batch_size tokens."""
        return (self.forward_time(1.0, batch_size * (k + 1))
                + k * self.forward_time(self.draft_cost_ratio, batch_size))


MIN_GAIN = 0.05  # speculation must beat plain decoding by this much (so that error errs towards plain)


def expected_tokens_per_step(acceptance_rate: float, k: int) -> float:
    """Tokens a verification emits when each draft is accepted independently with probability a:
    1 + a + a^2 + ... + a^k (the accepted run, plus the target's own token)."""
    a = min(max(acceptance_rate, 0.0), 1.0)
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def choose_num_speculative_tokens(acceptance_rate: float, batch_size: int, k_max: int,
                                  cost: "SpecCostModel | MeasuredStepCost" = SpecCostModel(),
                                  min_gain: float = MIN_GAIN) -> int:
    """The k in 0..k_max that maximises goodput, tokens emitted per unit of step time
    (expected_tokens_per_step / step_time), for one request in a batch of `batch_size`.

    Why these inputs: the acceptance rate says what a draft token is worth, and the batch size
    says what it costs. With few requests the target is weight-bandwidth bound and verifying k
    more tokens is almost free, so k grows with the acceptance rate. With many, every token is
    compute, a step over B(k+1) tokens costs about k+1 plain steps while emitting fewer than k+1
    tokens, so k falls to 0 and the step is exactly plain decoding: speculation never costs
    throughput at high concurrency. `cost` is a SpecCostModel or, in the engine, a
    MeasuredStepCost (this machine's timed steps, the model as prior), so that the promise holds
    where the model is wrong. `min_gain` keeps k at 0 unless speculation is predicted to win by a
    margin, so that error errs towards plain decoding.
    """
    return choose_step_k([acceptance_rate], [k_max], batch_size, k_max, cost, min_gain)


def choose_step_k(acceptance_rates: list[float], caps: list[int], batch_size: int, k_max: int,
                  cost: "SpecCostModel | MeasuredStepCost" = SpecCostModel(), min_gain: float = MIN_GAIN) -> int:
    """One k for every request of a step: the k in 0..k_max with the most tokens emitted by the
    batch per unit of step time, sum_i expected_tokens_per_step(a_i, min(k, cap_i)) /
    step_time(k, batch_size), kept at 0 unless it beats plain decoding by `min_gain`.

    Why one k: a step costs what its longest draft costs (k draft forwards, the verification
    padded to k + 1 tokens per request), so a request drafting less than the others saves no
    time, it only emits fewer tokens. Choosing per request would let a few pessimistic
    estimates drag the batch's yield below both plain decoding and a common k."""
    if k_max <= 0 or batch_size <= 0 or not acceptance_rates:
        return 0
    baseline = len(acceptance_rates) / cost.step_time(0, batch_size)
    best_k, best = 0, baseline
    for k in range(1, k_max + 1):
        tokens = sum(expected_tokens_per_step(a, min(k, cap)) for a, cap in zip(acceptance_rates, caps))
        goodput = tokens / cost.step_time(k, batch_size)
        if goodput > best:
            best_k, best = k, goodput
    return best_k if best >= baseline * (1.0 + min_gain) else 0


@dataclass
class AcceptanceEstimate:
    """Running per-token acceptance rate: decaying counts of accepted drafts over drafts tried,
    pulled towards a prior. A verification that accepts a of k drafts tried a + 1 of them if one
    was rejected (the rest were never judged), or k if all were accepted.

    `forget()` decays the evidence on a step without speculation, so a request whose estimate
    once fell low enough to stop drafting drifts back towards the prior and tries again."""

    prior: float = 0.7
    prior_weight: float = 1.0
    decay: float = 0.8
    accepted: float = 0.0
    trials: float = 0.0

    @property
    def rate(self) -> float:
        return (self.accepted + self.prior * self.prior_weight) / (self.trials + self.prior_weight)

    def observe(self, num_accepted: int, num_drafted: int) -> None:
        tried = num_accepted + (1 if num_accepted < num_drafted else 0)
        self.accepted = self.decay * self.accepted + num_accepted
        self.trials = self.decay * self.trials + tried

    def forget(self, steps: int = 1) -> None:
        factor = self.decay ** steps
        self.accepted *= factor
        self.trials *= factor


def streamed_weights(model: nn.Module) -> int:
    """Parameters a decode forward reads in full: everything but embedding tables (a forward
    gathers a few rows), plus the output head when it is the tied token embedding."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    total -= sum(m.weight.numel() for m in embeddings)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and embeddings:
        total += max(m.weight.numel() for m in embeddings)
    return max(total, 1)


def default_cost_model(target: nn.Module, draft: nn.Module, device: torch.device) -> SpecCostModel:
    knee = 256.0 if device.type == "cuda" else 64.0
    return SpecCostModel(draft_cost_ratio=streamed_weights(draft) / streamed_weights(target), knee_tokens=knee)


@dataclass
class _BucketFit:
    """A bucket's measured step times, as step_time reads them: the plain point, and the
    speculation line a + b k through the k > 0 points (or the one k > 0 point there is)."""

    plain: float | None = None
    spec_point: tuple[int, float] | None = None
    intercept: float = 0.0
    slope: float | None = None  # None: fewer than two k > 0 points


class MeasuredStepCost:
    """Step times as this machine really delivers them, with the cost model as the prior.

    The model cannot know what the engine adds: a verification forward over k + 1 tokens a
    request may run eagerly where a plain decode step replays a CUDA graph, kernels launch from
    Python, the host work per step, the server streaming more tokens per step. So engine steps
    are timed, by batch-size bucket (each size below 8, then four an octave: see bucket) and by
    the number of draft steps k, and the policy's step_time comes from them (plain decoding its
    own point, speculation a line through the k > 0 points). A bucket that lacks an arm borrows
    the nearest timed bucket's ratio of speculation to plain decoding; the model is the last
    resort, where nothing is timed yet (see step_time).

    What a sample is (the engine decides, see SpecDecoder): a step's cycle time, from its start
    to the next step's start, so that what a step leaves behind (tokens to stream, outputs to
    build) is charged to it; and only in steady state, a step whose previous step was of the same
    kind (plain or speculative) at the same batch size. The first plain step after speculative
    ones shares the process with the streaming of several tokens per request; timing it made
    plain decoding look 2-3x slower than it is in a server (measured: 1.0-1.9 ms against a 0.6 ms
    TPOT without the draft).

    A key's time is a quantile (rounded down) of its last `window` samples: plain decoding's
    10th percentile (`plain_quantile`), speculation's median (`spec_quantile`). The first sample
    of each key is discarded (compilation, warm-up) and a sample is clipped to 4x the key's time.
    Why a low quantile for plain decoding: host noise only ever adds time, and it comes in bursts
    (a garbage collection, the event loop finishing a burst of HTTP streams). In a served demo
    pair, five consecutive 10 ms plain steps came against a 0.85 ms norm; the arm that runs
    rarely (plain decoding while speculating: 3 samples a probe) kept such bursts in its window,
    a median of 8 read 3.7 ms and a lower quartile of 16 still 1.3-3.4 ms, and speculation (4 ms
    steps for about 2.5 tokens) looked like a win where it lost 10-20% (H100). Why the two
    quantiles differ: the errors do not cost alike. Wrongly speculating on a launch-bound pair
    costs up to 40% (a 4x step for 2.5 tokens); wrongly decoding plainly costs only the margin by
    which speculation would have won, and that margin is small exactly where the estimates are
    close. So noise is read in plain decoding's favour, as MIN_GAIN does for the estimates.

    Predictions err the same way: a decision taken when a request's acceptance estimate is high
    is taken when the estimate is luckiest (the winner's curse). So each bucket also keeps what
    its recent timed speculative steps really delivered, the tokens each request emitted and the
    k they cost (`realized_gain`), and speculation that did not pay as practised is dropped
    whatever the estimates say (SpecDecoder._batch_k).

    Neither arm is trusted forever: where speculation was timed, a probe of `probe_steps` plain
    steps runs every `refresh_steps` speculative steps; where it was dropped, a probe of
    `probe_steps` speculative steps runs after `explore_steps` plain steps, an interval
    that doubles with each probe (up to `max_explore_steps`) until the policy keeps speculating
    for `sustained_steps` steps of its own, so a pair that never pays costs next to nothing, and
    one whose decision was made on a bad patch of samples is revisited. A probe has several
    steps because its first is no steady-state sample. Probes also keep to a time budget: the
    speculative probes of a bucket may take at most `explore_budget` of the time its decode
    steps took, counting the probe about to start at what the bucket's last one cost. Why: a
    probe's first step lets the draft catch up on every request's whole context, so on a
    launch-bound pair at batch 4 a probe step took about 8 ms against 1.2 ms plain, and a 4-step
    probe every 128 plain steps cost about a fifth of the time (H100). Why the coming probe
    counts and the share is 1%: a budget checked only against probes past let a bucket's first
    probe take 20% of the little time it had run, and a pair that never pays loses the whole
    share for good (a served demo pair spent 3.8% of its time at c = 4 in probes, H100).

    This runs on every engine step, so it is kept to a few dictionary operations per step."""

    def __init__(self, model: SpecCostModel, window: int = 16, plain_quantile: float = 0.1,
                 spec_quantile: float = 0.5, refresh_steps: int = 256,
                 explore_steps: int = 128, probe_steps: int = 4, max_explore_steps: int = 2048,
                 sustained_steps: int = 16, realized_window: int = 16, realized_min: int = 8,
                 explore_budget: float = 0.01, budget_memory_steps: int = 4096) -> None:
        self.model = model
        self.window = window
        self.plain_quantile = plain_quantile
        self.spec_quantile = spec_quantile
        self.realized_window = realized_window
        self.realized_min = realized_min
        self.explore_budget = explore_budget
        self.budget_decay = 1.0 - 1.0 / budget_memory_steps
        self.refresh_steps = refresh_steps
        self.explore_steps = explore_steps
        self.probe_steps = probe_steps
        self.max_explore_steps = max_explore_steps
        self.sustained_steps = sustained_steps
        self.samples: dict[tuple[int, int], int] = {}
        self.recent: dict[tuple[int, int], collections.deque] = {}
        self.since_plain: dict[int, int] = {}  # per bucket: speculative steps since a plain one
        self.since_spec: dict[int, int] = {}  # per bucket: plain steps since a speculative one
        self.explore_after: dict[int, int] = {}  # per bucket: plain steps before the next speculative probe
        self.probes: dict[int, tuple[bool, int]] = {}  # per bucket: (speculative?, steps left) of a probe
        self.spec_run: dict[int, int] = {}  # per bucket: speculative steps in a row outside probes
        self.elapsed: dict[int, float] = {}  # per bucket: decaying seconds of decode steps counted with their time
        self.explored: dict[int, float] = {}  # per bucket: the same, of those that were speculative probes
        self.probe_spent: dict[int, float] = {}  # per bucket: seconds its last speculative probe took
        self.points: dict[int, dict[int, float]] = {}  # per bucket: k -> its measured step time
        self.realized: dict[int, collections.deque] = {}  # per bucket: (k, tokens per request) of timed spec steps
        self.version = 0  # bumped whenever a measured time changes
        self._fits: dict[int, _BucketFit] = {}
        self._near: dict[int, int | None] = {}  # bucket -> the bucket it borrows from (_nearest)

    @property
    def seconds(self) -> dict[tuple[int, int], float]:
        """Every measured step time by (bucket, k)."""
        return {(bucket, k): t for bucket, points in self.points.items() for k, t in points.items()}

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def bucket(batch_size: int) -> int:
        """The batch sizes timed together, named by the smallest: each size below 8, then four
        buckets an octave (8-9, 10-11, ..., 56-63, 64-79, ...), so the batch varies by at most a
        quarter within one. Why so fine: a launch-bound pair's step time grows with the batch,
        and buckets an octave wide held plain steps of 2.7 ms (batch 32) and 5.2 ms (batch 60)
        side by side, so that speculation timed at one end was compared with plain decoding
        timed at the other (the demo pair served at c = 32 and 64, H100)."""
        size = max(1, int(batch_size))
        return size - size % MeasuredStepCost._bucket_width(size)

    @staticmethod
    def _bucket_width(size: int) -> int:
        """Batch sizes per bucket around `size`: 1 below 8, then a quarter of the octave."""
        return max(1, (1 << (size.bit_length() - 1)) >> 2)

    @staticmethod
    def bucket_span(bucket: int) -> tuple[int, int]:
        """The smallest and largest batch size of a bucket."""
        return bucket, bucket + MeasuredStepCost._bucket_width(bucket) - 1

    def _probing(self, bucket: int, speculative: bool) -> bool:
        probe = self.probes.get(bucket)
        return probe is not None and probe[0] == speculative

    def _timed_spec(self, bucket: int) -> bool:
        return any(b == bucket and k > 0 for b, k in self.samples)

    def plain_step_due(self, batch_size: int) -> bool:
        """Whether the coming step should be plain to time plain decoding: speculation was timed
        in this bucket but plain decoding was not (yet, or not for refresh_steps steps), or a
        plain probe is under way. Without that point the fitted line has nothing to compare
        k > 0 with; it would extrapolate k = 0 from the k > 0 points, and keep speculating where
        a draft costs as much as the target (small, launch-bound models)."""
        bucket = self.bucket(batch_size)
        if self._probing(bucket, False):
            return True
        if self.samples.get((bucket, 0), 0) < 2:  # the first sample of a key is discarded
            due = self._timed_spec(bucket)
        else:
            due = self.since_plain.get(bucket, 0) >= self.refresh_steps
        if due:
            self.probes[bucket] = (False, self.probe_steps)
        return due

    def spec_step_due(self, batch_size: int) -> bool:
        """Whether the coming step should speculate to time speculation again, in a bucket where
        it was timed and then dropped (a probe is under way, or explore_after plain steps ran)."""
        bucket = self.bucket(batch_size)
        if self._probing(bucket, True):
            return True
        after = self.explore_after.get(bucket, self.explore_steps)
        fit = self._fits.get(bucket)
        spent = self.explored.get(bucket, 0.0) + self.probe_spent.get(bucket, 0.0)  # the coming probe too
        due = (self.since_spec.get(bucket, 0) >= after
               and spent <= self.explore_budget * self.elapsed.get(bucket, 0.0)
               and ((fit is not None and fit.spec_point is not None) or self._nearest(bucket) is not None))
        if due:
            self.probes[bucket] = (True, self.probe_steps)
            self.probe_spent[bucket] = 0.0
            self.explore_after[bucket] = min(2 * after, self.max_explore_steps)
        return due

    def quiet_steps(self, batch_size: int, limit: int) -> int:
        """How many plain steps in this bucket after the one about to run (at most `limit`)
        cannot make spec_step_due or plain_step_due true: none while a probe runs or plain
        decoding still needs timing here, else those before the probe clock falls due (a run of
        plain steps only resets plain decoding's clock, and only moves the probe clock forward),
        and once it has, an estimate of those before the probe budget lets a probe start: the
        decode time still missing, at 4x the plain step time a step (the estimate leaves out
        the budget's decay, so a probe may start a few steps late). Lets the engine skip both
        checks for that many steps (observe_plain_run)."""
        bucket = self.bucket(batch_size)
        if bucket in self.probes:
            return 0
        if self.samples.get((bucket, 0), 0) < 2 and self._timed_spec(bucket):
            return 0
        after = self.explore_after.get(bucket, self.explore_steps)
        clock = after - self.since_spec.get(bucket, 0) - 1
        if clock > 0:
            return min(limit, clock)
        # The clock is due; the budget holds the probe back (else it would have started now).
        spent = self.explored.get(bucket, 0.0) + self.probe_spent.get(bucket, 0.0)
        missing = spent / self.explore_budget - self.elapsed.get(bucket, 0.0) if self.explore_budget > 0 else math.inf
        plain = self.step_time(0, batch_size)
        if missing <= 0 or plain <= 0:
            return 0
        return int(min(limit, missing / (4.0 * plain)))

    def observe_plain_run(self, batch_size: int, seconds: list[float], untimed: int = 0,
                          first_is_sample: bool = True) -> None:
        """A run of plain decode steps in one bucket, taken in one call: the cycle times of
        steps that ran undisturbed (`seconds`, in order; the first only counted with its time,
        not a sample, unless first_is_sample), then `untimed` steps that were only counted. The
        same as observing them one by one (see observe and count), except that each sample is
        clipped against the plain time as it stood before the run. The bucket runs no probe
        (quiet_steps is 0 while one does, and nothing starts one during a run). Why: the engine
        coasts through runs of plain steps without per-step bookkeeping (SpecDecoder), which cost
        a launch-bound pair 30-40 us of a step of about 1 ms; this is that bookkeeping, paid once
        per run."""
        bucket = self.bucket(batch_size)
        if not seconds and not untimed:
            return
        for value in seconds:  # steps counted without their time leave the budget's totals alone
            self._charge(bucket, value)
        self._plain_steps(bucket, len(seconds) + untimed)
        samples = seconds if first_is_sample else seconds[1:]
        if samples:
            self._add_samples((bucket, 0), samples)

    def timed_both(self, batch_size: int) -> bool:
        """Whether plain and speculative steps both have measured times in this bucket."""
        fit = self._fits.get(self.bucket(batch_size))
        return fit is not None and fit.plain is not None and fit.spec_point is not None

    def borrowed_from(self, batch_size: int) -> int | None:
        """The bucket whose times this one borrows (_nearest), if it does."""
        bucket = self.bucket(batch_size)
        return None if self.timed_both(batch_size) or self._nearest(bucket) is None else self._near[bucket]

    def informed(self, batch_size: int) -> bool:
        """Whether step_time here comes from measurements alone: this bucket's, or a neighbour's."""
        return self.timed_both(batch_size) or self._nearest(self.bucket(batch_size)) is not None

    def count(self, batch_size: int, k: int, seconds: float | None = None) -> None:
        """A decode step ran with k draft steps (0: plain), timed or not: the probes' clocks.
        `seconds`, when the step's cycle ran undisturbed, is charged to the exploration budget."""
        bucket = self.bucket(batch_size)
        probe = self.probes.get(bucket)
        if seconds is not None:
            self._charge(bucket, seconds, seconds if probe is not None and probe[0] and k > 0 else 0.0)
        if k == 0:
            self._plain_steps(bucket, 1)
        else:
            self.since_spec[bucket] = 0
            self.since_plain[bucket] = self.since_plain.get(bucket, 0) + 1
            if probe is None:  # the policy itself speculates here: once it keeps doing so, explore
                run = self.spec_run[bucket] = self.spec_run.get(bucket, 0) + 1  # at the base rate again
                if run >= self.sustained_steps:
                    self.explore_after.pop(bucket, None)
        if probe is not None and probe[0] == (k > 0):
            if probe[1] <= 1:
                del self.probes[bucket]
            else:
                self.probes[bucket] = (probe[0], probe[1] - 1)

    def _charge(self, bucket: int, seconds: float, explored: float = 0.0) -> None:
        """A step's time, `explored` of it by a speculative probe, into the budget's totals (both
        decay alike: the budget is a share of recent time)."""
        decay = self.budget_decay
        self.elapsed[bucket] = self.elapsed.get(bucket, 0.0) * decay + seconds
        self.explored[bucket] = self.explored.get(bucket, 0.0) * decay + explored
        if explored:
            self.probe_spent[bucket] = self.probe_spent.get(bucket, 0.0) + explored

    def _plain_steps(self, bucket: int, steps: int) -> None:
        """The clocks after `steps` plain steps: the probe clock runs, plain decoding's restarts."""
        self.since_spec[bucket] = self.since_spec.get(bucket, 0) + steps
        self.since_plain[bucket] = 0
        self.spec_run[bucket] = 0

    def observe(self, batch_size: int, k: int, seconds: float, tokens: int | None = None) -> None:
        """A timed decode step (counted as well); `tokens`, what it emitted over the batch."""
        self.count(batch_size, k, seconds)
        self.add_sample(batch_size, k, seconds)
        if k > 0 and tokens is not None:
            bucket = self.bucket(batch_size)
            recent = self.realized.get(bucket)
            if recent is None:
                recent = self.realized[bucket] = collections.deque(maxlen=self.realized_window)
            recent.append((k, tokens / batch_size))

    def realized_gain(self, batch_size: int) -> float | None:
        """Tokens per unit time that this bucket's last timed speculative steps delivered, over
        plain decoding's: what each request really emitted per step, against what those steps'
        k cost (the measured times). None until realized_min such steps and a plain time; until
        then, the gain of the bucket whose times this one borrows (_nearest), if it has one."""
        bucket = self.bucket(batch_size)
        gain = self._realized_gain(bucket)
        if gain is None and self._nearest(bucket) is not None:
            gain = self._realized_gain(self._near[bucket])
        return gain

    def _realized_gain(self, bucket: int) -> float | None:
        recent = self.realized.get(bucket)
        fit = self._fits.get(bucket)
        if recent is None or len(recent) < self.realized_min or fit is None or fit.plain is None:
            return None
        times: dict[int, float] = {}
        seconds = tokens = 0.0
        for k, emitted in recent:
            if k not in times:
                times[k] = self.step_time(k, bucket)
            seconds += times[k]
            tokens += emitted
        return tokens * fit.plain / seconds

    def add_sample(self, batch_size: int, k: int, seconds: float) -> None:
        self._add_samples((self.bucket(batch_size), k), [seconds])

    def _add_samples(self, key: tuple[int, int], values: list[float]) -> None:
        """Samples of a (bucket, k) key, in order: the key's first ever is warm-up and dropped,
        the rest are clipped to 4x the key's time as it stood before them; then the key's time is
        its quantile of the last `window`."""
        count = self.samples.get(key, 0)
        self.samples[key] = count + len(values)
        kept = values[1:] if count == 0 else values
        if not kept:
            return
        bucket, k = key
        points = self.points.setdefault(bucket, {})
        old = points.get(k)
        recent = self.recent.setdefault(key, collections.deque(maxlen=self.window))
        recent.extend(kept if old is None else [min(value, 4.0 * old) for value in kept[-self.window:]])
        quantile = self.plain_quantile if k == 0 else self.spec_quantile
        points[k] = sorted(recent)[int(quantile * (len(recent) - 1))]
        self._refit(bucket, k)

    def set_time(self, batch_size: int, k: int, seconds: float, samples: int = 3) -> None:
        """Take a step time as measured `samples` times (tests, and a warm start from a file)."""
        key = (self.bucket(batch_size), k)
        self.samples[key] = samples
        self.points.setdefault(key[0], {})[k] = seconds
        self.recent[key] = collections.deque([seconds], maxlen=self.window)
        self._refit(key[0], k)

    def _refit(self, bucket: int, k: int) -> None:
        """The bucket's plain point and speculation line after k's time changed (plain
        decoding is its own point: the step from k = 0 to k = 1 carries a fixed cost, the draft's
        first forward and the wider verification, that a line through k = 0 would spread over
        every k). A plain sample only moves the point; the line is refitted for k > 0 ones."""
        self.version += 1
        points = self.points[bucket]
        fit = self._fits.get(bucket)
        if fit is None:
            fit = self._fits[bucket] = _BucketFit()
        if (fit.plain is None if k == 0 else fit.spec_point is None):
            self._near.clear()  # a bucket gets a point it lacked: its neighbours may borrow from it now
        if k == 0:
            fit.plain = points[0]
            return
        spec = sorted((kk, t) for kk, t in points.items() if kk > 0)
        fit.spec_point = spec[0]
        if len(spec) >= 2:
            n = len(spec)
            mean_k = sum(kk for kk, _ in spec) / n
            mean_t = sum(t for _, t in spec) / n
            spread = sum((kk - mean_k) ** 2 for kk, _ in spec)
            fit.slope = max(0.0, sum((kk - mean_k) * (t - mean_t) for kk, t in spec) / spread)
            fit.intercept = mean_t - fit.slope * mean_k

    def step_time(self, k: int, batch_size: int) -> float:
        """Plain decoding: its measured point. Speculation: the line through the measured k > 0
        points, or with one such point the model's shape scaled through it. A bucket without
        both arms timed borrows the nearest bucket's (see _nearest): what it lacks comes from
        that bucket's speculation-to-plain ratios, through its own point when it has one. Only
        then the model: scaled through the one point there is, or alone."""
        bucket = self.bucket(batch_size)
        fit = self._fits.get(bucket)
        own = None if fit is None else self._fit_time(fit, k, batch_size)
        if own is not None:
            return own
        near = self._nearest(bucket)
        if near is not None:
            if fit is None or (fit.plain is None and fit.spec_point is None):
                return self._fit_time(near, k, batch_size)
            if fit.plain is not None:  # k > 0 here
                return fit.plain * self._fit_time(near, k, batch_size) / near.plain
            k0, t0 = fit.spec_point
            return t0 * self._fit_time(near, k, batch_size) / self._fit_time(near, k0, batch_size)
        if fit is None:
            return self.model.step_time(k, batch_size)
        known = (0, fit.plain) if fit.plain is not None else fit.spec_point
        return known[1] * self.model.step_time(k, batch_size) / self.model.step_time(known[0], batch_size)

    def _fit_time(self, fit: _BucketFit, k: int, batch_size: int) -> float | None:
        """What a bucket's own measurements say of k: plain decoding its point, speculation its
        line, or its one speculative point scaled by the model's shape once plain decoding is
        timed as well. None where they say nothing (never, for a bucket with both arms timed)."""
        if k == 0:
            return fit.plain
        if fit.slope is not None:
            return max(1e-9, fit.intercept + fit.slope * k)
        if fit.plain is None or fit.spec_point is None:
            return None
        k0, t0 = fit.spec_point
        return t0 * self.model.step_time(k, batch_size) / self.model.step_time(k0, batch_size)

    def _nearest(self, bucket: int) -> _BucketFit | None:
        """The fit of the bucket nearest to this one (in log batch size; ties go to the larger,
        where speculation pays less) with both arms timed, for a bucket without. Why: the model
        is the worst guess there is (it knows nothing of the host), and a fresh bucket that
        followed it would pay a probe's catch-up steps to learn what its neighbours already
        show. Cached until a bucket first has both arms timed."""
        if bucket in self._near:
            near = self._near[bucket]
            return None if near is None else self._fits[near]
        both = [b for b, fit in self._fits.items() if b != bucket and fit.plain is not None and fit.spec_point is not None]
        near = min(both, key=lambda b: (abs(math.log2(b / bucket)), -b)) if both else None
        self._near[bucket] = near
        return None if near is None else self._fits[near]
