"""Speculative decoding: a small draft model proposes k tokens, the target checks them all in one
forward, and rejection sampling keeps the output distribution exactly the target's.

One engine step with speculation:

  propose()     before scheduling. For each running request that is decoding, pick k (adaptive,
                0 = plain decoding), let the draft catch up on the request's tokens in its own
                paged KV cache (a prefill the first time), then run k draft steps batched across
                requests. The proposals go to `request.spec_token_ids`, which the scheduler
                counts as extra tokens to compute.
  execute()     one target forward over [last token + k proposals] per request (multi-token
                queries through the block tables), then `rejection_sample` or `greedy_verify`
                (spec_verify.py) accepts a prefix of the proposals and adds one token of the
                target's own.
  after_step()  roll back to what was accepted: the target's blocks wholly past the accepted
                length are freed (the engine has already moved num_computed_tokens back, so
                rejected slots are overwritten later and never read), and the draft's view of
                the request is cut to the tokens it computed that are still true.

k is chosen by `choose_step_k` (spec_policy.py), one k for the batch, from the requests'
running acceptance rates and the batch size, with step costs measured on this machine
(MeasuredStepCost), and held for a few steps (a decision for k = 0 longer each time in a
row); k = 0 is plain decoding, and costs the draft nothing. While plain decoding holds, the
decoder coasts: those steps skip the policy's checks and timing, which the run hands over when
it ends (_start_coast), so a server that drafts nothing does the work of one without a draft.
Speculation predicted to pay is still dropped where the bucket's recent speculative steps did
not deliver (MeasuredStepCost.realized_gain). (A seeded sampled request picks its own k
from the cost model alone, so that its output does not depend on timings or on other requests.)

Where the draft's work goes keeps TTFT what it is without speculation: a request's draft prefill
happens at the start of the step after its first token was delivered (so the first token never
waits for the draft), and a step that can admit a waiting prompt carries no draft work at all.

The draft keeps its own KVCacheManager and one `DraftSequence` per request id (block table,
computed length, the proposals under verification). Draft KV is computed lazily: after steps
without speculation (k = 0) the next catch-up covers the gap, so turning speculation off costs
the draft nothing. The draft's prefix cache hashes only tokens the target has committed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import torch

from octavo.runtime.config import ModelConfig, SpeculativeConfig
from octavo.runtime.inference import inference
from octavo.runtime.kv_cache import KVCacheManager
from octavo.runtime.model_runner import ModelRunner, RunnerOutput
from octavo.runtime.request import Request, RequestStatus
from octavo.runtime.sampler import SampledRow, Sampler, needs_penalties
from octavo.runtime.scheduler import ScheduledRequest, SchedulerOutput
from octavo.runtime.spec_policy import (MIN_GAIN, AcceptanceEstimate, MeasuredStepCost, SpecCostModel,
                                        choose_num_speculative_tokens, choose_step_k, default_cost_model)
from octavo.runtime.spec_verify import VerifyResult, greedy_verify, rejection_sample

if TYPE_CHECKING:
    from octavo.runtime.engine import LLMEngine, StepResult

logger = logging.getLogger("octavo")


# ---- the draft's view of a request -----------------------------------------------------------
class DraftSequence:
    """A request as the draft's runner and KV cache see it (the same attribute names as Request).

    `all_token_ids` is the request's committed tokens, then the proposals of the current step;
    `num_computed_tokens` counts the positions whose K/V the draft holds (at most the committed
    tokens plus k - 1 proposals: the last proposal is never fed back)."""

    prompt_logprobs = None
    needs_prompt_logprobs = False

    def __init__(self, request: Request) -> None:
        self.request_id = request.request_id
        self.shares_prefix = request.shares_prefix
        self.all_token_ids: list[int] = list(request.all_token_ids)
        self.num_committed = len(self.all_token_ids)
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        self.block_hashes: list[bytes] = []
        self.num_registered_blocks = 0
        self.spec_token_ids: list[int] = []
        self.proposals: list[int] = []
        self.draft_probs: list[torch.Tensor] = []  # per proposal, the distribution it was drawn from

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    def __repr__(self) -> str:
        return (f"DraftSequence({self.request_id!r}, committed={self.num_committed}, "
                f"computed={self.num_computed_tokens}, proposals={len(self.proposals)})")


class _Coast:
    """A run of plain steps the decoder takes without per-step bookkeeping (SpecDecoder._start_coast)."""

    __slots__ = ("batch_size", "left", "seconds", "untimed", "skip_first")

    def __init__(self, batch_size: int, left: int, skip_first: bool) -> None:
        self.batch_size = batch_size
        self.left = left  # steps after the first that the run may still take
        self.seconds: list[float] = []  # the cycle times of its steps that ran undisturbed
        self.untimed = 0  # steps counted without their time
        self.skip_first = skip_first  # the first step's cycle is no steady-state sample (only counted)


class _Lookahead:
    """A request as it would stand with `extra` tokens appended: what penalties and min_tokens
    see at a draft position, for the draft's distribution and the target's alike."""

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


# ---- the decoder -----------------------------------------------------------------------------
def check_pair(target: ModelConfig, draft: ModelConfig) -> None:
    """Refuse a draft whose token ids mean something else than the target's (the message of
    octavo.operator.validation, shared with `octavo check-pair` and the operator)."""
    from octavo.operator.validation import VocabReadError, check_vocab_compatibility

    try:
        verdict = check_vocab_compatibility(target.model, draft.model)
    except VocabReadError as exc:
        if target.load_format == "dummy":
            logger.warning("speculative pair not checked (dummy weights): %s", exc)
            return
        raise ValueError(f"cannot check the draft's vocabulary against the target's: {exc}") from exc
    if not verdict.compatible:
        raise ValueError(verdict.message)
    if verdict.verdict != "compatible":
        logger.info("speculative pair: %s", verdict.message)


class SpecDecoder:
    """Owns the draft model, its KV cache and per-request draft state; see the module docstring."""

    def __init__(self, engine: "LLMEngine", config: SpeculativeConfig) -> None:
        self.engine = engine
        self.config = config
        engine_config = engine.config
        draft_config = config.draft_model_config
        if draft_config is None:
            raise ValueError("speculative decoding needs a draft model config")
        check_pair(engine_config.model_config, draft_config)
        target_tp = engine_config.parallel_config.tensor_parallel_size
        if not 1 <= config.draft_tensor_parallel_size <= target_tp:
            raise ValueError(f"speculative_draft_tensor_parallel_size ({config.draft_tensor_parallel_size}) "
                             f"must be between 1 and tensor_parallel_size ({target_tp})")
        self.k_max = config.num_speculative_tokens
        self.adaptive = config.adaptive
        self.draft_on_device = True  # greedy drafts chain on the device (_draft_argmax_on_device)
        self.target_vocab = engine_config.model_config.vocab_size
        self.draft_vocab = draft_config.vocab_size
        self.draft_runner = ModelRunner(draft_config, engine_config.cache_config, engine_config.scheduler_config,
                                        engine_config.device, enforce_eager=engine_config.enforce_eager)
        # The target sizes its KV cache for both: every target block has a draft twin.
        engine.model_runner.extra_bytes_per_block += self.draft_runner.bytes_per_block()
        self.cost = default_cost_model(engine.model_runner.model, self.draft_runner.model, engine_config.device)
        self.measured = MeasuredStepCost(self.cost)
        self.decide_every = 8  # steps a bucket keeps its chosen k (choosing walks every request)
        self.max_plain_hold = 256  # steps a run of decisions for plain decoding may hold the last one
        self._plain_streak: dict[int, int] = {}  # bucket -> decisions for plain decoding in a row
        self._step_started = 0.0
        self._step_k = 0  # draft steps of the step in flight
        self._step_timed = False  # whether its time is a sample of what k costs
        self._step_tokens = 0  # tokens the step in flight emitted over its batch
        self._cycle: tuple[int, int, float, bool, int] | None = None  # the last decode step: batch, k, start, sample?, tokens
        self._coast: _Coast | None = None  # a run of plain steps taken without bookkeeping
        self._last_arm: tuple[int, bool] | None = None  # its bucket and whether it speculated
        self._step_plans: dict[int, tuple[int, int]] = {}  # bucket -> (k chosen, steps it still holds)
        self.draft_kv: KVCacheManager | None = None
        self.sequences: dict[str, DraftSequence] = {}
        self.estimates: dict[str, AcceptanceEstimate] = {}
        self.overall = AcceptanceEstimate(decay=0.98)
        self.last_k: dict[str, int] = {}  # k chosen for each request when the batch was last walked
        self._decisions: dict[int, bool] = {}  # batch-size bucket -> speculating at the last choice (the log)
        logger.info("speculative decoding: draft %s, k <= %d (%s), draft/target weights %.3f",
                    draft_config.model, self.k_max, "adaptive" if self.adaptive else "fixed",
                    self.cost.draft_cost_ratio)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """The draft gets as many blocks as the target (its tokens never outnumber the target's)."""
        cache_config = dataclasses.replace(self.engine.config.cache_config, num_gpu_blocks=num_blocks)
        self.draft_runner.cache_config = cache_config
        self.draft_runner.initialize_kv_cache()
        # The k - 1 single-token draft steps and the catch-ups after a verification (at most
        # k + 1 tokens: the accepted proposals and the target's token) replay these.
        self.draft_runner.capture_cuda_graphs(self.graph_query_lens)
        self.draft_kv = KVCacheManager(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)

    @property
    def graph_query_lens(self) -> tuple[int, ...]:
        """Tokens per request of the CUDA graphs both runners capture: plain decode, and the
        verification of k proposals (the target) or a catch-up (the draft)."""
        return (1, self.k_max + 1) if self.k_max > 0 else (1,)

    def set_cost_model(self, cost: SpecCostModel) -> None:
        """Replace the cost model (the prior of adaptive k) and forget measured step times."""
        self.cost = cost
        self.measured = MeasuredStepCost(cost)

    @property
    def sampler(self) -> Sampler:
        # One source of randomness for draft and target: two generators seeded alike would draw
        # the same numbers, and acceptance must not be correlated with the draft's own draw.
        return self.engine.model_runner.sampler

    # ---- bookkeeping -----------------------------------------------------------------------
    def free(self, request: Request) -> None:
        """The request finished, was aborted or preempted: its draft blocks go back."""
        seq = self.sequences.pop(request.request_id, None)
        if seq is not None and self.draft_kv is not None:
            self.draft_kv.free(seq)
        self.estimates.pop(request.request_id, None)
        self.last_k.pop(request.request_id, None)

    def check_no_leaks(self) -> None:
        if self.sequences:
            raise AssertionError(f"draft state left for requests {sorted(self.sequences)[:8]}")
        if self.draft_kv is not None:
            self.draft_kv.check_no_leaks()

    def _estimate(self, request: Request) -> AcceptanceEstimate:
        estimate = self.estimates.get(request.request_id)
        if estimate is None:
            # A seeded request starts from a fixed prior, so its k (and with it its output) does
            # not depend on what other requests taught the engine before it.
            prior = 0.7 if request.generator is not None else self.overall.rate
            estimate = self.estimates[request.request_id] = AcceptanceEstimate(prior=prior)
        return estimate

    # ---- proposing -------------------------------------------------------------------------
    def _ready(self, request: Request) -> bool:
        """Decoding, with its first token delivered and nothing pending."""
        if not (request.status is RequestStatus.RUNNING and not request.spec_token_ids
                and request.num_output_tokens > 0 and request.num_computed_tokens == request.num_tokens - 1):
            return False
        # A target with a larger (padded) vocabulary may emit an id the draft cannot embed.
        return self.draft_vocab >= self.target_vocab or max(request.all_token_ids) < self.draft_vocab

    def _cap(self, request: Request) -> int:
        """Drafts worth verifying: never past max_tokens or max_model_len."""
        k = self.k_max
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None:
            k = min(k, max_tokens - request.num_output_tokens - 1)
        return max(0, min(k, self.engine.max_model_len - request.num_tokens - 1))

    @staticmethod
    def _seeded_sampled(request: Request) -> bool:
        """A seeded sampled request's output depends on k, so its k must not depend on timings:
        it follows the cost model alone. Everything else follows measured step times."""
        return request.generator is not None and not request.sampling_params.greedy

    def _cost_for(self, request: Request) -> SpecCostModel | MeasuredStepCost:
        return self.cost if self._seeded_sampled(request) else self.measured

    def choose_k(self, request: Request, batch_size: int) -> int:
        cap = self._cap(request)
        if not self.adaptive or cap == 0:
            return cap
        return choose_num_speculative_tokens(self._estimate(request).rate, batch_size, cap, self._cost_for(request))

    @inference
    def propose(self) -> None:
        """Draft proposals for the coming step (called before scheduling)."""
        now = time.perf_counter()
        if self._coast is not None and self._coasting(now):
            return
        self._close_cycle(now)
        self._step_started, self._step_k, self._step_timed = now, 0, True
        scheduler = self.engine.scheduler
        running = scheduler.running
        if not running or self.draft_kv is None:
            return
        if scheduler.waiting and len(running) < scheduler.config.max_num_seqs:
            return  # a prompt may be admitted: its first token must not wait for draft work
        batch = len(running)
        spec_due = explore = False
        if self.adaptive:
            spec_due = self.measured.spec_step_due(batch)
            # Now and then plain steps, to time them at this batch size (MeasuredStepCost.plain_step_due).
            explore = not spec_due and self.measured.plain_step_due(batch)
            if (not spec_due and (explore or self._holds_plain(batch))  # seeded sampled requests draft anyway
                    and not any(self._seeded_sampled(r) for r in running)):
                if not explore:
                    self._start_coast(batch)
                return  # plain decoding, at the cost of these checks only
        ready = [request for request in running if self._ready(request)]
        caps = {request.request_id: self._cap(request) for request in ready}
        timed = [request for request in ready if self._cost_for(request) is self.measured]
        step_k, hold = 0, 0
        if self.adaptive and timed and not explore:
            step_k, hold = self._batch_k(batch, timed, caps, spec_due)
        plan: list[tuple[Request, int]] = []
        for request in ready:
            if not self.adaptive:
                k = caps[request.request_id]
            elif self._cost_for(request) is self.measured:
                k = min(step_k, caps[request.request_id])
            else:  # a seeded sampled request: its own k, from the cost model alone
                k = self.choose_k(request, len(running))
            if k == 0 and self.adaptive and not explore:
                # A decision for plain decoding holds steps that skip this loop (_plain_hold).
                self._estimate(request).forget(hold if hold and step_k == 0 else 1)
            self.last_k[request.request_id] = k
            if k > 0:
                plan.append((request, k))
        if plan:
            long_catch_up = self._draft(plan)
            # k draft forwards ran; a catch-up with no proposals, or one that recomputed a whole
            # prompt or many plain steps' tokens, is no sample of what k costs.
            self._step_k = max(len(r.spec_token_ids) for r, _ in plan)
            self._step_timed = self._step_k > 0 and not long_catch_up

    def _holds_plain(self, batch_size: int) -> bool:
        """Whether this bucket decodes plainly now: a decision for k = 0 still holds (_batch_k),
        or not even a perfect draft would pay here (then that holds, see _plain_hold). Either
        way the step costs a few dictionary lookups: a launch-bound model's step is well under a
        millisecond, and walking the batch every step showed as 15-75% of it."""
        bucket = self.measured.bucket(batch_size)
        held = self._step_plans.get(bucket)
        if held is not None and held[1] > 0:
            if held[0] != 0:
                return False
            self._step_plans[bucket] = (0, held[1] - 1)
            return True
        if self._cannot_pay(batch_size):
            self._step_plans[bucket] = (0, self._plain_hold(bucket) - 1)
            return True
        return False

    def _start_coast(self, batch_size: int) -> None:
        """After a step that holds plain decoding: coast through as many of the coming steps as
        the hold has left and no probe can fall due in (MeasuredStepCost.quiet_steps), while
        the batch stays as it is. A coasting step costs a comparison and an append; the run's
        timings and counts go to MeasuredStepCost in one call when it ends (observe_plain_run).
        Why: the checks and the per-step timing cost a launch-bound pair 30-40 us a step, about
        4% of a 1 ms step, which a server that drafts nothing paid in throughput (H100, demo pair)."""
        bucket = self.measured.bucket(batch_size)
        left = self._step_plans.get(bucket, (0, 0))[1]
        steps = self.measured.quiet_steps(batch_size, left)
        scheduler = self.engine.scheduler
        if (steps < 2 or scheduler.waiting
                or not all(r.num_computed_tokens == r.num_tokens - 1 for r in scheduler.running)):
            return  # too short to pay, a queue (the batch changes), or a request still prefilling
        self._step_plans[bucket] = (0, left - steps)
        # The step now starting is the run's first; its time is a sample if the step before was
        # plain at this batch size too (see MeasuredStepCost: steady state only).
        self._coast = _Coast(batch_size, steps, skip_first=self._last_arm != (bucket, False))

    def _coasting(self, now: float) -> bool:
        """Take the step starting now as part of the coast if the batch is unchanged and
        nothing waits, and steps are left; else end the coast (its last step's cycle a sample
        only if undisturbed) and hand its timings over. Whether the step was taken."""
        coast = self._coast
        undisturbed = self._undisturbed(coast.batch_size)
        if undisturbed:
            coast.seconds.append(now - self._step_started)
        else:
            coast.untimed += 1
        if undisturbed and coast.left > 0:
            coast.left -= 1
            self._step_started = now
            return True
        self._coast = None
        bucket = self.measured.bucket(coast.batch_size)
        plan = self._step_plans.get(bucket)
        if coast.left and plan is not None and plan[0] == 0:  # ended early: the hold keeps its steps
            self._step_plans[bucket] = (0, plan[1] + coast.left)
        self.measured.observe_plain_run(coast.batch_size, coast.seconds, coast.untimed,
                                        first_is_sample=not coast.skip_first)
        self._last_arm = (bucket, False) if undisturbed else None
        return False

    def _plain_hold(self, bucket: int) -> int:
        """Steps a decision for plain decoding holds: decide_every, doubled with each such
        decision in a row in this bucket, up to max_plain_hold. Why: while a bucket decodes
        plainly nothing that decides k moves but slowly (acceptance estimates drift back to
        their prior, plain times are resampled), so deciding again finds the same answer, and
        walking the batch to find it every 8 steps cost a served demo pair 0.25 ms a walk at
        batch 16 (H100). Probes (spec_step_due) still run on their own clock."""
        streak = self._plain_streak.get(bucket, 0)
        self._plain_streak[bucket] = streak + 1
        return min(self.decide_every << min(streak, 16), max(self.max_plain_hold, self.decide_every))

    def _cannot_pay(self, batch_size: int) -> bool:
        """Whether not even a perfect draft would pay at this batch size. Once both arms are
        timed here or in a bucket nearby, the measurements alone judge; before, the model too."""
        judges = (self.measured,) if self.measured.informed(batch_size) else (self.cost, self.measured)
        return all(choose_num_speculative_tokens(1.0, batch_size, self.k_max, cost) == 0 for cost in judges)

    def _batch_k(self, batch_size: int, timed: list[Request], caps: dict[str, int],
                 spec_due: bool) -> tuple[int, int]:
        """The step's k for the requests that follow measured step times (choose_step_k), and,
        if it was chosen now, the steps the choice holds (else 0). A bucket keeps a k > 0 for
        decide_every steps (acceptance rates move slowly, and choosing walks every request of
        the batch), k = 0 for longer (_plain_hold)."""
        bucket = self.measured.bucket(batch_size)
        held = self._step_plans.get(bucket)
        if held is not None and held[1] > 0 and not spec_due:
            self._step_plans[bucket] = (held[0], held[1] - 1)
            return held[0], 0
        rates = [self._estimate(r).rate for r in timed]
        timed_caps = [caps[r.request_id] for r in timed]
        step_k = choose_step_k(rates, timed_caps, batch_size, self.k_max, self.measured)
        gain = self.measured.realized_gain(batch_size)
        if step_k > 0 and gain is not None and gain < 1.0 + MIN_GAIN:
            step_k = 0  # predicted to pay, but speculation as practised here did not (the winner's curse)
        self._log_decision(batch_size, step_k, rates, gain)
        if step_k > 0:
            self._plain_streak.pop(bucket, None)
        hold = self._plain_hold(bucket) if step_k == 0 and not spec_due else self.decide_every
        self._step_plans[bucket] = (step_k, hold - 1)
        if step_k == 0 and spec_due:
            # Speculation was dropped here a while ago: time it once more, as the model would.
            step_k = choose_step_k(rates, timed_caps, batch_size, self.k_max, self.cost)
        return step_k, hold

    def _log_decision(self, batch_size: int, k: int, rates: list[float], gain: float | None) -> None:
        """Log when adaptive k turns speculation on or off for a batch-size bucket (changes only,
        so the log stays quiet while k moves between positive values)."""
        bucket = self.measured.bucket(batch_size)
        if self._decisions.get(bucket) == (k > 0):
            return
        self._decisions[bucket] = k > 0
        times = ", ".join(f"k={kk} {1e3 * t:.2f} ms" for kk, t in sorted(self.measured.points.get(bucket, {}).items()))
        if not self.measured.timed_both(batch_size) and self.measured.informed(batch_size):
            times = f"{times or 'none'}; the rest borrowed from batch size {self.measured.borrowed_from(batch_size)}"
        low, high = self.measured.bucket_span(bucket)
        logger.info("adaptive k: batch size %d-%d now drafts k=%d (mean acceptance %.2f; measured steps: %s; "
                    "recent speculation delivered %s)", low, high, k, sum(rates) / max(len(rates), 1),
                    times or "none yet", "n/a" if gain is None else f"{gain:.2f}x plain decoding")

    def _sequence(self, request: Request) -> DraftSequence:
        seq = self.sequences.get(request.request_id)
        if seq is None:
            seq = self.sequences[request.request_id] = DraftSequence(request)
        else:
            self._sync(seq, request)
        if not seq.block_ids and seq.num_computed_tokens == 0:
            seq.num_computed_tokens = self.draft_kv.lookup_prefix(seq)
        return seq

    def _reserve(self, seq: DraftSequence, num_tokens: int, keep: set[str]) -> bool:
        """Draft blocks for num_tokens tokens, evicting idle requests' draft state if needed (it is
        recomputed when they speculate again)."""
        while not self.draft_kv.allocate(seq, num_tokens):
            victim = next((s for rid, s in self.sequences.items() if rid not in keep and s.block_ids), None)
            if victim is None:
                return False
            self.draft_kv.free(victim)
            victim.num_computed_tokens = 0
        return True

    def _draft(self, plan: list[tuple[Request, int]]) -> bool:
        """Catch-up (prefill) forward, then k - 1 single-token forwards, all batched. Returns
        whether a catch-up went beyond what one verification leaves (k + 1 tokens)."""
        budget = self.engine.config.scheduler_config.max_num_batched_tokens
        keep = {request.request_id for request, _ in plan}
        catch_up: list[ScheduledRequest] = []
        drafting: list[tuple[Request, DraftSequence, int]] = []
        long_catch_up = False
        for request, k in plan:
            seq = self._sequence(request)
            missing = request.num_tokens - seq.num_computed_tokens
            long_catch_up |= missing > self.k_max + 1
            if missing > budget:
                # A long catch-up goes in chunks; this request drafts once it has caught up.
                if budget > 0 and self._reserve(seq, seq.num_computed_tokens + budget, keep):
                    catch_up.append(ScheduledRequest(seq, budget))
                    budget = 0
                continue
            if not self._reserve(seq, request.num_tokens + k - 1, keep):
                continue
            catch_up.append(ScheduledRequest(seq, missing))
            budget -= missing
            drafting.append((request, seq, k))
        if not catch_up:
            return long_catch_up
        output = self.draft_runner.execute(SchedulerOutput(scheduled=catch_up))
        for item in catch_up:
            item.request.num_computed_tokens += item.num_new_tokens
            self.draft_kv.cache_computed_blocks(item.request)  # committed tokens only, so far
        if self.draft_on_device and not self.draft_runner.parallel.mirrored and all(
                self._argmax_draft(request) for request, _, _ in drafting):
            self._draft_argmax_on_device(output, drafting)
        else:
            self._take_proposals(output, drafting)
            active = drafting
            for step in range(1, max((k for _, _, k in drafting), default=0)):
                active = [d for d in active if d[2] > step]
                for _, seq, _ in active:
                    seq.all_token_ids.append(seq.proposals[-1])
                output = self.draft_runner.execute(
                    SchedulerOutput(scheduled=[ScheduledRequest(seq, 1) for _, seq, _ in active]))
                for _, seq, _ in active:
                    seq.num_computed_tokens += 1
                self._take_proposals(output, active)
            for _, seq, _ in drafting:
                seq.all_token_ids.append(seq.proposals[-1])  # kept for _sync; its K/V is never computed
        for request, seq, _ in drafting:
            request.spec_token_ids = list(seq.proposals)
        return long_catch_up

    @staticmethod
    def _argmax_draft(request: Request) -> bool:
        """A proposal that is the draft's raw argmax: greedy, and nothing (penalties, min_tokens)
        that depends on the proposals before it."""
        return request.sampling_params.greedy and not needs_penalties(request)

    def _draft_argmax_on_device(self, output: RunnerOutput, drafting: list[tuple[Request, DraftSequence, int]]) -> None:
        """The k - 1 single-token draft steps of a greedy batch with the proposals kept on the
        device: each step's argmax is the next step's input, so the host queues every step
        without waiting for one to finish, and reads all proposals back once at the end.

        Why: a step's host work (its inputs, the launch) is about as long as the draft's forward
        itself; waiting for each proposal would put the two in series k times per step. Requests
        run longest k first, so the ones still drafting at a step are a prefix of the batch."""
        if not drafting:
            return
        drafting = sorted(drafting, key=lambda d: -d[2])
        device = output.logits.device
        rows = torch.tensor([output.inputs.sample_rows[seq.request_id][-1] for _, seq, _ in drafting])
        logits = output.logits.index_select(0, rows.to(device, non_blocking=True))
        tokens = [self._to_target_vocab(logits).argmax(dim=-1)]
        base = [seq.num_tokens for _, seq, _ in drafting]
        for step in range(1, drafting[0][2]):
            active = [seq for _, seq, k in drafting if k > step]
            for seq in active:
                seq.all_token_ids.append(0)  # a placeholder: the token is on the device
            output = self.draft_runner.execute(SchedulerOutput(scheduled=[ScheduledRequest(seq, 1) for seq in active]),
                                               input_ids=tokens[-1][: len(active)])
            for seq in active:
                seq.num_computed_tokens += 1
            tokens.append(self._to_target_vocab(output.logits).argmax(dim=-1))
        flat = torch.cat(tokens).tolist()  # the one wait for the device
        at = 0
        per_step: list[list[int]] = []
        for step_tokens in tokens:
            per_step.append(flat[at : at + step_tokens.shape[0]])
            at += step_tokens.shape[0]
        for i, ((_, seq, k), start) in enumerate(zip(drafting, base)):
            seq.proposals = [per_step[step][i] for step in range(k)]
            seq.all_token_ids[start:] = seq.proposals  # placeholders, then the last (kept for _sync)

    def _take_proposals(self, output: RunnerOutput, drafting: list[tuple[Request, DraftSequence, int]]) -> None:
        """Sample one draft token per request from the draft's distribution, processed exactly as
        the target's will be (penalties with the proposals so far, temperature, filters)."""
        if not drafting:
            return
        rows = torch.tensor([output.inputs.sample_rows[seq.request_id][-1] for _, seq, _ in drafting],
                            device=output.logits.device)
        logits = self._to_target_vocab(output.logits.index_select(0, rows))
        views = [_Lookahead(request, seq.proposals) for request, seq, _ in drafting]
        greedy = [v.sampling_params.greedy for v in views]
        if all(greedy) and not any(needs_penalties(v) for v in views):
            tokens, probs = logits.argmax(dim=-1), None
        else:
            processed = self.sampler.processed_logits(logits, views)
            argmax = processed.argmax(dim=-1)
            if all(greedy):
                tokens, probs = argmax, None
            else:
                probs = processed.softmax(dim=-1)
                sampled = (probs / self.sampler.random_noise(tuple(probs.shape), views)).argmax(dim=-1)
                tokens = torch.where(torch.tensor(greedy, device=argmax.device), argmax, sampled)
        for row, ((request, seq, _), token) in enumerate(zip(drafting, tokens.tolist())):
            seq.proposals.append(token)
            if probs is not None and not greedy[row]:
                seq.draft_probs.append(probs[row])

    def _to_target_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """A padded draft vocabulary is cut to the target's; a smaller one is padded with -inf
        (ids the draft cannot propose)."""
        width = logits.shape[-1]
        if width > self.target_vocab:
            return logits[:, : self.target_vocab]
        if width < self.target_vocab:
            pad = logits.new_full((logits.shape[0], self.target_vocab - width), float("-inf"))
            return torch.cat([logits, pad], dim=-1)
        return logits

    # ---- verifying -------------------------------------------------------------------------
    @inference
    def execute(self, sched: SchedulerOutput) -> "StepResult":
        from octavo.runtime.engine import StepResult

        engine = self.engine
        runner = engine.model_runner
        output = runner.execute(sched)
        if output.inputs.prompt_rows:
            for item in sched.scheduled:
                if item.request.request_id in output.inputs.prompt_rows:
                    engine._add_prompt_logprobs(item.request, runner.prompt_logprobs(output, item.request))
        plain: list[Request] = []
        speculated: list[ScheduledRequest] = []
        for item in sched.scheduled:  # one pass: a plain step of a large batch walks it once
            if item.num_spec_tokens:
                speculated.append(item)
            elif item.completes_sequence:
                plain.append(item.request)
        result = StepResult(tokens={rid: [row] for rid, row in runner.sample(output, plain).items()})
        if speculated:
            self._verify(output, speculated, result)
        # Tokens emitted over the batch (one per request on a plain step: no walk on the hot path).
        self._step_tokens = sum(len(rows) for rows in result.tokens.values()) if speculated else len(result.tokens)
        return result

    def _verify(self, output: RunnerOutput, items: list[ScheduledRequest], result: "StepResult") -> None:
        device = output.logits.device
        requests = [item.request for item in items]
        counts = [item.num_spec_tokens for item in items]
        k = max(counts)
        row_index = [r for item in items for r in output.inputs.sample_rows[item.request.request_id]]
        raw = output.logits.index_select(0, torch.tensor(row_index).to(device, non_blocking=True))
        views = [_Lookahead(request, request.spec_token_ids[:i]) for request, n in zip(requests, counts)
                 for i in range(n + 1)]
        if all(v.sampling_params.greedy and not needs_penalties(v) for v in views):
            processed = raw
        else:
            processed = self.sampler.processed_logits(raw, views)
        starts = [0]
        for n in counts:
            starts.append(starts[-1] + n + 1)
        draft_tokens = torch.full((len(items), k), -1, dtype=torch.int64)
        for b, (request, n) in enumerate(zip(requests, counts)):
            draft_tokens[b, :n] = torch.tensor(request.spec_token_ids[:n])
        draft_tokens = draft_tokens.to(device, non_blocking=True)
        num_draft = torch.tensor(counts).to(device, non_blocking=True)
        greedy = [request.sampling_params.greedy for request in requests]

        num_accepted = [0] * len(items)
        emitted: list[list[int]] = [[] for _ in items]
        greedy_rows = [b for b, g in enumerate(greedy) if g]
        if greedy_rows:
            # Row b's k + 1 argmaxes in one gather; past its own count it repeats its last row
            # (greedy_verify never reads past num_draft).
            gather = torch.tensor([[starts[b] + min(i, counts[b]) for i in range(k + 1)] for b in greedy_rows])
            target_argmax = processed.argmax(dim=-1)[gather.to(device, non_blocking=True)]
            index = torch.tensor(greedy_rows).to(device, non_blocking=True)
            verdict = greedy_verify(target_argmax, draft_tokens[index], num_draft[index])
            self._collect(verdict, greedy_rows, num_accepted, emitted)
        sampled_rows = [b for b, g in enumerate(greedy) if not g]
        if sampled_rows:
            vocab = processed.shape[-1]
            target_probs = torch.zeros((len(sampled_rows), k + 1, vocab), device=device)
            draft_probs = torch.zeros((len(sampled_rows), k, vocab), device=device)
            for i, b in enumerate(sampled_rows):
                n = counts[b]
                target_probs[i, : n + 1] = processed[starts[b] : starts[b + 1]].softmax(dim=-1)
                seq = self.sequences[requests[b].request_id]
                draft_probs[i, :n] = torch.stack(seq.draft_probs[:n])
            chosen = [requests[b] for b in sampled_rows]
            uniform, recovery = self._noise(chosen, k, vocab, device)
            index = torch.tensor(sampled_rows, device=device)
            verdict = rejection_sample(target_probs, draft_probs, draft_tokens[index], uniform, recovery,
                                       num_draft[index])
            self._collect(verdict, sampled_rows, num_accepted, emitted)

        # Log-probabilities are the target's raw ones at each emitted position, as without drafts.
        owners = [requests[b] for b, tokens in enumerate(emitted) for _ in tokens]
        if all(request.sampling_params.logprobs is None for request in requests):
            described = [SampledRow(token_id=t) for tokens in emitted for t in tokens]
        else:
            describe_rows = [starts[b] + i for b, tokens in enumerate(emitted) for i in range(len(tokens))]
            chosen_ids = torch.tensor([t for tokens in emitted for t in tokens], device=device)
            described = Sampler.describe(raw.index_select(0, torch.tensor(describe_rows, device=device)),
                                         chosen_ids, owners)
        stats = self.engine.stats
        at = 0
        for b, request in enumerate(requests):
            rows: list[SampledRow] = described[at : at + len(emitted[b])]
            at += len(emitted[b])
            accepted, drafted = num_accepted[b], counts[b]
            result.tokens[request.request_id] = rows
            result.num_rejected[request.request_id] = drafted - accepted
            metrics = request.metrics
            metrics.spec_num_draft_tokens += drafted
            metrics.spec_num_accepted_tokens += accepted
            metrics.spec_num_steps += 1
            stats.spec_draft_tokens += drafted
            stats.spec_accepted_tokens += accepted
            stats.spec_emitted_tokens += accepted + 1
            self._estimate(request).observe(accepted, drafted)
            self.overall.observe(accepted, drafted)

    @staticmethod
    def _collect(verdict: VerifyResult, rows: list[int], num_accepted: list[int], emitted: list[list[int]]) -> None:
        accepted = verdict.num_accepted.tolist()
        tokens = verdict.output_tokens.tolist()
        for i, b in enumerate(rows):
            num_accepted[b] = accepted[i]
            emitted[b] = tokens[i][: accepted[i] + 1]

    def _noise(self, requests: list[Request], k: int, vocab: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Acceptance uniforms and the final token's exponential race noise; a seeded request's
        rows come from its own generator."""
        generator = self.sampler.generator
        uniform = torch.rand((len(requests), k), generator=generator, device=device)
        recovery = torch.empty((len(requests), vocab), device=device).exponential_(generator=generator)
        for row, request in enumerate(requests):
            if request.generator is not None:
                uniform[row].uniform_(0.0, 1.0, generator=request.generator)
                recovery[row].exponential_(generator=request.generator)
        return uniform, recovery

    # ---- after the step --------------------------------------------------------------------
    def after_step(self, sched: SchedulerOutput) -> None:
        """Roll both caches back to what was accepted (the engine has already appended the tokens
        and moved num_computed_tokens). A request that did not speculate keeps its draft state as
        it is: the next proposal brings it up to date (_sequence)."""
        if self._coast is not None:
            return  # a coasting plain step: nothing to roll back, its time goes with the run's
        if sched.scheduled and all(item.num_new_tokens - item.num_spec_tokens == 1 for item in sched.scheduled):
            # A decode-only step: its cycle time (ended by the next step, _close_cycle) says what
            # k draft steps cost at this batch size, if it ran in steady state.
            arm = (self.measured.bucket(len(sched.scheduled)), self._step_k > 0)
            steady = self._step_timed and arm == self._last_arm
            self._cycle = (len(sched.scheduled), self._step_k, self._step_started, steady, self._step_tokens)
            self._last_arm = arm
        else:
            self._last_arm = None
        for item in sched.scheduled:
            request = item.request
            if not item.num_spec_tokens or request.is_finished:
                continue
            self.engine.kv_cache.truncate(request, request.num_computed_tokens)
            seq = self.sequences.get(request.request_id)
            if seq is not None:
                self._sync(seq, request)

    def _undisturbed(self, batch_size: int) -> bool:
        """Whether the step now starting sees the batch the last one ran (nothing to admit, none
        finished or aborted): only then is the last step's cycle a time of its own."""
        scheduler = self.engine.scheduler
        return not scheduler.waiting and len(scheduler.running) == batch_size

    def _close_cycle(self, now: float) -> None:
        """The last decode step's cycle ends as this step starts: a sample of its k if it ran in
        steady state and nothing else came between (new requests to admit, requests that
        finished or were aborted: the batch the next step sees is another), else only counted."""
        cycle, self._cycle = self._cycle, None
        if cycle is None:
            return
        batch, k, started, sample, tokens = cycle
        undisturbed = self._undisturbed(batch)
        if sample and undisturbed:
            self.measured.observe(batch, k, now - started, tokens)
        else:  # a probe's catch-up step is no sample, but its time is charged to exploring
            self.measured.count(batch, k, now - started if undisturbed else None)

    def _sync(self, seq: DraftSequence, request: Request) -> None:
        """Keep the draft K/V of every position whose token (and so every token before it) is
        still the request's; drop the rest, and take the request's new tokens as committed."""
        tokens, truth = seq.all_token_ids, request.all_token_ids
        valid = seq.num_committed
        limit = min(len(tokens), len(truth))
        while valid < limit and tokens[valid] == truth[valid]:
            valid += 1
        # The last token is always fed to the draft again: its logits start the next proposal.
        seq.num_computed_tokens = min(seq.num_computed_tokens, valid, len(truth) - 1)
        del tokens[valid:]
        tokens.extend(truth[valid:])
        seq.num_committed = len(tokens)
        seq.proposals = []
        seq.draft_probs = []
        self.draft_kv.truncate(seq, seq.num_computed_tokens)
