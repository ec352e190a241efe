"""Adaptive k's decisions alone, driven by synthetic step records on a fake clock: what the prior
believes, what measurements override, which step times are samples, when probes run."""

from __future__ import annotations

import pytest

from octavo.runtime.config import SpeculativeConfig
from octavo.runtime.spec.controller import AdaptiveK, bucket, expected_tokens, prior_ratio
from octavo.runtime.step_record import StepRecord


def controller(k: int = 4, draft_cost_ratio: float = 0.05, **knobs) -> AdaptiveK:
    return AdaptiveK(SpeculativeConfig(method="draft_model", num_speculative_tokens=k, **knobs), draft_cost_ratio)


class Steps:
    """Feeds a controller decode steps of a fixed batch on a fake clock, as the engine would:
    step_k, then a record that started when the last step's cycle ended."""

    def __init__(self, ctl: AdaptiveK, batch: int, accept: float = 0.7) -> None:
        self.ctl, self.batch, self.accept, self.clock = ctl, batch, accept, 0.0
        self.ks: list[int] = []
        self.starts: list[float] = []

    def run(self, n: int, plain: float, per_draft: float) -> None:
        """n steps: a plain one takes `plain` seconds, one with k drafts plain + k per_draft."""
        for _ in range(n):
            k = self.ctl.step_k(self.batch)
            self.ks.append(k)
            self.starts.append(self.clock)
            accepted = int(round(self.accept * k)) * self.batch
            self.ctl.record(StepRecord(self.clock, 0.0, self.batch, self.batch, 0, k, k, self.batch if k else 0,
                                       k * self.batch, accepted, min(k * self.batch, accepted + self.batch),
                                       accepted + self.batch))
            self.clock += plain + k * per_draft


def test_expected_tokens():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_buckets_are_each_size_below_8_then_four_an_octave():
    assert [bucket(b) for b in range(1, 8)] == list(range(1, 8))
    assert [bucket(b) for b in (8, 9, 10, 15, 16, 19, 20, 63, 64, 79, 80)] == [8, 8, 10, 14, 16, 16, 20, 56, 64, 64, 80]


def test_the_prior_drafts_deep_for_small_batches_and_not_where_every_token_costs():
    ctl = controller()
    for batch in (1, 1024, 8):
        ctl._bucket(batch).plain.append(0.01)  # plain decoding is timed first
    assert ctl.best_k(1) == 4
    assert ctl.best_k(1024) == 0  # compute-bound: verifying k + 1 tokens costs about k + 1 steps
    slow = controller(draft_cost_ratio=1.0)
    slow._bucket(1).plain.append(0.01)
    assert slow.best_k(1) == 0  # a draft as slow as the target never pays
    assert prior_ratio(0, 8, 0.05) == 1.0 and prior_ratio(4, 8, 0.05) > prior_ratio(2, 8, 0.05) > 1.0


def test_measured_steps_override_the_prior_both_ways():
    """Drafting measured at 5x a plain step: plain decoding, whatever the prior hoped. A draft the
    prior thinks too slow, measured cheap: speculation."""
    hopeful = controller(draft_cost_ratio=0.05)
    steps = Steps(hopeful, batch=2)
    steps.run(80, plain=0.010, per_draft=0.010)  # k = 4: 5x plain
    assert steps.ks[:16] == [0] * 16 and steps.ks[16] == 4 and steps.ks[-16:] == [0] * 16
    doubtful = controller(draft_cost_ratio=1.0, probe_budget=0.1)
    steps = Steps(doubtful, batch=2, accept=1.0)
    steps.run(400, plain=0.010, per_draft=0.0005)
    assert steps.ks[16] == 0 and steps.ks[-1] == 4  # measured once a probe ran, then kept


def test_unmeasured_k_scales_the_prior_by_the_nearest_measured_k():
    ctl = controller()
    b = ctl._bucket(4)
    b.plain.extend([0.01] * 4)
    b.spec[4] = type(b.plain)([0.03] * 4, maxlen=16)
    assert ctl.ratio(b, 4, 4) == pytest.approx(3.0)
    assert ctl.ratio(b, 4, 2) == pytest.approx(prior_ratio(2, 4, 0.05) * 3.0 / prior_ratio(4, 4, 0.05))


def test_plain_times_are_read_low_and_speculative_ones_at_the_median():
    """A burst of slow plain steps (host noise only adds time) must not make plain decoding look
    slow; a fast outlier must not make speculation look cheap."""
    ctl = controller()
    b = ctl._bucket(1)
    b.plain.extend([0.010] * 12 + [0.050] * 4)
    b.spec[4] = type(b.plain)([0.011] * 2 + [0.020] * 14, maxlen=16)
    assert ctl.ratio(b, 1, 4) == pytest.approx(2.0)


def record(started: float, batch: int, k: int = 0, prefill: int = 0, decoding: int | None = None) -> StepRecord:
    decoding = batch if decoding is None else decoding
    return StepRecord(started, 0.0, batch, decoding, prefill, k, k, batch if k else 0, k * batch, 0, 0, batch)


