"""The padded layout CUDA graphs replay (octavo.runtime.cuda_graphs), checked on the CPU: the
same buffers, padding and read-back as a replay, run eagerly, give the hidden states of the
unpadded step. The device run (bench/gpu_engine_check.py, tests/spec on CUDA) covers the graphs."""

from __future__ import annotations

import pytest
import torch

from octavo import LLM
from octavo.runtime.cuda_graphs import CAPTURE_SIZES, GraphBuffers, capture_keys, graph_key, pad_step
from octavo.runtime.layers.attention import AttentionMetadata


def flat_step(contexts: list[int], new: list[int], tables: list[list[int]], block_size: int, vocab: int) -> dict:
    """Host arrays of a step: request i has contexts[i] cached tokens and new[i] new ones."""
    gen = torch.Generator().manual_seed(0)
    ids, positions, slots, starts = [], [], [0], []
    for context, count, table in zip(contexts, new, tables):
        for p in range(context, context + count):
            positions.append(p)
            slots.append(table[p // block_size] * block_size + p % block_size)
        ids.append(torch.randint(3, vocab, (count,), generator=gen))
        starts.append(starts[-1] + count if starts else count)
    return {"input_ids": torch.cat(ids), "positions": torch.tensor(positions),
            "slot_mapping": torch.tensor(slots[1:]), "query_start_loc": torch.tensor([0] + starts, dtype=torch.int32),
            "seq_lens": torch.tensor([c + n for c, n in zip(contexts, new)], dtype=torch.int32),
            "query_len_range": (min(new), max(new))}


def test_pad_step_places_each_request_in_its_row():
    host = {"input_ids": torch.tensor([10, 20, 21, 22, 30, 31]), "positions": torch.tensor([7, 3, 4, 5, 9, 10]),
            "slot_mapping": torch.tensor([70, 30, 31, 32, 90, 91]),
            "query_start_loc": torch.tensor([0, 1, 4, 6], dtype=torch.int32),
            "seq_lens": torch.tensor([8, 6, 11], dtype=torch.int32), "query_len_range": (1, 3)}
    padded = pad_step(host, 4)
    assert padded.rows.tolist() == [0, 4, 5, 6, 8, 9]
    assert padded.input_ids.tolist() == [10, 0, 0, 0, 20, 21, 22, 0, 30, 31, 0, 0]
    assert padded.slot_mapping.tolist() == [70, -1, -1, -1, 30, 31, 32, -1, 90, 91, -1, -1]
    assert padded.positions.tolist() == [7, 7, 7, 7, 3, 4, 5, 5, 9, 10, 10, 10]
    # Contexts grow by the padding, so the real queries keep their positions.
    assert padded.seq_lens.tolist() == [11, 7, 13]
    uniform = pad_step({**host, "query_start_loc": torch.tensor([0, 2, 4, 6], dtype=torch.int32),
                        "query_len_range": (2, 2)}, 2)
    assert uniform.rows is None


def test_graph_key_picks_the_smallest_graph_that_holds_the_step():
    keys = [(1, 1), (2, 1), (4, 1), (8, 1), (1, 5), (2, 5), (4, 5)]
    step = lambda lens: {"query_start_loc": torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32),
                         "query_len_range": (min(lens), max(lens))}
    assert graph_key(step([1, 1, 1]), keys) == (4, 1)
    assert graph_key(step([1, 5, 2]), keys) == (4, 5)
    assert graph_key(step([5]), keys) == (1, 5)
    assert graph_key(step([6]), keys) is None  # longer than any graph's rows: eager
    assert graph_key(step([1] * 9), keys) is None


def test_capture_keys_add_one_request_prefill_graphs_that_a_step_can_hold():
    keys = capture_keys(48, (1, 5), (16, 32, 64, 5), max_num_batched_tokens=32, spec_max_batch=8)
    sizes = [s for s in CAPTURE_SIZES if s <= 48]
    assert [k for k in keys if k[1] == 1] == [(s, 1) for s in sizes]
    assert [k for k in keys if k[1] == 5] == [(s, 5) for s in sizes if s <= 8]  # (1, 5) once
    assert [k for k in keys if k[1] not in (1, 5)] == [(1, 16), (1, 32)]  # 64 > max_num_batched_tokens
    assert capture_keys(300, (1,), (), 8192, 64)[-1] == (320, 1)  # rounded up to a captured size
    assert capture_keys(5000, (1,), (), 8192, 64)[-1] == (CAPTURE_SIZES[-1], 1)  # the largest caps them
    assert capture_keys(20, (1,), (), 8192, 64)[-1] == (24, 1)  # rounded up to a captured size
    # A lone prefill replays the smallest prefill graph that holds it; a second request runs eager.
    step = lambda lens: {"query_start_loc": torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32),
                         "query_len_range": (min(lens), max(lens))}
    assert graph_key(step([13]), sorted(keys)) == (1, 16)
    assert graph_key(step([17]), sorted(keys)) == (1, 32)
    assert graph_key(step([17, 1]), sorted(keys)) is None
    assert graph_key(step([33]), sorted(keys)) is None


@pytest.mark.parametrize("new", [[1, 3, 2], [4, 4, 4], [1, 1, 1], [2], [13]],
                         ids=["mixed", "uniform", "decode", "alone", "prefill-chunk"])
def test_padded_layout_matches_the_unpadded_step(llama_dir, new):
    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks_override=64)
    runner = llm.llm_engine.model_runner
    model, block_size = runner.model, runner.block_size
    vocab = runner.model_config.vocab_size
    contexts = [5, 17, 33][: len(new)]
    tables = [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]][: len(new)]
    # Fill the contexts' K/V with a prefill of each request.
    prefill = flat_step([0] * len(new), contexts, tables, block_size, vocab)
    width = max(map(len, tables))
    device = runner.device  # the CPU in CI; the device run takes the Triton kernels
    table_tensor = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=device)

    def on_device(host, decode_only=False):
        meta = AttentionMetadata(slot_mapping=host["slot_mapping"].to(device),
                                 query_start_loc=host["query_start_loc"].to(device),
                                 seq_lens=host["seq_lens"].to(device), block_tables=table_tensor,
                                 decode_only=decode_only)
        return host["input_ids"].to(device), host["positions"].to(device), meta

    with torch.inference_mode():
        model(*on_device(prefill))
        step = flat_step(contexts, new, tables, block_size, vocab)
        step_on_device = on_device(step, decode_only=max(new) == 1)
        expected = model(*step_on_device)
        # A one-request prefill graph (1, 16) for the chunk; (4, 4) or (4, 1) for the others.
        size, query_len = (1, 16) if max(new) > 4 else (4, 1 if max(new) == 1 else 4)
        buffers = GraphBuffers(max_batch=4, max_query_len=16, max_blocks=8, device=device, max_tokens=16,
                               block_size=block_size)
        assert buffers.block_tables.shape[1] == 8 + -(-16 // block_size)  # the blocks padding may reach
        buffers.block_tables.fill_(13)  # stale rows of earlier steps: real blocks, never read back
        got = buffers.run_eager(model, size, query_len, step, *step_on_device)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
