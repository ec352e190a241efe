"""A draft model proposes: a small model of the target's tokenizer, with its own paged KV cache.

Per step the draft catches up, batched, on the tokens it has not computed (a prefill the first
time, the last step's accepted tokens after that), then runs k - 1 single-token steps. Its KV is
computed lazily: after steps without speculation the next catch-up covers the gap, so a draft not
consulted costs nothing. Its prefix cache hashes only tokens the target has committed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import torch
from torch import nn
from torch.nn import functional as F

from octavo.runtime.config import EngineConfig, ModelConfig, SpeculativeConfig
from octavo.runtime.inference import inference
from octavo.runtime.kv_cache import KVCacheManager
from octavo.runtime.model_runner import ModelRunner, RunnerOutput
from octavo.runtime.request import Request
from octavo.runtime.sampler import Lookahead, Sampler, needs_penalties
from octavo.runtime.scheduler import ScheduledRequest, SchedulerOutput
from octavo.runtime.spec.proposer import Proposer

logger = logging.getLogger("octavo")


class DraftSequence:
    """A request as the draft's runner and KV cache see it (Request's attribute names):
    `all_token_ids` holds its committed tokens, then the current proposals, and
    `num_computed_tokens` counts the positions whose K/V the draft holds."""

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
        self.proposals: list[int] = []
        self.draft_probs: list[torch.Tensor] = []  # per proposal, the distribution it was drawn from

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)


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


def streamed_weights(model: nn.Module) -> int:
    """Parameters a decode forward reads in full: everything but embedding tables (a forward
    gathers a few rows), plus the output head when it is the tied token embedding."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    total -= sum(m.weight.numel() for m in embeddings)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and embeddings:
        total += max(m.weight.numel() for m in embeddings)
    return max(total, 1)


