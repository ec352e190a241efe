"""Adaptive k as a pure function of (acceptance rate, batch size, k_max) and the cost model."""

from __future__ import annotations

import pytest

from octavo.runtime.spec_policy import (AcceptanceEstimate, MeasuredStepCost, SpecCostModel,
                                        choose_num_speculative_tokens, choose_step_k, expected_tokens_per_step)

GPU_LIKE = SpecCostModel(draft_cost_ratio=0.1, knee_tokens=256, forward_overhead=0.05)


def test_expected_tokens():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)


def test_small_batch_good_draft_speculates_deep():
    assert choose_num_speculative_tokens(0.9, 1, 8, GPU_LIKE) >= 5
    assert choose_num_speculative_tokens(0.8, 1, 3, GPU_LIKE) == 3  # capped by k_max


def test_k_grows_with_acceptance_and_shrinks_with_batch():
    by_rate = [choose_num_speculative_tokens(a, 4, 8, GPU_LIKE) for a in (0.2, 0.4, 0.6, 0.8, 0.95)]
    assert by_rate == sorted(by_rate) and by_rate[-1] > by_rate[0]
    by_batch = [choose_num_speculative_tokens(0.8, b, 8, GPU_LIKE) for b in (1, 8, 32, 128, 512, 2048)]
    assert by_batch == sorted(by_batch, reverse=True)


def test_high_concurrency_or_poor_draft_means_plain_decoding():
    assert choose_num_speculative_tokens(0.8, 1024, 8, GPU_LIKE) == 0
    assert choose_num_speculative_tokens(0.05, 1, 8, GPU_LIKE) == 0
    # Compute-bound at any batch (knee of one token): k + 1 tokens cost k + 1 steps, never worth it.
    assert choose_num_speculative_tokens(0.95, 4, 8, SpecCostModel(0.1, knee_tokens=1.0)) == 0
    # A draft as expensive as the target never pays.
    assert choose_num_speculative_tokens(0.9, 1, 8, SpecCostModel(draft_cost_ratio=1.0)) == 0


def test_goodput_of_the_chosen_k_is_never_below_plain_decoding():
    for rate in (0.1, 0.3, 0.5, 0.7, 0.9):
        for batch in (1, 2, 8, 32, 128, 512):
            k = choose_num_speculative_tokens(rate, batch, 6, GPU_LIKE)
            plain = 1.0 / GPU_LIKE.step_time(0, batch)
            chosen = expected_tokens_per_step(rate, k) / GPU_LIKE.step_time(k, batch)
            assert chosen >= plain


def step_goodput(rates, caps, k, batch, cost=GPU_LIKE):
    return sum(expected_tokens_per_step(a, min(k, c)) for a, c in zip(rates, caps)) / cost.step_time(k, batch)


def test_one_k_for_the_step_beats_each_request_choosing_its_own():
    """A step costs what its longest draft costs: requests that would pick a shorter k alone
    only emit less. The step's k is the best common one, and no worse than plain decoding."""
    rates = [0.9, 0.9, 0.9, 0.35, 0.35, 0.35, 0.35, 0.35]
    caps = [6] * len(rates)
    batch = len(rates)
    k = choose_step_k(rates, caps, batch, 6, GPU_LIKE)
    own = [choose_num_speculative_tokens(a, batch, 6, GPU_LIKE) for a in rates]
    assert len(set(own)) > 1  # alone, they would disagree
    mixed = sum(expected_tokens_per_step(a, kk) for a, kk in zip(rates, own)) / GPU_LIKE.step_time(max(own), batch)
    best = max(step_goodput(rates, caps, kk, batch) for kk in range(7))
    assert step_goodput(rates, caps, k, batch) == pytest.approx(best)
    assert step_goodput(rates, caps, k, batch) > mixed
    assert step_goodput(rates, caps, k, batch) >= step_goodput(rates, caps, 0, batch)


