"""Piecewise CUDA graphs for the steps that no whole-step graph holds: a mixed prefill+decode batch,
a prefill chunk, a speculative step past SPEC_GRAPH_MAX_BATCH. Everything but attention is
captured per token bucket, as one graph before the first layer's attention, one between each two,
and one after the last; each layer's attention runs eagerly between them, on the step's real rows.

Why: an eager step launches about ten kernels a layer at 26-60 µs of host time each
(bench/results/2026-12-07-peer-vllm-h100.md), about 8 ms a step for an 8B model: as long as the
GPU's work on a few hundred tokens, so such steps wait on the host. Attention stays outside because
its grid and work follow the step's context lengths (vLLM's piecewise mode cuts at the same place).

Why padding is exact: a step of n tokens runs in the smallest bucket T >= n, and rows n..T-1 are
padding (token 0 at position 0, cache slot -1, so nothing is written). Everything in the graphs
works row by row (GEMMs, norms, rotary, activation, the cache write), so a padding row changes no
real row; attention reads only the real rows.

On by default (cudagraph_mode FULL_AND_PIECEWISE, as vLLM's); `--compilation-config
'{"cudagraph_mode": "FULL_DECODE_ONLY"}'` keeps the whole-step graphs alone. The H100 A/B that made it
the default: bench/results/2026-12-07-piecewise-h100.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.runtime.layers.attention import AttentionMetadata, PagedAttention, attention_breaks

# Token counts with graphs. Past 2,048 tokens a step's GPU work is several times its launch time.
TOKEN_BUCKETS = (32, 64, 128, 256, 384, 512, 768, 1024, 1280, 1536, 1792, 2048)


def bucket_for(num_tokens: int, buckets: list[int]) -> int | None:
    """The smallest bucket that holds num_tokens, or None (run eagerly)."""
    return next((b for b in buckets if b >= num_tokens), None)


@dataclass
class PiecewiseEntry:
    graphs: list  # len(layers) + 1 CUDA graphs, replayed in order
    layers: list[PagedAttention]  # the attention run after graphs[i]
    hidden: torch.Tensor  # the last graph's output, [T, hidden]


class PiecewiseGraphs:
    """Static inputs and the two attention buffers every bucket shares: the query a graph leaves for
    attention, and attention's output the next graph reads ([max tokens, heads, head_dim] each)."""

    def __init__(self, max_tokens: int, device: torch.device, block_size: int,
                 buckets: tuple[int, ...] = TOKEN_BUCKETS) -> None:
        self.buckets = [b for b in buckets if b <= max_tokens]
        self.device = device
        self.block_size = block_size
        top = self.buckets[-1] if self.buckets else 0
        self.input_ids = torch.zeros(top, dtype=torch.long, device=device)
        self.positions = torch.zeros(top, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((top,), -1, dtype=torch.long, device=device)
        self.query: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.entries: dict[int, PiecewiseEntry] = {}

    def bucket(self, num_tokens: int) -> int | None:
        """The captured bucket that holds a step of num_tokens, or None."""
        found = bucket_for(num_tokens, self.buckets)
        return found if found in self.entries else None

    def _meta(self, tokens: int) -> AttentionMetadata:
        """The pieces read only the slot mapping (the cache write); the rest is for the warm-up's
        attention: one request of `tokens` tokens over block 0 (its slots are -1: nothing written)."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:tokens],
            query_start_loc=torch.tensor([0, tokens], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([tokens], dtype=torch.int32, device=self.device),
            block_tables=torch.zeros(1, -(-tokens // self.block_size), dtype=torch.int32, device=self.device),
            decode_only=False)

    def _buffers_for(self, query: torch.Tensor) -> None:
        if self.query is None:
            shape = (self.input_ids.shape[0], *query.shape[1:])
            self.query = torch.zeros(shape, dtype=query.dtype, device=query.device)
            self.out = torch.zeros(shape, dtype=query.dtype, device=query.device)
        elif self.query.shape[1:] != query.shape[1:] or self.query.dtype != query.dtype:
            raise ValueError(f"every attention layer must take [T, {tuple(self.query.shape[1:])}] {self.query.dtype} "
                             f"queries for piecewise graphs, got {tuple(query.shape)} {query.dtype}")

    def _load(self, tokens: int, input_ids: torch.Tensor, positions: torch.Tensor,
              slot_mapping: torch.Tensor) -> int:
        """The step's n rows into the static inputs, rows n..tokens-1 padding; returns n."""
        n = input_ids.shape[0]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.input_ids[n:tokens].zero_()
        self.positions[:n].copy_(positions, non_blocking=True)
        self.positions[n:tokens].zero_()
        self.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        self.slot_mapping[n:tokens].fill_(-1)
        return n

    def capture(self, model: torch.nn.Module, tokens: int, pool) -> None:
        """Warm the bucket up eagerly (Triton compiles and tunes outside a capture), then capture
        its pieces on a side stream, cutting a graph at each attention."""
        meta = self._meta(tokens)

        def warm(layer: PagedAttention, query: torch.Tensor, step_meta: AttentionMetadata) -> torch.Tensor:
            self._buffers_for(query)
            return layer.run(query, step_meta)

        with attention_breaks(warm):
            model(self.input_ids[:tokens], self.positions[:tokens], meta)
        torch.cuda.synchronize(self.device)
        graphs, layers = [], []
        graph = torch.cuda.CUDAGraph()

        def cut(layer: PagedAttention, query: torch.Tensor, _: AttentionMetadata) -> torch.Tensor:
            nonlocal graph
            self.query[:tokens].copy_(query)
            graph.capture_end()
            graphs.append(graph)
            layers.append(layer)
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=pool)
            return self.out[:tokens].view(tokens, -1)

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            graph.capture_begin(pool=pool)
            with attention_breaks(cut):
                hidden = model(self.input_ids[:tokens], self.positions[:tokens], meta)
            graph.capture_end()
            graphs.append(graph)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.entries[tokens] = PiecewiseEntry(graphs, layers, hidden)

    def run(self, tokens: int, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """Replay bucket `tokens` for a step of input_ids.shape[0] tokens; its hidden states."""
        entry = self.entries[tokens]
        n = self._load(tokens, input_ids, positions, meta.slot_mapping)
        for graph, layer in zip(entry.graphs, entry.layers):
            graph.replay()
            layer.run(self.query[:n], meta, out=self.out[:n])
        entry.graphs[-1].replay()
        return entry.hidden[:n]

    def run_eager(self, model: torch.nn.Module, tokens: int, input_ids: torch.Tensor, positions: torch.Tensor,
                  meta: AttentionMetadata) -> torch.Tensor:
        """What `run` computes, without graphs: the same padded buffers and attention between the
        pieces (so the CPU tests check what the graphs replay)."""
        n = self._load(tokens, input_ids, positions, meta.slot_mapping)

        def between(layer: PagedAttention, query: torch.Tensor, _: AttentionMetadata) -> torch.Tensor:
            self._buffers_for(query)
            self.query[:tokens].copy_(query)
            layer.run(self.query[:n], meta, out=self.out[:n])
            return self.out[:tokens].view(tokens, -1)

        with attention_breaks(between):
            hidden = model(self.input_ids[:tokens], self.positions[:tokens], self._meta(tokens))
        return hidden[:n]