class DraftModelProposer(Proposer):
    def __init__(self, config: SpeculativeConfig, engine_config: EngineConfig, target_runner: ModelRunner,
                 sampler: Sampler) -> None:
        draft_config = config.draft_model_config
        check_pair(engine_config.model_config, draft_config)
        self.engine_config = engine_config
        self.k_max = config.num_speculative_tokens
        # One source of randomness for draft and target: two generators seeded alike would draw
        # the same numbers, and acceptance must not be correlated with the draft's own draw.
        self.sampler = sampler
        self.target_vocab = engine_config.model_config.vocab_size
        self.draft_vocab = draft_config.vocab_size
        self.runner = ModelRunner(draft_config, engine_config.cache_config, engine_config.scheduler_config,
                                  engine_config.device, enforce_eager=engine_config.enforce_eager,
                                  piecewise_cuda_graphs=engine_config.piecewise_cuda_graphs)
        self.draft_cost_ratio = streamed_weights(self.runner.model) / streamed_weights(target_runner.model)
        self.on_device = not self.runner.parallel.mirrored  # greedy drafts chained on the device
        self.kv: KVCacheManager | None = None
        self.sequences: dict[str, DraftSequence] = {}
        logger.info("speculative decoding: draft %s, k <= %d, draft/target weights %.3f",
                    draft_config.model, self.k_max, self.draft_cost_ratio)

    def kv_bytes_per_block(self) -> int:
        return self.runner.bytes_per_block()

    def initialize(self, num_blocks: int) -> None:
        """As many blocks as the target (the draft's tokens never outnumber the target's); CUDA
        graphs for single-token steps and for catch-ups of up to k + 1 tokens."""
        cache_config = dataclasses.replace(self.engine_config.cache_config, num_gpu_blocks=num_blocks)
        self.runner.cache_config = cache_config
        self.runner.initialize_kv_cache()
        self.runner.capture_cuda_graphs((1, self.k_max + 1))
        self.kv = KVCacheManager(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)

    def shutdown(self) -> None:
        self.runner.release_cuda_graphs()

    def free(self, request: Request) -> None:
        seq = self.sequences.pop(request.request_id, None)
        if seq is not None:
            self.kv.free(seq)

    def check_no_leaks(self) -> None:
        if self.sequences:
            raise AssertionError(f"draft state left for requests {sorted(self.sequences)[:8]}")
        self.kv.check_no_leaks()

    def draft_probs(self, request: Request) -> torch.Tensor | None:
        seq = self.sequences.get(request.request_id)
        return torch.stack(seq.draft_probs) if seq is not None and seq.draft_probs else None

    def commit(self, request: Request) -> None:
        """Keep the draft K/V of every position whose token (and every token before it) is still
        the request's; drop the rest, and take the request's new tokens as committed."""
        seq = self.sequences.get(request.request_id)
        if seq is None:
            return
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
        seq.proposals, seq.draft_probs = [], []
        self.kv.truncate(seq, seq.num_computed_tokens)

    def _sequence(self, request: Request) -> DraftSequence:
        self.commit(request)  # nothing to commit for a request new to the draft
        if request.request_id not in self.sequences:
            self.sequences[request.request_id] = DraftSequence(request)
        seq = self.sequences[request.request_id]
        if not seq.block_ids and seq.num_computed_tokens == 0:
            seq.num_computed_tokens = self.kv.lookup_prefix(seq)
        return seq

    def _reserve(self, seq: DraftSequence, num_tokens: int, keep: set[str]) -> bool:
        """Draft blocks for num_tokens tokens, evicting other requests' draft state if needed (it
        is recomputed when they speculate again)."""
        while not self.kv.allocate(seq, num_tokens):
            victim = next((s for rid, s in self.sequences.items() if rid not in keep and s.block_ids), None)
            if victim is None:
                return False
            self.kv.free(victim)
            victim.num_computed_tokens = 0
        return True

    @inference
    def propose(self, plan: list[tuple[Request, int]]) -> None:
        """Catch-up forward, then k - 1 single-token forwards, all batched."""
        budget = self.engine_config.scheduler_config.max_num_batched_tokens
        keep = {request.request_id for request, _ in plan}
        catch_up: list[ScheduledRequest] = []
        drafting: list[tuple[Request, DraftSequence, int]] = []
        for request, k in plan:
            if self.draft_vocab < self.target_vocab and max(request.all_token_ids) >= self.draft_vocab:
                continue  # a target with a larger (padded) vocabulary emitted an id the draft cannot embed
            seq = self._sequence(request)
            # A long catch-up goes in chunks; the request drafts once it has caught up.
            missing = request.num_tokens - seq.num_computed_tokens
            chunk = min(missing, budget)
            need = request.num_tokens + k - 1 if chunk == missing else seq.num_computed_tokens + chunk
            if chunk == 0 or not self._reserve(seq, need, keep):
                continue
            catch_up.append(ScheduledRequest(seq, chunk))
            budget -= chunk
            if chunk == missing:
                drafting.append((request, seq, k))
        if not catch_up:
            return
        output = self.runner.execute(SchedulerOutput(scheduled=catch_up))
        for item in catch_up:
            item.request.num_computed_tokens += item.num_new_tokens
            self.kv.cache_computed_blocks(item.request)  # committed tokens only, so far
        if not drafting:
            return  # this step only advanced long catch-ups
        if self.on_device and all(r.sampling_params.greedy and not needs_penalties(r) for r, _, _ in drafting):
            self._argmax_on_device(output, drafting)
        else:
            self._sample_on_host(output, drafting)
        for request, seq, _ in drafting:
            request.spec_token_ids = list(seq.proposals)

    def _argmax_on_device(self, output: RunnerOutput, drafting: list[tuple[Request, DraftSequence, int]]) -> None:
        """Greedy drafts: each step's argmax is the next step's input on the device, so the host
        queues every step and reads all proposals back once. Why: a step's host work is about as
        long as the draft's forward; waiting for each proposal would put the two in series k times
        a step. Requests run longest k first: those still drafting at a step are a batch prefix."""
        drafting = sorted(drafting, key=lambda d: -d[2])
        rows = torch.tensor([output.inputs.sample_rows[seq.request_id][-1] for _, seq, _ in drafting],
                            device=output.logits.device)
        tokens = [self._to_target_vocab(output.logits.index_select(0, rows)).argmax(dim=-1)]
        base = [seq.num_tokens for _, seq, _ in drafting]
        for step in range(1, drafting[0][2]):
            active = [seq for _, seq, k in drafting if k > step]
            for seq in active:
                seq.all_token_ids.append(0)  # a placeholder: the token is on the device
            output = self.runner.execute(SchedulerOutput(scheduled=[ScheduledRequest(seq, 1) for seq in active]),
                                         input_ids=tokens[-1][: len(active)])
            for seq in active:
                seq.num_computed_tokens += 1
            tokens.append(self._to_target_vocab(output.logits).argmax(dim=-1))
        flat = torch.cat(tokens).tolist()  # the one wait for the device
        offsets = [0, *itertools.accumulate(len(step_tokens) for step_tokens in tokens)]
        for i, ((_, seq, k), start) in enumerate(zip(drafting, base)):
            seq.proposals = [flat[offsets[step] + i] for step in range(k)]
            seq.all_token_ids[start:] = seq.proposals  # placeholders, then the last (kept for commit)

    def _sample_on_host(self, output: RunnerOutput, drafting: list[tuple[Request, DraftSequence, int]]) -> None:
        self._take_proposals(output, drafting)
        for step in range(1, max(k for _, _, k in drafting)):
            active = [d for d in drafting if d[2] > step]
            for _, seq, _ in active:
                seq.all_token_ids.append(seq.proposals[-1])
            output = self.runner.execute(SchedulerOutput(scheduled=[ScheduledRequest(seq, 1) for _, seq, _ in active]))
            for _, seq, _ in active:
                seq.num_computed_tokens += 1
            self._take_proposals(output, active)
        for _, seq, _ in drafting:
            seq.all_token_ids.append(seq.proposals[-1])  # kept for commit; its K/V is never computed

    def _take_proposals(self, output: RunnerOutput, drafting: list[tuple[Request, DraftSequence, int]]) -> None:
        """One draft token per request from the draft's distribution, processed exactly as the
        target's will be (penalties with the proposals so far, temperature, filters)."""
        rows = torch.tensor([output.inputs.sample_rows[seq.request_id][-1] for _, seq, _ in drafting],
                            device=output.logits.device)
        logits = self._to_target_vocab(output.logits.index_select(0, rows))
        views = [Lookahead(request, seq.proposals) for request, seq, _ in drafting]
        greedy = [v.sampling_params.greedy for v in views]
        if all(greedy) and not any(needs_penalties(v) for v in views):
            tokens, probs = logits.argmax(dim=-1), None  # filters never drop the best token
        else:
            processed = self.sampler.processed_logits(logits, views)
            probs = None if all(greedy) else processed.softmax(dim=-1)
            tokens = self.sampler.choose(processed, views, probs)
        for row, ((_, seq, _), token) in enumerate(zip(drafting, tokens.tolist())):
            seq.proposals.append(token)
            if not greedy[row]:
                seq.draft_probs.append(probs[row])

    def _to_target_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """A padded draft vocabulary is cut to the target's (F.pad crops by a negative width); a
        smaller one is padded with -inf (ids the draft cannot propose)."""
        missing = self.target_vocab - logits.shape[-1]
        return F.pad(logits, (0, missing), value=float("-inf")) if missing else logits


PROPOSER = DraftModelProposer