def test_step_k_respects_caps_and_falls_to_plain_decoding():
    # Requests about to reach max_tokens can verify little: their caps limit what a long k yields.
    assert choose_step_k([0.9, 0.9], [0, 0], 2, 6, GPU_LIKE) == 0
    assert choose_step_k([0.9] * 4, [6] * 4, 4, 6, GPU_LIKE) == choose_num_speculative_tokens(0.9, 4, 6, GPU_LIKE)
    assert choose_step_k([0.8] * 1024, [6] * 1024, 1024, 6, GPU_LIKE) == 0
    assert choose_step_k([], [], 4, 6, GPU_LIKE) == 0


def test_acceptance_estimate_counts_trials_until_the_first_rejection():
    estimate = AcceptanceEstimate(prior=0.5, prior_weight=0.0, decay=1.0)
    estimate.observe(2, 4)  # accepted, accepted, rejected: 3 trials
    estimate.observe(4, 4)  # all four accepted: 4 trials
    assert estimate.rate == pytest.approx(6 / 7)


def test_forgetting_returns_towards_the_prior():
    estimate = AcceptanceEstimate(prior=0.7)
    for _ in range(10):
        estimate.observe(0, 4)
    low = estimate.rate
    assert low < 0.2
    for _ in range(20):
        estimate.forget()
    assert estimate.rate > 0.6


def measured(points: dict[int, float], batch_size: int = 4) -> MeasuredStepCost:
    cost = MeasuredStepCost(GPU_LIKE)
    for k, seconds in points.items():
        for _ in range(3):  # the first sample of each k is discarded as warm-up
            cost.observe(batch_size, k, seconds)
    return cost


def test_buckets_are_each_size_below_8_then_four_an_octave():
    bucket = MeasuredStepCost.bucket
    assert [bucket(b) for b in range(1, 10)] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert [bucket(b) for b in (10, 11, 15, 16, 19, 20, 31, 32, 39, 40, 63, 64, 79, 80, 255, 256)] == \
        [10, 10, 14, 16, 16, 20, 28, 32, 32, 40, 56, 64, 64, 80, 224, 256]
    for size in range(1, 600):  # a bucket's span holds its sizes and no more than a quarter more
        low, high = MeasuredStepCost.bucket_span(bucket(size))
        assert low <= size <= high and high + 1 <= max(low + 1, 1.25 * low)
        assert bucket(high + 1) == high + 1


def test_measured_costs_start_from_the_model_and_scale_it():
    empty = MeasuredStepCost(GPU_LIKE)
    assert empty.step_time(3, 4) == GPU_LIKE.step_time(3, 4)
    plain_only = measured({0: 0.010}, batch_size=16)
    ratio = GPU_LIKE.step_time(3, 16) / GPU_LIKE.step_time(0, 16)
    assert plain_only.step_time(3, 16) == pytest.approx(0.010 * ratio)
    assert plain_only.step_time(3, 19) == pytest.approx(0.010 * GPU_LIKE.step_time(3, 19) / GPU_LIKE.step_time(0, 19))
    assert plain_only.step_time(3, 20) == GPU_LIKE.step_time(3, 20)  # another bucket: nothing measured


def test_a_bucket_without_both_arms_borrows_the_nearest_ratios_not_the_model():
    """Where speculation loses (5 ms a k = 4 step against 1 ms plain), a fresh bucket that
    followed the model would speculate, and pay a probe's catch-up steps to learn what the
    bucket beside it already shows."""
    cost = measured({0: 0.001, 4: 0.005}, batch_size=4)
    assert choose_num_speculative_tokens(0.9, 5, 4, GPU_LIKE) == 4  # the model alone would speculate
    assert cost.informed(5) and not cost.timed_both(5)
    assert cost.step_time(0, 5) == 0.001 and cost.step_time(4, 5) == pytest.approx(0.005)
    assert choose_num_speculative_tokens(0.9, 5, 4, cost) == 0
    for _ in range(3):
        cost.observe(6, 0, 0.002)  # its own plain point, the neighbour's ratio
    assert cost.step_time(0, 6) == 0.002 and cost.step_time(4, 6) == pytest.approx(0.010)
    for _ in range(3):
        cost.observe(7, 4, 0.009)  # its own speculative point, the neighbour's ratio for plain
    assert cost.step_time(4, 7) == pytest.approx(0.009) and cost.step_time(0, 7) == pytest.approx(0.0018)
    for _ in range(3):
        cost.observe(16, 0, 0.004)
        cost.observe(16, 4, 0.005)
    # Bucket 10 is log2(10/4) = 1.32 octaves from bucket 4 and 0.68 from bucket 16.
    assert cost.step_time(4, 11) / cost.step_time(0, 11) == pytest.approx(0.005 / 0.004)
    assert cost.step_time(4, 8) / cost.step_time(0, 8) == pytest.approx(0.005 / 0.004)  # a tie: the larger


