"""Piecewise CUDA graphs (octavo.runtime.piecewise_graphs): buckets, the attention breaks that cut
the graphs, and the flag that turns them on. Their padded layout is checked per model family in
tests/models/test_piecewise_families.py; the replayed graphs run on the device (tests/runtime/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from octavo.runtime.layers.attention import attention_breaks
from octavo.runtime.piecewise_graphs import PiecewiseGraphs, bucket_for


def test_bucket_for_picks_the_smallest_that_holds_the_step():
    assert bucket_for(1, [32, 64]) == 32
    assert bucket_for(32, [32, 64]) == 32
    assert bucket_for(33, [32, 64]) == 64
    assert bucket_for(65, [32, 64]) is None
    graphs = PiecewiseGraphs(max_tokens=100, device=torch.device("cpu"), block_size=16, buckets=(32, 64, 128))
    assert graphs.buckets == [32, 64]  # none past the step budget
    assert graphs.bucket(10) is None  # nothing captured: run eagerly


def test_attention_breaks_route_attend_and_do_not_nest():
    seen = []
    with attention_breaks(lambda layer, query, meta: seen.append(query.shape) or query):
        from octavo.runtime.layers.attention import PagedAttention

        layer = PagedAttention(2, 1, 4, 0.5)
        layer.attend(torch.zeros(3, 2, 4), None)
        with pytest.raises(RuntimeError, match="already active"):
            with attention_breaks(lambda *args: None):
                pass
    assert seen == [torch.Size([3, 2, 4])]


def test_cudagraph_mode_picks_the_graphs(llama_dir):
    from octavo.runtime.config import EngineArgs
    from octavo.runtime.engine_flags import add_engine_args, engine_args_from_namespace

    def config(mode):
        settings = {"cudagraph_mode": mode} if mode else None
        return EngineArgs(model=str(llama_dir), compilation_config=settings).create_config()

    # Unset: piecewise graphs beside the whole-step ones (vLLM's default, and octavo's since the H100 A/B).
    assert (config(None).piecewise_cuda_graphs, config(None).enforce_eager) == (True, False)
    assert (config("FULL_AND_PIECEWISE").piecewise_cuda_graphs, config("piecewise").piecewise_cuda_graphs) == (True, True)
    assert config("NONE").enforce_eager and not config("FULL_DECODE_ONLY").piecewise_cuda_graphs
    with pytest.raises(ValueError, match="cudagraph_mode must be one of NONE, FULL_DECODE_ONLY"):
        config("FASTEST")
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_args(parser, EngineArgs)
    args = engine_args_from_namespace(parser.parse_args(
        ["--compilation-config", '{"cudagraph_mode": "FULL_AND_PIECEWISE", "level": 3}']), EngineArgs)
    assert args.compilation_config == {"cudagraph_mode": "FULL_AND_PIECEWISE", "level": 3}  # other keys ignored
