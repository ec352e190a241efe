"""CUDA graphs for small-query steps: plain decode (one token per request), speculative steps
(a few tokens per request: the target verifying k proposals, the draft catching up), and one
request's prefill of up to PREFILL_GRAPH_LENS[-1] tokens (the step behind time to first token
when a server is not busy: run eagerly, its hundreds of kernel launches take about as long as
the GPU's work).

A graph is captured per (batch size, query length Q) over static buffers. A step whose requests
each have at most Q new tokens replays the smallest graph that holds it: every request's tokens
are laid out in a row of Q slots, and the unused slots and unused request rows are padding.

Why padding is exact: a padding token sits after its request's real tokens, so the causal mask
hides it from every real query; its cache slot is -1, so nothing is written; and its output row
is never read back. Padding requests have context Q and read whatever block ids their stale table
rows hold: real blocks, finite values (the cache is zero-initialised), results discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.runtime.host_staging import stage
from octavo.runtime.layers.attention import AttentionMetadata

# Batch sizes with decode graphs (those up to max_num_seqs, rounded up to the next one): a batch
# pads to the next size, at most a quarter more rows (an eighth past 512).
CAPTURE_SIZES = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256,
                 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024]
# Query lengths of the one-request prefill graphs. A prompt pads up to the next one, which costs
# little while a step reads weights more than it computes (up to a few hundred tokens on an H100);
# longer prefills run eagerly, where the launches hide behind the GPU's work. Measured before
# them (bench/results/2026-11-22-latency-llama-3.1-8b-h100.md, 8B bf16): prefill 23.6 ms for one
# 128-token prompt, 26.8 ms for eight: the lone prefill is launch time, not GPU work.
PREFILL_GRAPH_LENS = (16, 32, 64, 96, 128, 192, 256)


def capture_keys(max_num_seqs: int, query_lens: tuple[int, ...], prefill_lens: tuple[int, ...],
                 max_num_batched_tokens: int, spec_max_batch: int) -> list[tuple[int, int]]:
    """The (batch size, query length) graphs to capture: every size in CAPTURE_SIZES up to
    max_num_seqs (rounded up to the next one) for each query length (multi-token ones up to
    `spec_max_batch` requests), and one-request graphs for the prefill lengths a step can hold."""
    sizes = [s for s in CAPTURE_SIZES if s <= max_num_seqs]
    if not sizes or sizes[-1] < max_num_seqs <= CAPTURE_SIZES[-1]:
        sizes.append(next(s for s in CAPTURE_SIZES if s >= max_num_seqs))
    keys = [(size, q) for q in sorted(set(query_lens)) for size in sizes if q == 1 or size <= spec_max_batch]
    keys += [(1, q) for q in sorted(set(prefill_lens)) if q <= max_num_batched_tokens and (1, q) not in keys]
    return keys


@dataclass
class PaddedStep:
    """A flat step laid out for a (size, query_len) graph: host tensors, and where each real
    token's row lands (`rows`, None when the layout is already the graph's)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    seq_lens: torch.Tensor
    rows: torch.Tensor | None


def pad_step(host: dict, query_len: int) -> PaddedStep:
    """Lay a flat batch out as one row of `query_len` token slots per request (pure, host-side).

    Request i's tokens go to rows i*Q .. i*Q + q_i - 1; its padding slots repeat its last position
    (a valid position for any position table) with cache slot -1, and its context grows by the
    padding so that its real queries keep their positions. `host["query_len_range"]`: the (min,
    max) new tokens of a request, as ModelRunner.prepare records them."""
    if host["query_len_range"] == (query_len, query_len):
        return PaddedStep(host["input_ids"], host["positions"], host["slot_mapping"], host["seq_lens"], None)
    starts = host["query_start_loc"].long()
    q = starts[1:] - starts[:-1]
    batch = q.shape[0]
    owner = torch.repeat_interleave(torch.arange(batch), q)
    rows = owner * query_len + (torch.arange(owner.shape[0]) - starts[owner])
    last = starts[1:] - 1
    input_ids = torch.zeros(batch * query_len, dtype=host["input_ids"].dtype)
    positions = host["positions"][last].repeat_interleave(query_len)
    slot_mapping = torch.full((batch * query_len,), -1, dtype=host["slot_mapping"].dtype)
    input_ids[rows] = host["input_ids"]
    positions[rows] = host["positions"]
    slot_mapping[rows] = host["slot_mapping"]
    seq_lens = host["seq_lens"] + (query_len - q).to(host["seq_lens"].dtype)
    return PaddedStep(input_ids, positions, slot_mapping, seq_lens, rows)