def test_a_borrowing_bucket_probes_speculation_and_borrows_the_realized_gain():
    cost = MeasuredStepCost(GPU_LIKE, explore_steps=5, probe_steps=2, explore_budget=1.0, realized_min=3)
    for _ in range(4):
        cost.observe(4, 0, 0.001)
        cost.observe(4, 4, 0.002, tokens=4 * 1)  # each request emitted 1 token in 2 ms
    assert cost.realized_gain(4) == pytest.approx(0.5)
    assert cost.realized_gain(5) == pytest.approx(0.5)  # borrowed: bucket 5 has none of its own
    steps = 0
    while not cost.spec_step_due(5):
        cost.observe(5, 0, 0.001)
        steps += 1
        assert steps < 100
    assert steps == 5  # bucket 5 times speculation itself now and then, as a bucket that dropped it
    assert MeasuredStepCost(GPU_LIKE).realized_gain(5) is None


def test_the_exploration_budget_forgets_old_probes():
    """A bucket probed often early in a long-lived server must not carry that history for ever:
    both totals decay, so the budget is a share of recent decode time."""
    cost = MeasuredStepCost(GPU_LIKE, budget_memory_steps=100)
    cost.probes[4] = (True, 1)
    cost.count(4, 4, 1.0)  # one expensive probe step
    assert cost.explored[4] == pytest.approx(1.0)
    for _ in range(1000):
        cost.count(4, 0, 0.001)
    assert cost.explored[4] < 1e-4
    assert cost.elapsed[4] == pytest.approx(0.001 * 100, rel=0.01)  # ~ the last 100 steps' worth


def test_measured_spec_steps_that_cost_too_much_turn_speculation_off():
    """The model says a k = 4 step costs about 1.6 plain steps; measured, it costs 4.5 (an eager
    verification against a graph-replayed plain step, say): even 0.9 acceptance cannot pay."""
    assert choose_num_speculative_tokens(0.9, 4, 4, GPU_LIKE) == 4
    slow = measured({0: 0.007, 4: 0.032})
    assert slow.step_time(0, 4) == 0.007
    # One speculative point: the model's shape scaled through it.
    assert slow.step_time(2, 4) == pytest.approx(0.032 * GPU_LIKE.step_time(2, 4) / GPU_LIKE.step_time(4, 4))
    assert choose_num_speculative_tokens(0.9, 4, 4, slow) == 0
    fast = measured({0: 0.007, 4: 0.012})
    assert choose_num_speculative_tokens(0.9, 4, 4, fast) == 4


def test_the_jump_from_plain_to_speculation_is_not_spread_over_k():
    """A launch-bound pair (the demo pair on an H100): plain 0.7 ms, any drafting about 2 ms
    plus 0.35 ms per k. A line through k = 0 too would put plain decoding at 1 ms and make k = 1
    look like it pays; plain is its own point and the line runs through the k > 0 points only."""
    cost = measured({0: 0.0007, 1: 0.0019, 2: 0.0024, 3: 0.0032, 4: 0.0030})
    assert cost.step_time(0, 4) == 0.0007
    assert cost.step_time(1, 4) > 0.0017
    for rate in (0.5, 0.6, 0.7, 0.8):
        assert choose_num_speculative_tokens(rate, 4, 4, cost) == 0


