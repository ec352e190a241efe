"""Piecewise CUDA graphs' padded layout (octavo.runtime.piecewise_graphs), checked on the CPU for
each model family: the same padded buffers, with attention run between the pieces, give the
unpadded step's hidden states and write only the step's own cache slots."""

from __future__ import annotations

import pytest
import torch

from octavo import LLM
from octavo.runtime.layers.attention import AttentionMetadata
from octavo.runtime.piecewise_graphs import PiecewiseGraphs, bucket_for


def step_of(contexts, new, tables, block_size, vocab, seed=0):
    """Host tensors of a flat step: request i has contexts[i] cached tokens and new[i] new ones."""
    gen = torch.Generator().manual_seed(seed)
    ids, positions, slots, starts = [], [], [], [0]
    for context, count, table in zip(contexts, new, tables):
        for p in range(context, context + count):
            positions.append(p)
            slots.append(table[p // block_size] * block_size + p % block_size)
        ids.append(torch.randint(3, vocab, (count,), generator=gen))
        starts.append(starts[-1] + count)
    width = max(map(len, tables))
    meta = AttentionMetadata(slot_mapping=torch.tensor(slots), query_start_loc=torch.tensor(starts, dtype=torch.int32),
                             seq_lens=torch.tensor([c + n for c, n in zip(contexts, new)], dtype=torch.int32),
                             block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
                             decode_only=max(new) == 1)
    return torch.cat(ids), torch.tensor(positions), meta


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom"])  # rotary + fused cache write; learned positions; ALiBi
@pytest.mark.parametrize("new", [[1, 1, 7], [5, 2, 8], [1, 1, 1], [16]], ids=["mixed", "prefills", "decode", "exact-fit"])
def test_padded_pieces_match_the_unpadded_step(request, family, new):
    model_dir = request.getfixturevalue(f"{family}_dir")
    llm = LLM(model=str(model_dir), dtype="float32", num_gpu_blocks_override=64)
    runner = llm.llm_engine.model_runner
    model, block_size, vocab = runner.model, runner.block_size, runner.model_config.vocab_size
    contexts = [5, 17, 33][: len(new)]
    tables = [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]][: len(new)]
    with torch.inference_mode():
        model(*step_of([0] * len(new), contexts, tables, block_size, vocab))  # the contexts' K/V
        step = step_of(contexts, new, tables, block_size, vocab, seed=1)
        expected = model(*step)
        caches = [(layer.k_cache.clone(), layer.v_cache.clone()) for layer in model.attention_layers]
        graphs = PiecewiseGraphs(max_tokens=64, device=runner.device, block_size=block_size, buckets=(8, 16, 32))
        # Stale rows from a larger earlier step: padding must not keep their tokens or slots.
        graphs.input_ids.random_(3, vocab)
        graphs.positions.random_(0, 40)
        graphs.slot_mapping.copy_(torch.arange(graphs.slot_mapping.shape[0]) + 13 * block_size)
        tokens = bucket_for(sum(new), graphs.buckets)
        got = graphs.run_eager(model, tokens, *step)
    assert tokens == (8 if new == [1, 1, 1] else 16)  # padded, except the exact fit
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    own = torch.zeros(64 * block_size, dtype=torch.bool)
    own[step[2].slot_mapping] = True  # the step's slots, written again (equal up to rounding)
    for layer, (k, v) in zip(model.attention_layers, caches):
        for cache, before in ((layer.k_cache, k), (layer.v_cache, v)):
            flat, flat_before = cache.view(own.shape[0], -1), before.view(own.shape[0], -1)
            assert torch.equal(flat[~own], flat_before[~own])  # padding rows wrote nothing
            torch.testing.assert_close(flat[own], flat_before[own], rtol=1e-5, atol=1e-5)
