"""Continuous batching: which requests run this step, and how many tokens each computes.

One token budget per step (`max_num_batched_tokens`) and a cap on concurrent requests
(`max_num_seqs`). Running requests are served first (decodes, then unfinished prompt chunks), so a
long prompt arriving never starves them; waiting requests are admitted in arrival order (FCFS) with
whatever budget is left, their prompts split into chunks when chunked prefill is on. When KV blocks
run out, the most recently admitted running request is preempted: its blocks are freed and it is
recomputed later (its prefix blocks often survive in the prefix cache).

A preemption throws away the victim's computed tokens. `kv_reserve_ratio` > 0 makes admission
look ahead instead (as SGLang's scheduler does with its new-token ratio): a prompt is admitted only
if the blocks left free afterwards cover that share of what every running request, and the new
one, may still append (up to its max_tokens, counted at most `kv_reserve_clip_tokens`). At 1 a
batch whose requests run to max_tokens never preempts; at 0 admission takes whatever fits now.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from octavo.runtime.config import SchedulerConfig
from octavo.runtime.kv_cache import KVCacheManager
from octavo.runtime.request import Request, RequestStatus

logger = logging.getLogger("octavo")


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # tokens whose K/V this step computes, draft proposals included
    num_spec_tokens: int = 0  # how many of those are draft proposals being verified

    @property
    def completes_sequence(self) -> bool:
        """True when this step reaches the request's last known token, so it samples."""
        req = self.request
        return req.num_computed_tokens + self.num_new_tokens - self.num_spec_tokens >= req.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    # Requests finished by the scheduler itself (a sequence longer than the whole cache).
    finished: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # n > 1: siblings held back until the first sibling has computed the shared prompt.
        self.held_siblings: dict[str, list[Request]] = {}

    # ---- queue management --------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        source = request.prefix_source
        if source is not None and not source.is_finished and source.num_computed_tokens < source.num_prompt_tokens:
            self.held_siblings.setdefault(source.request_id, []).append(request)
        else:
            self.waiting.append(request)

    def release_siblings(self, source: Request) -> None:
        """Let the source's siblings in, ahead of later arrivals (they arrived with it)."""
        for sibling in reversed(self.held_siblings.pop(source.request_id, [])):
            self.waiting.appendleft(sibling)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """Stop a request for good and return its blocks."""
        if request.is_finished:
            return
        request.status = status
        request.metrics.finished_time = time.monotonic()
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        held = self.held_siblings.get(request.prefix_source.request_id if request.prefix_source else "", [])
        if request in held:
            held.remove(request)
        self.kv_cache.free(request)
        self.release_siblings(request)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + sum(len(v) for v in self.held_siblings.values())

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_slot(self) -> bool:
        """A request waits and the batch has room for one more sequence (max_num_seqs)."""
        return bool(self.waiting) and len(self.running) < self.config.max_num_seqs

    def can_admit(self) -> bool:
        """Whether a waiting request may start now (the engine asks, so that a step that can admit
        a prompt carries no draft work): a slot, and with kv_reserve_ratio, free blocks beyond
        what the running requests hold back."""
        if not self.has_slot():
            return False
        return not self.config.kv_reserve_ratio or self.kv_cache.num_free_blocks > self._reserved_blocks()

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.held_siblings)

    # ---- the decision ------------------------------------------------------------------------
    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.metrics.num_preemptions += 1
        self.waiting.appendleft(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        max_len = self.config.max_model_len

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            if request.finishing:  # ends once its last token is read back: nothing more to compute
                index += 1
                continue
            num_real = request.num_tokens - request.num_computed_tokens
            num_spec = min(len(request.spec_token_ids), max(0, max_len - request.num_tokens))
            num_new = min(num_real + num_spec, budget)
            num_spec = max(0, num_new - num_real)
            while not self.kv_cache.allocate(request, request.num_computed_tokens + num_new):
                victim = self.running.pop()
                if victim is request and not self.running:
                    # Alone and still too big for the whole cache: it can never finish.
                    logger.warning("request %s needs more KV blocks than the cache holds; stopping it",
                                   request.request_id)
                    self.running.append(request)
                    out.finished.append(request)
                    break
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            if request.status is RequestStatus.PREEMPTED or request in out.finished:
                break
            request.spec_token_ids = request.spec_token_ids[:num_spec]
            out.scheduled.append(ScheduledRequest(request, num_new, num_spec))
            budget -= num_new
            index += 1

        ratio = self.config.kv_reserve_ratio
        reserved = self._reserved_blocks() if ratio and self.has_slot() else 0.0
        while self.has_slot() and budget > 0 and not out.preempted:
            request = self.waiting[0]
            if not request.block_ids:
                num_cached = self.kv_cache.lookup_prefix(request)
                request.num_computed_tokens = num_cached
                if request.metrics.first_scheduled_time is None:
                    request.metrics.num_cached_tokens = num_cached
            num_new = request.num_tokens - request.num_computed_tokens
            if num_new > budget and not self.config.enable_chunked_prefill:
                self._undo_lookup(request)
                break
            num_new = min(num_new, budget)
            if ratio:
                chunk = self.kv_cache.blocks_needed(request, request.num_computed_tokens + num_new)
                own = ratio * (self._blocks_to_finish(request) - chunk)
                if self.running and self.kv_cache.num_free_blocks - chunk < reserved + own:
                    self._undo_lookup(request)
                    break
                reserved += own
            if not self.kv_cache.allocate(request, request.num_computed_tokens + num_new):
                self._undo_lookup(request)
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = time.monotonic()
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, num_new, 0))
            budget -= num_new
        return out

    def _reserved_blocks(self) -> float:
        """The free blocks admission holds back for the running requests' remaining output."""
        return self.config.kv_reserve_ratio * sum(map(self._blocks_to_finish, self.running))

    def _blocks_to_finish(self, request: Request) -> int:
        """Blocks the request still needs to hold every token it may reach: its prompt, and its
        remaining output up to max_tokens (at most kv_reserve_clip_tokens of it) and max_model_len."""
        growth = min(self.config.kv_reserve_clip_tokens, self.config.max_model_len - request.num_tokens)
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None:
            growth = min(growth, max_tokens - request.num_output_tokens)
        final = request.num_tokens + max(growth, 0)
        return self.kv_cache.blocks_needed(request, final)

    def _undo_lookup(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.num_computed_tokens = 0