def test_measurement_discards_warm_up_and_reads_plain_low_and_speculation_at_the_median():
    cost = MeasuredStepCost(GPU_LIKE, window=5)
    cost.observe(2, 0, 5.0)  # compilation: discarded
    cost.observe(2, 0, 0.010)
    assert cost.seconds[(2, 0)] == 0.010
    cost.observe(2, 0, 1.0)  # a stall is clipped to 4x
    assert list(cost.recent[(2, 0)]) == [0.010, 0.040]
    for seconds in (0.012, 0.014, 0.016):
        cost.observe(2, 0, seconds)
    assert cost.seconds[(2, 0)] == 0.010  # [0.010, 0.012, 0.014, 0.016, 0.040]: the 10th percentile
    for _ in range(5):  # the window forgets the old samples
        cost.observe(2, 0, 0.020)
    assert cost.seconds[(2, 0)] == pytest.approx(0.020)
    for seconds in (0.5, 0.010, 0.012, 0.014, 0.016, 0.040):  # the same samples, speculative
        cost.observe(2, 3, seconds)
    assert cost.seconds[(2, 3)] == 0.014  # the median: speculation is not read at its luckiest


def test_a_burst_of_slow_steps_does_not_make_plain_decoding_look_slow():
    """What a served demo pair showed (H100): plain steps of 0.85 ms, a burst of five 10 ms ones
    (host noise), then speculation with a plain probe of 3 samples now and then. The median of
    the last 8 plain samples then read 3.7 ms and made speculation (3 ms for about 2.7 tokens)
    look like a win; the 10th percentile of 16 keeps plain decoding at 0.85 ms, and the choice at
    0.75 acceptance is plain decoding."""
    cost = MeasuredStepCost(GPU_LIKE)
    for _ in range(12):
        cost.observe(1, 0, 0.00085)
    for _ in range(5):
        cost.observe(1, 0, 0.010)
    for _ in range(4):
        cost.observe(1, 4, 0.0030)
    cost.observe(1, 0, 0.0009)  # a probe's samples
    cost.observe(1, 0, 0.0009)
    assert cost.step_time(0, 1) == pytest.approx(0.00085)
    assert choose_num_speculative_tokens(0.75, 1, 4, cost) == 0
    median_of_8 = MeasuredStepCost(GPU_LIKE, window=8, plain_quantile=0.5)
    for seconds in [0.00085] * 12 + [0.010] * 5 + [0.0009] * 2:
        median_of_8.observe(1, 0, seconds)
    assert median_of_8.step_time(0, 1) > 0.003  # what the old estimate made of the same samples


def test_realized_gain_is_what_speculative_steps_emitted_at_what_their_k_costs():
    cost = MeasuredStepCost(GPU_LIKE, realized_window=4, realized_min=3)
    for _ in range(3):
        cost.observe(4, 0, 0.010)
        cost.observe(4, 2, 0.015)
    cost.observe(4, 2, 0.015)  # no tokens given: timed, but nothing realized
    assert cost.realized_gain(4) is None  # two realized steps so far (the first sample's too)
    cost.observe(4, 2, 0.015, tokens=4 * 3)
    cost.observe(4, 2, 0.015, tokens=4 * 3)
    cost.observe(4, 2, 0.015, tokens=4 * 1)
    # Each request emitted 3, 3 and 1 tokens in steps that cost 15 ms; plain decoding emits 1 in 10 ms.
    assert cost.realized_gain(4) == pytest.approx((7 / 45) / (1 / 10))
    for _ in range(4):  # the window keeps the last realized_window steps
        cost.observe(4, 2, 0.015, tokens=4 * 3)
    assert cost.realized_gain(4) == pytest.approx(2.0)
    assert MeasuredStepCost(GPU_LIKE).realized_gain(4) is None