def test_a_step_time_is_a_sample_only_in_steady_state():
    """Its cycle (start to next start), when the step before was of the same arm and batch, it
    computed no prompt, and the next step sees the same batch with no prompt either."""
    ctl = controller()
    times = [0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0, 36.0]
    steps = [record(0.0, 2, prefill=7, decoding=1),  # a prompt admitted
             record(1.0, 2), record(3.0, 2), record(6.0, 2),  # plain: the first is no sample
             record(10.0, 2, k=3), record(15.0, 2, k=3), record(21.0, 2, k=3),  # speculation
             record(28.0, 3), record(36.0, 3)]  # another batch
    assert [s.started for s in steps] == times
    for step in steps:
        ctl.record(step)
    b = ctl._bucket(2)
    assert list(b.plain) == [3.0, 4.0]  # the steps at 3.0 and 6.0 (each after a plain step)
    assert list(b.spec[3]) == [6.0]  # the step at 15.0; the one at 10.0 followed a plain step
    assert not ctl._bucket(3).plain  # the first of its batch


def test_acceptance_counts_judged_drafts_and_the_share_that_had_one():
    ctl = controller()
    ctl.record(StepRecord(0.0, 0.0, 4, 4, 0, 4, 4, 2, 8, 5, 7, 7))  # 2 of 4 requests drafted 4
    assert ctl.acceptance == pytest.approx((5 + 0.7) / (7 + 1.0))
    assert ctl.offer_rate == pytest.approx((2 + 1.0) / (4 + 1.0))


def test_few_offers_make_speculation_not_worth_its_step():
    """An n-gram proposer that finds a draft for few requests: each step still costs what its
    longest draft costs, so plain decoding wins."""
    ctl = AdaptiveK(SpeculativeConfig(method="ngram", num_speculative_tokens=4), 0.0)
    ctl._bucket(8).plain.append(0.01)
    assert ctl.best_k(8) > 0
    ctl.offered, ctl.asked = 0.0, 100.0
    assert ctl.best_k(8) == 0


def test_a_probe_of_the_losing_arm_runs_when_the_budget_pays_for_it_and_remembers_its_cost():
    ctl = controller(probe_budget=0.05, probe_steps=4, decide_every=4)
    steps = Steps(ctl, batch=2)
    steps.run(1500, plain=0.010, per_draft=0.010)
    ks = steps.ks
    probes = [i for i in range(1, len(ks)) if ks[i] == 4 and ks[i - 1] == 0]
    assert len(probes) >= 2
    b = ctl._bucket(2)
    assert b.probe_cost == pytest.approx(4 * 0.050)
    # Each probe starts once the time since the last one began pays for it: cost / budget = 4 s,
    # give or take a decision's steps.
    gaps = [steps.starts[probes[i + 1]] - steps.starts[probes[i]] for i in range(len(probes) - 1)]
    assert all(4.0 - 1e-9 <= gap <= 4.0 + 4 * 0.010 + 1e-9 for gap in gaps), gaps
    speculative = sum(1 for k in ks[probes[0]:] if k) * 0.050
    assert speculative / steps.clock < 0.06  # about the budget


def test_while_speculating_plain_steps_are_timed_again_now_and_then():
    ctl = controller(probe_budget=0.05, probe_steps=4, decide_every=4)
    steps = Steps(ctl, batch=1, accept=1.0)
    steps.run(300, plain=0.010, per_draft=0.0005)
    assert steps.ks[16] == 4 and 0 in steps.ks[32:] and steps.ks[-1] == 4


def test_fixed_k_when_not_adaptive():
    ctl = controller(k=3, adaptive=False)
    assert [ctl.step_k(b) for b in (1, 64, 512)] == [3, 3, 3]


def replay(ctl: AdaptiveK, steps: int, plain_seconds, spec_step, batch: int = 1) -> float:
    """Drive a controller with step times drawn from a workload (plain_seconds(i) for the i-th
    plain step; spec_step(i) -> (seconds, accepted of 4) for a speculative one); its tokens per
    second over always-plain decoding's."""
    import itertools

    clock = tokens = 0.0
    plain_i, spec_i = itertools.count(), itertools.count()
    for _ in range(steps):
        k = ctl.step_k(batch)
        if k:
            seconds, accepted = spec_step(next(spec_i))
            emitted = accepted + 1
            ctl.record(StepRecord(clock, 0.0, batch, batch, 0, k, k, batch, k * batch, accepted, accepted + (accepted < k),
                                  emitted))
        else:
            seconds, emitted = plain_seconds(next(plain_i)), 1
            ctl.record(StepRecord(clock, 0.0, batch, batch, 0, 0, 0, 0, 0, 0, 0, emitted))
        clock += seconds
        tokens += emitted
    mean_plain = sum(plain_seconds(i) for i in range(steps)) / steps
    return tokens / clock * mean_plain


def test_a_burst_of_slow_plain_steps_does_not_talk_a_losing_draft_into_speculating():
    """A launch-bound pair as the H100 showed it (demo pair at c = 1, 2026-12-06): plain steps
    0.45 ms, in bursts of 1 ms for a few dozen steps; a k = 4 step 2.1 ms for about 2.3 tokens.
    Speculation loses by 20%; adaptive k must stay within its probe budget of plain decoding.
    With 16 samples a window, a burst filled the plain window and the controller speculated."""
    import random

    rng = random.Random(0)
    bursts = {i for start in range(300, 20_000, 700) for i in range(start, start + 40)}

    def plain(i):
        return (0.0010 if i in bursts else 0.00045) * (1 + 0.05 * rng.random())

    def spec(i):
        accepted = sum(1 for _ in range(4) if rng.random() < 0.55)
        return 0.0021 * (1 + 0.05 * rng.random()), accepted

    assert replay(controller(draft_cost_ratio=0.5), 20_000, plain, spec) > 0.98
