"""SchedulerOutput -> flat tensors -> model forward -> logits -> sampled tokens.

All scheduled requests' new tokens are concatenated into one batch of T tokens; per token a
position and a cache slot, per request a block table row, a query start and a context length.
Only the positions that need a distribution (the last one of a request that reaches its end, every
verified position under speculation, prompt positions for prompt_logprobs) go through the LM head.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from octavo.runtime.block_table import BlockTableRows
from octavo.runtime.collective_timing import time_all_reduce
from octavo.runtime.config import CacheConfig, ModelConfig, SchedulerConfig
from octavo.runtime.cuda_graphs import GraphBuffers, StepGraph, capture_keys, graph_key
from octavo.runtime.distributed import SINGLE, RunnerParallel, TPGroup, building_with, current_runner_parallel, ping
from octavo.runtime.host_staging import host_tensor, stage, to_device
from octavo.runtime.inference import inference
from octavo.runtime.layers.attention import AttentionMetadata
from octavo.runtime.loader import init_dummy_weights, load_weights
from octavo.runtime.models.registry import model_class, supports_tensor_parallel
from octavo.runtime.piecewise_graphs import PiecewiseGraphs
from octavo.runtime.request import Request
from octavo.runtime.sampler import SampledRow, Sampler
from octavo.runtime.scheduler import SchedulerOutput
from octavo.runtime.structured.bitmask import apply_token_bitmask

logger = logging.getLogger("octavo")

SPEC_GRAPH_MAX_BATCH = 64  # largest batch with multi-token (speculative) graphs

CPU_KV_CACHE_BYTES = 1 << 30  # default KV budget on a CPU when none is given


def build_model(model_config: ModelConfig, device: torch.device, tp: TPGroup = SINGLE) -> torch.nn.Module:
    """The model (this rank's shard of it under tensor parallelism), weights loaded."""
    cls = model_class(model_config.architecture)
    if tp.size > 1 and not supports_tensor_parallel(model_config.architecture):
        raise ValueError(f"{model_config.architecture} does not support tensor_parallel_size > 1: use 1")
    # A shard is built straight in the model's dtype (a float32 transient of a 70B shard would not
    # fit beside it); unsplit models keep their float32-then-cast construction.
    saved_dtype = torch.get_default_dtype()
    if tp.size > 1 and model_config.dtype.is_floating_point:
        torch.set_default_dtype(model_config.dtype)
    try:
        with torch.device(device), building_with(tp):
            model = cls(model_config.hf_config, max_positions=model_config.max_model_len)
    finally:
        torch.set_default_dtype(saved_dtype)
    model.to(dtype=model_config.dtype)
    if model_config.load_format == "dummy":
        init_dummy_weights(model, model_config.seed + 7919 * tp.rank)  # each shard its own draw
        if model_config.partial_checkpoint:
            load_weights(model, model_config.model, partial=True)
    else:
        load_weights(model, model_config.model)
    return model.eval()


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # rows of the hidden states that go through the LM head
    # request id -> rows (into the logits) of the positions it samples from, in order
    sample_rows: dict[str, list[int]] = field(default_factory=dict)
    # request id -> (first prompt position, rows) for prompt logprobs
    prompt_rows: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    # The same batch as CPU tensors (what tensor-parallel workers are sent), decode_only and the
    # (min, max) tokens a request has in the step.
    host: dict | None = None
    # Every token's row goes through the LM head, in order (a decode step): no gather.
    logits_all: bool = False

    @classmethod
    def from_host(cls, host: dict, device: torch.device, **rows) -> "StepInputs":
        """The step on `device`; `host` may hold numpy arrays (as a worker receives it) and is
        kept as CPU tensors."""
        host = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
        names = ("input_ids", "positions", "slot_mapping", "query_start_loc", "seq_lens", "block_tables",
                 "logits_indices")
        put = dict(zip(names, stage([host[name] for name in names], device)))
        meta = AttentionMetadata(slot_mapping=put["slot_mapping"], query_start_loc=put["query_start_loc"],
                                 seq_lens=put["seq_lens"], block_tables=put["block_tables"],
                                 decode_only=bool(host["decode_only"]))
        # logits_indices rises strictly within the step's tokens: as many as tokens is every row.
        logits_all = host["logits_indices"].numel() == host["input_ids"].numel()
        return cls(input_ids=put["input_ids"], positions=put["positions"], meta=meta,
                   logits_indices=put["logits_indices"], host=host, logits_all=logits_all, **rows)


@dataclass
class RunnerOutput:
    logits: torch.Tensor  # [rows, vocab] float32
    inputs: StepInputs


class ModelRunner:
    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 scheduler_config: SchedulerConfig, device: torch.device, enforce_eager: bool = False,
                 parallel: RunnerParallel | None = None, piecewise_cuda_graphs: bool = False) -> None:
        self.model_config = model_config
        # Tensor parallel: this rank's group; on rank 0, the workers every call is mirrored to.
        self.parallel = parallel if parallel is not None else current_runner_parallel()
        self.enforce_eager = enforce_eager or device.type != "cuda"
        self.graphs: dict[tuple[int, int], StepGraph] = {}  # (batch size, tokens per request)
        self.graph_buffers: GraphBuffers | None = None
        self.piecewise_cuda_graphs = piecewise_cuda_graphs  # capture them (cudagraph_mode FULL_AND_PIECEWISE)
        self.piecewise: PiecewiseGraphs | None = None
        self.cache_config = cache_config
        self.scheduler_config = scheduler_config
        self.device = device
        self.block_size = cache_config.block_size
        self.block_rows = BlockTableRows(max(64, scheduler_config.max_num_seqs))
        start = time.perf_counter()
        self.model = build_model(model_config, device, self.parallel.group)
        ping(self.parallel)  # every rank's shard is built before the first collective
        logger.info("loaded %s (%s%s) in %.1fs", model_config.architecture, model_config.dtype,
                    f", tensor parallel {self.parallel.group.size}" if self.parallel.group.size > 1 else "",
                    time.perf_counter() - start)
        self.sampler = Sampler(device, model_config.seed)
        self.num_blocks = 0
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Memory per block owned elsewhere but sized with this cache (a speculative draft's KV).
        self.extra_bytes_per_block = 0

    # ---- KV cache ---------------------------------------------------------------------------
    @property
    def kv_shape(self) -> tuple[int, int, int]:
        attn = self.model.attention_layers[0]
        return self.block_size, attn.num_kv_heads, attn.head_dim

    def bytes_per_block(self) -> int:
        block_size, heads, head_dim = self.kv_shape
        layers = len(self.model.attention_layers)
        return 2 * layers * block_size * heads * head_dim * torch.tensor([], dtype=self.model_config.dtype).element_size()

    def determine_num_blocks(self) -> int:
        config = self.cache_config
        if config.num_gpu_blocks:
            return config.num_gpu_blocks
        if config.kv_cache_memory_bytes:
            return max(1, config.kv_cache_memory_bytes // (self.bytes_per_block() + self.extra_bytes_per_block))
        if self.device.type == "cuda":
            return self._profile_cuda_blocks()
        # CPU: enough for every sequence at full length, capped at CPU_KV_CACHE_BYTES.
        per_seq = -(-self.scheduler_config.max_model_len // self.block_size)
        wanted = per_seq * self.scheduler_config.max_num_seqs
        return max(per_seq, min(wanted, CPU_KV_CACHE_BYTES // (self.bytes_per_block() + self.extra_bytes_per_block)))

    def _profile_cuda_blocks(self) -> int:
        """Run the largest step the scheduler can produce, then give the KV cache what is left of
        gpu_memory_utilization beyond that step's peak."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        num_tokens = min(self.scheduler_config.max_num_batched_tokens,
                         self.scheduler_config.max_model_len * self.scheduler_config.max_num_seqs)
        self.profile_run(num_tokens)
        torch.cuda.synchronize(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        peak_transient = torch.cuda.max_memory_allocated(self.device) - torch.cuda.memory_allocated(self.device)
        budget = total * self.cache_config.gpu_memory_utilization - (total - free) - peak_transient
        num_blocks = int(budget // (self.bytes_per_block() + self.extra_bytes_per_block))
        if num_blocks < 1:
            raise RuntimeError(
                f"no GPU memory left for the KV cache at gpu_memory_utilization="
                f"{self.cache_config.gpu_memory_utilization}: raise it, or lower max_num_batched_tokens")
        logger.info("KV cache: %d blocks of %d tokens (%.2f GiB)", num_blocks, self.block_size,
                    num_blocks * self.bytes_per_block() / 2**30)
        return num_blocks

    @inference
    def profile_run(self, num_tokens: int) -> None:
        """One forward over num_tokens prompt tokens (one sequence per max_model_len tokens)
        with a throw-away cache just big enough, so activations reach their peak."""
        seq_len = min(num_tokens, self.scheduler_config.max_model_len)
        num_seqs = -(-num_tokens // seq_len)
        blocks_per_seq = -(-seq_len // self.block_size)
        self._allocate(num_seqs * blocks_per_seq)
        lens = [seq_len] * (num_seqs - 1) + [num_tokens - seq_len * (num_seqs - 1)]
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        positions = torch.cat([torch.arange(n) for n in lens]).to(self.device)
        tables = torch.arange(num_seqs * blocks_per_seq, dtype=torch.int32).view(num_seqs, blocks_per_seq)
        slots = torch.cat([tables[i].long().repeat_interleave(self.block_size)[:n] * self.block_size
                           + torch.arange(n) % self.block_size for i, n in enumerate(lens)])
        meta = AttentionMetadata(
            slot_mapping=slots.to(self.device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=self.device),
            block_tables=tables.to(self.device), decode_only=False)
        input_ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, positions, meta)
        self.model.compute_logits(hidden[-self.scheduler_config.max_num_seqs:])
        self._release()

    def _allocate(self, num_blocks: int) -> None:
        block_size, heads, head_dim = self.kv_shape
        dtype = self.model_config.dtype
        self.kv_caches = []
        for attn in self.model.attention_layers:
            k = torch.zeros(num_blocks, block_size, heads, head_dim, dtype=dtype, device=self.device)
            v = torch.zeros_like(k)
            attn.k_cache, attn.v_cache = k, v
            self.kv_caches.append((k, v))

    def _release(self) -> None:
        for attn in self.model.attention_layers:
            attn.k_cache = attn.v_cache = None
        self.kv_caches = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def initialize_kv_cache(self) -> int:
        """Size and allocate the KV cache. Under tensor parallelism every rank profiles its shard
        (the profile forwards' collectives pair up) and all take the smallest block count."""
        self.parallel.call("determine_num_blocks", self.cache_config, self.extra_bytes_per_block)
        self.num_blocks = min([self.determine_num_blocks()] + self.parallel.replies())
        self.parallel.call("allocate_kv_cache", self.num_blocks)
        self.allocate_kv_cache(self.num_blocks)
        return self.num_blocks

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._allocate(num_blocks)

    @inference
    def time_all_reduce(self, rows: int, repeats: int = 50) -> float:
        """Median ms of one all-reduce of [rows, hidden] activations over this runner's group, every
        rank timing the same calls (collective_timing.py); 0 on one rank (no collective)."""
        if self.parallel.group.size == 1:
            return 0.0
        self.parallel.call("time_all_reduce", rows, repeats)
        return time_all_reduce(self.parallel.group, rows, self.model_config.hf_config.hidden_size,
                               self.model_config.dtype, self.device, repeats)

    def determine_num_blocks_for(self, cache_config: CacheConfig, extra_bytes_per_block: int) -> int:
        """A worker rank: rank 0's cache settings, then this rank's block count."""
        self.cache_config = cache_config
        self.extra_bytes_per_block = extra_bytes_per_block
        return self.determine_num_blocks()

    # ---- one step ---------------------------------------------------------------------------
    def prepare(self, sched: SchedulerOutput) -> StepInputs:
        """The step as flat arrays: one pass over the requests for what only they know (token
        ids, progress, which rows need logits), the per-token arithmetic in numpy, block-table
        rows from the persistent table (only new block ids are written)."""
        scheduled = sched.scheduled
        input_ids: list[int] = []
        firsts: list[int] = []
        counts: list[int] = []
        logits_positions: list[int] = []
        sample_rows: dict[str, list[int]] = {}
        prompt_rows: dict[str, tuple[int, list[int]]] = {}
        for item in scheduled:
            req = item.request
            first, count = req.num_computed_tokens, item.num_new_tokens
            offset = len(input_ids)
            if count == 1 and first < len(req.all_token_ids):
                input_ids.append(req.all_token_ids[first])
            else:
                tokens = req.all_token_ids[first : first + count]
                if len(tokens) < count:
                    tokens = tokens + req.spec_token_ids[: count - len(tokens)]
                input_ids.extend(tokens)
            firsts.append(first)
            counts.append(count)
            end = offset + count
            if req.needs_prompt_logprobs:
                # Row for position p predicts prompt token p + 1; skip positions already reported.
                lo = max(first, len(req.prompt_logprobs) - 1)
                hi = min(first + count, req.num_prompt_tokens - 1)
                if hi > lo:
                    rows = list(range(len(logits_positions), len(logits_positions) + hi - lo))
                    logits_positions.extend(range(offset + lo - first, offset + hi - first))
                    prompt_rows[req.request_id] = (lo, rows)
            if item.completes_sequence:
                sampled = item.num_spec_tokens + 1
                sample_rows[req.request_id] = list(range(len(logits_positions), len(logits_positions) + sampled))
                logits_positions.extend(range(end - sampled, end))
        first_arr = np.array(firsts, dtype=np.int64)
        count_arr = np.array(counts, dtype=np.int64)
        decode_only = len(input_ids) == len(scheduled)
        if decode_only:  # one token each: no per-token expansion
            starts = np.arange(len(scheduled) + 1, dtype=np.int64)
            positions, owner = first_arr, None
        else:
            starts = np.zeros(len(scheduled) + 1, dtype=np.int64)
            np.cumsum(count_arr, out=starts[1:])
            positions = np.repeat(first_arr - starts[:-1], count_arr) + np.arange(starts[-1], dtype=np.int64)
            owner = np.repeat(np.arange(len(scheduled)), count_arr)
        rows = self.block_rows.rows_for([item.request for item in scheduled])
        table = self.block_rows.table
        token_rows = rows if owner is None else rows[owner]
        slots = table[token_rows, positions // self.block_size].astype(np.int64) * self.block_size \
            + positions % self.block_size
        width = max(len(item.request.block_ids) for item in scheduled)
        host = {
            "input_ids": host_tensor(input_ids, torch.long),
            "positions": torch.from_numpy(positions),
            "slot_mapping": torch.from_numpy(slots),
            "query_start_loc": torch.from_numpy(starts.astype(np.int32)),
            "seq_lens": torch.from_numpy((first_arr + count_arr).astype(np.int32)),
            "block_tables": torch.from_numpy(table[rows, :width]),
            "logits_indices": host_tensor(logits_positions, torch.long),
            "decode_only": decode_only,
            "query_len_range": (min(counts), max(counts)),  # what graph_key and pad_step read
        }
        return StepInputs.from_host(host, self.device, sample_rows=sample_rows, prompt_rows=prompt_rows)

    @inference
    def execute(self, sched: SchedulerOutput, input_ids: torch.Tensor | None = None,
                token_patch: tuple[int | torch.Tensor, torch.Tensor] | None = None) -> RunnerOutput:
        """One forward over the scheduled tokens. Token ids that exist only on the device (the
        requests' token lists hold placeholders there) come as `input_ids`, the whole step's (the
        draft feeding its own proposals back), or as `token_patch`, (rows, ids) of the flat batch
        (tokens the last step sampled, under asynchronous scheduling); rows as an int: the first
        of consecutive rows."""
        inputs = self.prepare(sched)
        if input_ids is not None or token_patch is not None:
            if self.parallel.mirrored:
                raise ValueError("device-side input_ids need a runner that is not tensor-parallel")
            if input_ids is not None:
                inputs.input_ids = input_ids
            elif isinstance(token_patch[0], int):
                start, ids = token_patch
                inputs.input_ids[start : start + ids.shape[0]].copy_(ids)
            else:
                inputs.input_ids.index_copy_(0, *token_patch)
        if not self.parallel.mirrored:
            hidden = self.forward(inputs)
            return RunnerOutput(logits=self.model.compute_logits(hidden if inputs.logits_all
                                                                 else hidden[inputs.logits_indices]), inputs=inputs)
        # Tensor parallel: the workers get the same flat batch (CPU arrays) and run their shards.
        self.parallel.call("run_shard", {k: v.numpy() if isinstance(v, torch.Tensor) else v
                                         for k, v in inputs.host.items()})
        try:
            logits = self._shard_logits(inputs, self.forward(inputs))
            if logits.is_cuda:
                torch.cuda.current_stream().synchronize()  # a dead peer shows here, not later
        except Exception as exc:
            self.parallel.raise_if_failed(exc)  # a collective's error is usually a worker's death
            raise
        self.parallel.raise_if_failed()
        return RunnerOutput(logits=logits, inputs=inputs)

    @inference
    def run_shard(self, host: dict) -> None:
        """A worker rank's part of a step: the same forward and LM head as rank 0 (their collectives
        pair up with rank 0's); the logits are gathered to rank 0."""
        inputs = StepInputs.from_host(host, self.device)
        self._shard_logits(inputs, self.forward(inputs))

    def _shard_logits(self, inputs: StepInputs, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head and its gather, skipped on every rank alike when no row needs logits (a
        prefill chunk that does not end its prompt): no zero-sized collective."""
        if inputs.logits_indices.numel() == 0:
            return torch.empty((0, self.model_config.vocab_size), dtype=torch.float32, device=hidden.device)
        return self.model.compute_logits(hidden[inputs.logits_indices])

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """The model over the flat batch: a captured CUDA graph when one holds the step (every
        request with at most its query length of new tokens), eager otherwise."""
        if self.graphs and inputs.host is not None:
            key = graph_key(inputs.host, self._graph_keys)
            if key is not None:
                return self.graph_buffers.replay(self.graphs[key], inputs.host, inputs.input_ids, inputs.positions,
                                                 inputs.meta)
        if self.piecewise is not None:
            tokens = self.piecewise.bucket(inputs.input_ids.shape[0])
            if tokens is not None:
                return self.piecewise.run(tokens, inputs.input_ids, inputs.positions, inputs.meta)
        return self.model(inputs.input_ids, inputs.positions, inputs.meta)

    # ---- start-up: kernels and CUDA graphs ---------------------------------------------------
    @inference
    def warm_up_prefill_kernels(self) -> None:
        """Compile and autotune the prefill/extend attention kernel for every tokens-per-request
        bucket (its autotuning key) before serving: a first-time compile in the middle of serving
        stalls every running request for seconds. One tiny forward per bucket, written into the
        not yet used cache."""
        start = time.perf_counter()
        budget = self.scheduler_config.max_num_batched_tokens
        block_size = self.block_size
        length = 2
        while length <= min(128, budget, self.num_blocks * block_size):
            positions = torch.arange(length, device=self.device)
            meta = AttentionMetadata(
                slot_mapping=positions.clone(),
                query_start_loc=torch.tensor([0, length], dtype=torch.int32, device=self.device),
                seq_lens=torch.tensor([length], dtype=torch.int32, device=self.device),
                block_tables=torch.arange(-(-length // block_size), dtype=torch.int32, device=self.device)[None],
                decode_only=False)
            self.model(torch.zeros(length, dtype=torch.long, device=self.device), positions, meta)
            length *= 2
        torch.cuda.synchronize(self.device)
        logger.info("attention kernels compiled and tuned in %.1fs", time.perf_counter() - start)

    def capture_cuda_graphs(self, query_lens: tuple[int, ...] = (1,), prefill_lens: tuple[int, ...] = ()) -> None:
        """Warm the kernels up (warm_up_prefill_kernels), then, unless eager, capture a graph per
        batch size in CAPTURE_SIZES (up to max_num_seqs) and query length:
        1 for plain decode, k + 1 under speculation (the target's verification, the draft's
        catch-up). Multi-token graphs stop at SPEC_GRAPH_MAX_BATCH requests: beyond that adaptive
        speculation is off anyway. `prefill_lens`: query lengths of one-request graphs (a lone
        prefill; those above max_num_batched_tokens are skipped). Logs the cost."""
        if self.device.type != "cuda" or not self.kv_caches:
            return
        query_lens = tuple(sorted(set(query_lens)))
        # every rank captures alike, in lockstep
        self.parallel.call("capture_cuda_graphs", query_lens, prefill_lens)
        self.warm_up_prefill_kernels()
        if self.enforce_eager:
            return
        start = time.perf_counter()
        free_before = torch.cuda.mem_get_info(self.device)[0]
        keys = capture_keys(self.scheduler_config.max_num_seqs, query_lens, prefill_lens,
                            self.scheduler_config.max_num_batched_tokens, SPEC_GRAPH_MAX_BATCH)
        sizes = [size for size, _ in keys]
        max_blocks = -(-self.scheduler_config.max_model_len // self.block_size)
        self.graph_buffers = GraphBuffers(max(sizes), max(q for _, q in keys), max_blocks, self.device,
                                          max_tokens=max(size * q for size, q in keys), block_size=self.block_size)
        pool = torch.cuda.graph_pool_handle()
        # The garbage collector must not run during a capture: collecting an old engine's graphs
        # then resets them mid-capture ("operation not permitted when stream is capturing"), which
        # invalidates this capture (cuBLAS then fails with an internal error).
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with torch.inference_mode():
                # Most tokens first: later graphs reuse the first one's memory.
                for size, q in sorted(keys, key=lambda key: key[0] * key[1], reverse=True):
                    self.graphs[(size, q)] = self.graph_buffers.capture(self.model, size, q, pool)
                if self.piecewise_cuda_graphs:
                    self.piecewise = PiecewiseGraphs(self.scheduler_config.max_num_batched_tokens, self.device,
                                                     self.block_size)
                    for tokens in reversed(self.piecewise.buckets):
                        self.piecewise.capture(self.model, tokens, pool)
        finally:
            if gc_was_enabled:
                gc.enable()
        self._graph_keys = sorted(self.graphs)
        torch.cuda.synchronize(self.device)
        used = free_before - torch.cuda.mem_get_info(self.device)[0]
        logger.info("captured %d CUDA graphs (batch sizes %s..%s, tokens per request %s%s) in %.1fs using %.0f MiB",
                    len(keys), min(sizes), max(sizes), "/".join(map(str, sorted({q for _, q in keys}))),
                    f"; piecewise, token buckets {self.piecewise.buckets}" if self.piecewise else "",
                    time.perf_counter() - start, used / 2**20)

    def release_cuda_graphs(self) -> None:
        """Drop the captured graphs and their memory (before a tensor-parallel group is left)."""
        if not self.graphs:
            return
        self.graphs.clear()
        self.graph_buffers = self.piecewise = None
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    @inference
    def sample_tokens(self, output: RunnerOutput, requests: list[Request],
                      grammar_bitmask: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each request that reached its end this step, left on the device, and the
        logits rows they came from (no wait for the device). `grammar_bitmask` (bitmask, rows):
        structured outputs' allowed tokens for those rows; the returned logits are masked too, so
        log-probabilities are the masked distribution's."""
        rows = [output.inputs.sample_rows[r.request_id][-1] for r in requests]
        if not rows:
            empty = torch.empty(0, dtype=torch.long, device=output.logits.device)
            return empty, output.logits[:0]
        # rows rise with the scheduled order: as many as the logits, ending at the last, is every row
        if len(rows) == output.logits.shape[0] and rows[-1] == len(rows) - 1:
            logits = output.logits
        else:
            logits = output.logits.index_select(0, to_device(rows, torch.long, output.logits.device))
        if grammar_bitmask is not None:
            apply_token_bitmask(logits, *grammar_bitmask)
        return self.sampler.sample(logits, requests), logits

    @inference
    def prompt_logprobs(self, output: RunnerOutput, request: Request) -> list[SampledRow]:
        """Raw log-probabilities of the prompt tokens this step covered, with the top-N."""
        first, rows = output.inputs.prompt_rows[request.request_id]
        logits = output.logits.index_select(0, torch.tensor(rows, device=output.logits.device))
        targets = torch.tensor(request.prompt_token_ids[first + 1 : first + 1 + len(rows)], device=logits.device)
        n = request.sampling_params.prompt_logprobs
        return Sampler.describe(logits, targets, [request] * len(rows), [n] * len(rows))