def test_a_bucket_that_dropped_speculation_probes_it_again_less_and_less_often():
    """Where speculation was timed and lost, a probe of probe_steps speculative steps runs after
    explore_steps plain steps; each probe doubles the interval (a pair that never pays costs
    next to nothing), and speculation the policy keeps choosing on its own resets it."""
    cost = MeasuredStepCost(GPU_LIKE, explore_steps=5, probe_steps=3, max_explore_steps=12, explore_budget=1.0)
    for _ in range(3):
        cost.observe(4, 0, 0.010)
    assert not cost.spec_step_due(4)  # speculation was never timed here: the model decides
    for _ in range(3):
        cost.observe(4, 4, 0.050)
    assert not cost.spec_step_due(4)

    def plain_steps_until_probe() -> int:
        steps = 0
        while not cost.spec_step_due(4):
            cost.observe(4, 0, 0.010)
            steps += 1
            assert steps < 100
        return steps

    assert plain_steps_until_probe() == 5
    assert not cost.spec_step_due(8)  # another bucket
    for step in range(3):  # the probe: three speculative steps, then plain again
        assert cost.spec_step_due(4), step
        cost.observe(4, 3, 0.030)
    assert plain_steps_until_probe() == 10
    for _ in range(3):
        cost.observe(4, 3, 0.030)
    assert plain_steps_until_probe() == 12  # capped
    for _ in range(3):
        cost.observe(4, 3, 0.030)
    for _ in range(15):  # the policy speculates outside a probe, not yet for sustained_steps
        cost.observe(4, 2, 0.030)
    assert plain_steps_until_probe() == 12
    for _ in range(3):
        cost.observe(4, 3, 0.030)
    for _ in range(16):  # now it keeps speculating: back to the base interval
        cost.observe(4, 2, 0.030)
    assert plain_steps_until_probe() == 5


def test_speculative_probes_keep_to_their_share_of_the_time():
    """A probe whose steps cost 30 ms (the draft catching up on every context) against 1 ms plain
    steps: with a 3% budget the next probe waits until the bucket's decode time has grown to
    33x what the probes took, the one about to start included (at what the last one cost),
    whatever explore_steps says; untimed steps count, with their time."""
    cost = MeasuredStepCost(GPU_LIKE, explore_steps=5, probe_steps=2, max_explore_steps=5, explore_budget=0.03,
                            budget_memory_steps=10**12)  # no forgetting within this test
    for _ in range(3):
        cost.observe(4, 0, 0.001)
        cost.observe(4, 4, 0.030)  # timed speculation that loses: the policy drops it
    plain = 0
    while not cost.spec_step_due(4):
        cost.observe(4, 0, 0.001)
        plain += 1
    # 3 ms + 90 ms (speculation chosen by the policy, not a probe: not charged) + 5 plain steps.
    assert plain == 5
    cost.count(4, 4, 0.030)  # the probe: a catch-up step (counted with its time, not a sample)
    cost.observe(4, 4, 0.030)
    assert cost.explored[4] == pytest.approx(0.060)
    steps = 0
    while not cost.spec_step_due(4):
        cost.count(4, 0, 0.001)
        steps += 1
        assert steps < 6000
    elapsed_before = 0.003 + 0.090 + 0.005 + 0.060
    # Past probes (60 ms) and the coming one (60 ms, as the last): ~3,842 plain steps, not 5.
    assert abs(steps - ((0.060 + 0.060) / 0.03 - elapsed_before) / 0.001) <= 1


def test_a_bucket_first_probe_waits_for_the_time_it_will_take():
    """A fresh bucket's first probe has no past probe to go by and runs after explore_steps;
    the second waits until the budget holds what the first cost, so a probe never takes a
    share of a bucket that has hardly run (a first probe took 20% of one, H100)."""
    cost = MeasuredStepCost(GPU_LIKE, explore_steps=5, probe_steps=2, max_explore_steps=5, explore_budget=0.01,
                            budget_memory_steps=10**12)
    for _ in range(3):
        cost.observe(4, 0, 0.001)
        cost.observe(4, 4, 0.004)
    assert cost.probe_spent.get(4, 0.0) == 0.0
    steps = 0
    while not cost.spec_step_due(4):
        cost.count(4, 0, 0.001)
        steps += 1
    assert steps == 5  # nothing spent yet: the step clock alone
    cost.count(4, 4, 0.020)  # the probe: a catch-up step, then a timed one
    cost.observe(4, 4, 0.004)
    assert cost.probe_spent[4] == pytest.approx(0.024)
    elapsed = cost.elapsed[4]
    steps = 0
    while not cost.spec_step_due(4):
        cost.count(4, 0, 0.001)
        steps += 1
        assert steps < 10_000
    assert cost.probe_spent[4] == 0.0  # a new probe starts its own count
    assert abs(steps - ((0.024 + 0.024) / 0.01 - elapsed) / 0.001) <= 1


