"""Sharded loading, checked in one process: each rank's shard (built as rank r of 2, no
collective needed) is exactly its slice of the checkpoint, and the shards' partial results add up
to the unsplit layer's."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from octavo import EngineArgs
from octavo.kernels import ops
from octavo.runtime.distributed import TPGroup
from octavo.runtime.model_runner import build_model


def shards(model_dir):
    config = EngineArgs(model=str(model_dir), dtype="float32").create_config().model_config
    full = build_model(config, torch.device("cpu"))
    ranks = [build_model(config, torch.device("cpu"), TPGroup(rank, 2)) for rank in range(2)]
    return full, ranks, load_file(str(model_dir / "model.safetensors"))


def test_shards_are_slices_of_the_checkpoint(single_kv_head_dir):
    full, ranks, state = shards(single_kv_head_dir)
    head_dim, prefix = 16, "model.layers.1."
    q, k, v = (state[prefix + f"self_attn.{n}_proj.weight"] for n in "qkv")
    for rank, model in enumerate(ranks):
        layer = model.model.layers[1]
        qkv = layer.self_attn.qkv_proj.weight
        assert torch.equal(qkv[: 2 * head_dim], q[rank * 2 * head_dim:(rank + 1) * 2 * head_dim])
        assert torch.equal(qkv[2 * head_dim: 3 * head_dim], k)  # the one KV head, on both ranks
        assert torch.equal(qkv[3 * head_dim:], v)
        o = state[prefix + "self_attn.o_proj.weight"]
        assert torch.equal(layer.self_attn.o_proj.weight, o[:, rank * 32:(rank + 1) * 32])
        embed = model.model.embed_tokens.weight
        rows = state["model.embed_tokens.weight"][rank * 194:(rank + 1) * 194]
        assert torch.equal(embed[: rows.shape[0]], rows)
        assert not embed[rows.shape[0]:].any()  # the padded tail of the last shard
        assert torch.equal(layer.input_layernorm.weight, state[prefix + "input_layernorm.weight"])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_partial_products_add_up(family_dirs, family):
    full, ranks, _ = shards(family_dirs[family])
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = full.model.layers[0].mlp(x)
        partial = [m.model.layers[0].mlp.down_proj.weight @ ops.silu_and_mul(
            m.model.layers[0].mlp.gate_up_proj(x)).T for m in ranks]
        torch.testing.assert_close((partial[0] + partial[1]).T, expected)
        # QKV: the ranks' q/k/v slices, side by side, are the unsplit projection's.
        qkv = full.model.layers[0].self_attn.qkv_proj(x)
        split = [m.model.layers[0].self_attn.qkv_proj(x) for m in ranks]
        q = torch.cat([s[:, :32] for s in split], dim=1)
        k = torch.cat([s[:, 32:48] for s in split], dim=1)
        torch.testing.assert_close(q, qkv[:, :64])
        torch.testing.assert_close(k, qkv[:, 64:96])
        # The head (tied for Qwen2): each rank's logits are its slice of the vocabulary.
        hidden = torch.randn(3, 64)
        logits = full.compute_logits(hidden)
        heads = [m.model.embed_tokens.weight if m.lm_head is None else m.lm_head.weight for m in ranks]
        torch.testing.assert_close(torch.cat([hidden @ w.T for w in heads], dim=1), logits)