def graph_key(host: dict, keys: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The smallest captured (size, query_len) that holds this step, or None (run eager)."""
    batch = host["query_start_loc"].shape[0] - 1
    longest = host["query_len_range"][1]
    fits = [(size * q, q, size) for size, q in keys if size >= batch and q >= longest]
    if not fits:
        return None
    _, q, size = min(fits)
    return size, q


@dataclass
class StepGraph:
    graph: "torch.cuda.CUDAGraph"
    size: int  # request rows
    query_len: int  # token slots per request
    hidden: torch.Tensor  # the graph's output, [size * query_len, hidden]


class GraphBuffers:
    """Static inputs shared by every captured graph; a replay copies the step's (padded) inputs
    into their first rows and pads the remaining requests (slot -1, context Q)."""

    def __init__(self, max_batch: int, max_query_len: int, max_blocks: int, device: torch.device,
                 max_tokens: int | None = None, block_size: int = 1) -> None:
        """`max_tokens`: the most tokens of any graph (default max_batch x max_query_len);
        `block_size`: the KV cache's, for the block-table columns padding may reach."""
        max_tokens = max_tokens or max_batch * max_query_len
        self.input_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_tokens,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        # Padding lengthens a context by up to Q - 1 tokens: room for the blocks it may reach, and
        # no more (the decode kernel splits contexts by the table's width: a wider one, more parts).
        width = max_blocks + -(-max_query_len // block_size)
        self.block_tables = torch.zeros(max_batch, width, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self.starts = {}
        self.device = device

    def meta(self, size: int, query_len: int) -> AttentionMetadata:
        if query_len not in self.starts:
            self.starts[query_len] = self.query_start_loc * query_len
        return AttentionMetadata(slot_mapping=self.slot_mapping[: size * query_len],
                                 query_start_loc=self.starts[query_len][: size + 1],
                                 seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size],
                                 decode_only=query_len == 1)

    def capture(self, model: torch.nn.Module, size: int, query_len: int, pool) -> StepGraph:
        tokens = size * query_len
        self.seq_lens[:size].fill_(query_len)
        self.slot_mapping[:tokens].fill_(-1)
        meta = self.meta(size, query_len)
        for _ in range(2):  # warm up: Triton compiles and autotunes outside the capture
            model(self.input_ids[:tokens], self.positions[:tokens], meta)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = model(self.input_ids[:tokens], self.positions[:tokens], meta)
        return StepGraph(graph, size, query_len, hidden)

    def replay(self, entry: StepGraph, host: dict, input_ids: torch.Tensor, positions: torch.Tensor,
               meta: AttentionMetadata) -> torch.Tensor:
        """Run the step through the graph; returns hidden states in the step's own flat order.
        `host` is the step on the CPU, the other arguments the same step already on the device."""
        rows = self._load(entry.size, entry.query_len, host, input_ids, positions, meta)
        entry.graph.replay()
        return self._unpad(entry.hidden, rows, input_ids.shape[0])

    def run_eager(self, model: torch.nn.Module, size: int, query_len: int, host: dict, input_ids: torch.Tensor,
                  positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """What replay computes, without a graph: the same buffers, padding and read-back (so
        the CPU tests check the layout the graphs replay)."""
        rows = self._load(size, query_len, host, input_ids, positions, meta)
        tokens = size * query_len
        hidden = model(self.input_ids[:tokens], self.positions[:tokens], self.meta(size, query_len))
        return self._unpad(hidden, rows, input_ids.shape[0])

    def _load(self, size: int, query_len: int, host: dict, input_ids: torch.Tensor, positions: torch.Tensor,
              meta: AttentionMetadata) -> torch.Tensor | None:
        """Copy the step into the buffers; returns the device rows of its tokens when padded.
        Token ids always come from the device tensor (they may exist only there: a draft step's
        own proposals), the rest from the host layout when the step needs padding."""
        padded = pad_step(host, query_len)
        tokens = size * query_len
        if padded.rows is None:  # already the graph's layout: copy from the step's device tensors
            rows = None
            pos, slots, lens = positions, meta.slot_mapping, meta.seq_lens
            self.input_ids[: input_ids.shape[0]].copy_(input_ids, non_blocking=True)
        else:
            rows, pos, slots, lens = stage([padded.rows, padded.positions, padded.slot_mapping, padded.seq_lens],
                                           self.device)
            self.input_ids[: pos.shape[0]].zero_()
            self.input_ids.index_copy_(0, rows, input_ids)
        batch, used = lens.shape[0], pos.shape[0]
        self.positions[:used].copy_(pos, non_blocking=True)
        self.slot_mapping[:used].copy_(slots, non_blocking=True)
        if used < tokens:
            self.slot_mapping[used:tokens].fill_(-1)
        self.seq_lens[:batch].copy_(lens, non_blocking=True)
        if batch < size:
            self.seq_lens[batch:size].fill_(query_len)
        self.block_tables[:batch, : meta.block_tables.shape[1]].copy_(meta.block_tables)
        return rows

    def _unpad(self, hidden: torch.Tensor, rows: torch.Tensor | None, num_tokens: int) -> torch.Tensor:
        if rows is None:
            return hidden[:num_tokens]
        return hidden.index_select(0, rows)