def test_plain_steps_are_timed_wherever_speculation_was():
    """Without a measured k = 0 point the fit extrapolates plain decoding from the k > 0 steps
    and calls it as slow as they are; the engine then runs a probe of plain steps in that
    bucket, and again every refresh_steps speculative steps."""
    cost = MeasuredStepCost(GPU_LIKE, refresh_steps=10, probe_steps=3)
    assert not cost.plain_step_due(4)  # nothing timed: the model alone decides
    for _ in range(3):
        cost.observe(4, 4, 0.030)
    assert not cost.plain_step_due(8)  # another bucket, nothing speculative timed there
    for step in range(3):  # a probe of three plain steps (the first sample of a key is warm-up)
        assert cost.plain_step_due(4), step
        cost.observe(4, 0, 0.007)
    assert not cost.plain_step_due(4)
    assert cost.samples[(4, 0)] == 3 and cost.step_time(0, 4) == 0.007
    assert choose_num_speculative_tokens(0.5, 4, 4, cost) == 0  # 0.030 s for 1.94 tokens loses
    for _ in range(9):
        cost.observe(4, 4, 0.030)
    assert not cost.plain_step_due(4)
    cost.observe(4, 4, 0.030)
    for _ in range(3):
        assert cost.plain_step_due(4)
        cost.count(4, 0)  # probe steps whose time was no sample still count
    assert not cost.plain_step_due(4)


def test_step_time_follows_set_times_and_bumps_the_version():
    cost = MeasuredStepCost(GPU_LIKE)
    version = cost.version
    cost.set_time(4, 0, 0.010)
    cost.set_time(4, 1, 0.020)
    cost.set_time(4, 3, 0.030)
    assert cost.version == version + 3 and cost.timed_both(4)
    assert cost.step_time(0, 4) == 0.010
    assert cost.step_time(2, 4) == pytest.approx(0.025)  # the line through k = 1 and 3
    assert cost.step_time(4, 4) == pytest.approx(0.035)


def test_a_run_of_plain_steps_observed_at_once_is_the_same_as_step_by_step():
    """observe_plain_run (the engine coasting through plain steps) leaves counts, clocks,
    budget and the plain time as observing the steps one by one does."""
    import random

    rng = random.Random(3)
    times = [0.001 + rng.random() * 1e-4 for _ in range(40)]
    one, run = MeasuredStepCost(GPU_LIKE), MeasuredStepCost(GPU_LIKE)
    for cost in (one, run):
        for _ in range(3):
            cost.observe(4, 4, 0.004, tokens=8)
    one.count(4, 0, times[0])  # the first step after speculation: counted with its time, no sample
    for value in times[1:]:
        one.observe(4, 0, value)
    one.count(4, 0)  # a disturbed last step
    run.observe_plain_run(4, times, untimed=1, first_is_sample=False)
    for name in ("samples", "since_spec", "since_plain", "spec_run", "points"):
        assert getattr(one, name) == getattr(run, name), name
    assert run.elapsed[4] == pytest.approx(one.elapsed[4])
    assert run.explored[4] == pytest.approx(one.explored[4])
    assert run.step_time(0, 4) == one.step_time(0, 4)


def test_quiet_steps_end_before_a_probe_could_fall_due():
    """The engine may coast through quiet_steps plain steps after the one being decided: none
    while plain decoding still needs timing or a probe runs, and the step after them is the
    one where the probe clock falls due."""
    cost = MeasuredStepCost(GPU_LIKE, explore_steps=10, probe_steps=2, explore_budget=1.0)
    for _ in range(3):
        cost.observe(4, 4, 0.010)
    assert cost.quiet_steps(4, 100) == 0  # speculation timed, plain decoding not yet
    for _ in range(3):
        cost.observe(4, 0, 0.001)
    quiet = cost.quiet_steps(4, 100)
    assert quiet == 10 - 3 - 1 and cost.quiet_steps(4, 2) == 2
    cost.observe(4, 0, 0.001)  # the step the decision was made for
    for _ in range(quiet):
        assert not cost.spec_step_due(4)
        cost.observe(4, 0, 0.001)
    assert cost.spec_step_due(4)  # the step after the quiet ones: the probe
    assert cost.quiet_steps(4, 100) == 0  # while it runs
