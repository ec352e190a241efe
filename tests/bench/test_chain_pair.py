"""The chain pair (octavo/bench/chain_pair.py): its construction checked by arithmetic on the
written tables, then on live dummy-weight engines that load only those tables (partial_checkpoint):
the target generates the chain exactly, a draft of another shape agrees on its share."""

from __future__ import annotations

import json

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.bench import chain_pair

BASE = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=2048, hidden_act="silu",
            rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)
TARGET = {**BASE, "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 5, "num_attention_heads": 6,
          "num_key_value_heads": 2}
DRAFT = {**BASE, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}
RANK = 32
K = 4


def test_the_chain_is_one_cycle_through_the_vocabulary():
    successor = chain_pair.following(chain_pair.chain_order(50, seed=3), 1)
    token, seen = 0, set()
    for _ in range(50):
        seen.add(token)
        token = int(successor[token])
    assert token == 0 and seen == set(range(50))
    assert torch.equal(chain_pair.following(chain_pair.chain_order(50, 3), -1)[successor], torch.arange(50))


def test_agreement_for_rate_inverts_acceptance_rate():
    assert chain_pair.acceptance_rate(0.5, 2) == pytest.approx((0.5 + 0.25) / 2)
    for k in (1, 4, 5):
        agreement = chain_pair.agreement_for_rate(0.7, k)
        assert chain_pair.acceptance_rate(agreement, k) == pytest.approx(0.7, abs=1e-9)
    assert chain_pair.agreement_for_rate(0.7, 1) == pytest.approx(0.7)
    assert chain_pair.agreement_for_rate(0.7, 4) > 0.8  # a miss ends the step: each token must be likelier
    with pytest.raises(ValueError, match="acceptance rate"):
        chain_pair.agreement_for_rate(1.5, 4)


def greedy_next(tensors: dict, hidden: int) -> torch.Tensor:
    """What a model whose residual stream is its token's embedding predicts: argmax of head x RMSNorm."""
    embed = tensors["model.embed_tokens.weight"].double()
    normed = embed / embed.pow(2).mean(1, keepdim=True).sqrt()
    return (normed @ tensors["lm_head.weight"].double().T).argmax(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tables_predict_the_chain_and_the_draft_its_share(dtype):
    order, target_source, draft_source = chain_pair.pair_sources(2048, 0.6, seed=1)
    a = chain_pair.directions(2048, RANK, seed=1)
    common = dict(rank=RANK, seed=1, logit=32.0, layer_scale=0.01, dtype=dtype)
    target = chain_pair.model_tensors(TARGET, target_source, order, a, **common)
    draft = chain_pair.model_tensors(DRAFT, draft_source, order, a, **common)
    successor = chain_pair.following(order, 1)
    assert torch.equal(greedy_next(target, 96), successor)
    agrees = greedy_next(draft, 64) == successor
    assert torch.equal(agrees, draft_source == target_source)
    assert 0.55 < agrees.double().mean() < 0.65
    assert target["model.layers.4.post_attention_layernorm.weight"].float().allclose(torch.tensor(0.01), rtol=1e-2)
    assert "model.layers.5.input_layernorm.weight" not in target and "model.layers.1.input_layernorm.weight" in draft
    assert not any("proj" in name for name in target)  # the layers' matrices stay dummy


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="untied"):
        chain_pair.check_shapes({**TARGET, "tie_word_embeddings": True}, RANK)
    with pytest.raises(ValueError, match="rank 128 exceeds"):
        chain_pair.check_shapes(DRAFT, 128)
    with pytest.raises(ValueError, match="vocabulary"):
        chain_pair.write_chain_pair(TARGET, {**DRAFT, "vocab_size": 1024}, tmp_path, 0.7, rank=RANK)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    record = chain_pair.write_chain_pair(TARGET, DRAFT, out, chain_pair.agreement_for_rate(0.6, K), seed=0,
                                         rank=RANK, dtype="float32")
    return out, record


def chain_llm(target_dir, **kwargs) -> LLM:
    kwargs.setdefault("dtype", "float32")
    return LLM(str(target_dir), load_format="dummy", model_loader_extra_config=chain_pair.LOADER_EXTRA,
               num_gpu_blocks=256, enable_prefix_caching=False, **kwargs)


def prompts(count: int = 8, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(11)
    return [{"prompt_token_ids": torch.randint(3, 2048, (length,), generator=g).tolist()} for _ in range(count)]


def follows_chain(successor: torch.Tensor, requests: list[dict], outputs) -> bool:
    for request, output in zip(requests, outputs):
        ids = [request["prompt_token_ids"][-1], *output.outputs[0].token_ids]
        if any(int(successor[a]) != b for a, b in zip(ids, ids[1:])):
            return False
    return True


def simulated_rate(successor: torch.Tensor, agrees: torch.Tensor, requests: list[dict], max_tokens: int) -> float:
    """Accepted / drafted at fixed K on these requests if the draft is right exactly on `agrees`
    (drafting from the first generated token on; the engine may shorten a request's last drafts)."""
    accepted = drafted = 0
    for request in requests:
        token, emitted = int(successor[request["prompt_token_ids"][-1]]), 1
        while emitted < max_tokens:
            run = 0
            while run < K and agrees[token]:
                token, run = int(successor[token]), run + 1
            accepted, drafted = accepted + run, drafted + K
            token, emitted = int(successor[token]), emitted + run + 1
    return accepted / drafted


def test_a_served_pair_walks_the_chain_and_accepts_its_share(pair):
    """The tables load over dummy layers (only the embedding, LM head and norms are in the
    files); the target's tokens are the chain's, greedy and at temperature 1, and with k fixed the
    draft's accepted / drafted is what a draft right exactly on its share of the tokens gets on the
    tokens visited (the share over the whole vocabulary differs from the visited tokens' by chance)."""
    out, record = pair
    assert json.loads((out / "pair.json").read_text())["agreeing_share"] == record["agreeing_share"]
    successor = chain_pair.chain_successor(out)
    order, target_source, draft_source = chain_pair.pair_sources(2048, record["agreement"], record["seed"])
    requests = prompts()
    expected = simulated_rate(successor, draft_source == target_source, requests, 48)
    assert abs(expected - chain_pair.acceptance_rate(record["agreeing_share"], K)) < 0.15
    speculative = {"model": record["draft_dir"], "num_speculative_tokens": K, "adaptive": False}
    llm = chain_llm(record["target_dir"], speculative_config=speculative)
    target_layer = llm.llm_engine.model_runner.model.model.layers[0]
    assert torch.all(target_layer.input_layernorm.weight == 0.01)
    assert target_layer.mlp.down_proj.weight.std() > 0.01  # dummy draws, untouched
    for temperature in (0.0, 1.0):
        stats = llm.llm_engine.stats
        drafted, accepted = stats.spec_draft_tokens, stats.spec_accepted_tokens
        outputs = llm.generate(requests, SamplingParams(temperature=temperature, max_tokens=48, ignore_eos=True,
                                                        seed=5), use_tqdm=False)
        assert follows_chain(successor, requests, outputs)
        rate = (stats.spec_accepted_tokens - accepted) / (stats.spec_draft_tokens - drafted)
        assert abs(rate - expected) < 0.02, (temperature, rate, expected)
    llm.llm_engine.shutdown()


def test_partial_checkpoint_is_refused_where_it_cannot_mean_anything(pair, tmp_path):
    out, record = pair
    with pytest.raises(ValueError, match="needs load_format dummy"):
        LLM(record["target_dir"], model_loader_extra_config={"partial_checkpoint": True})
    with pytest.raises(ValueError, match=r"key\(s\) shard_pattern not supported"):
        LLM(record["target_dir"], load_format="dummy", model_loader_extra_config={"shard_pattern": "x"})
    with pytest.raises(ValueError, match="true or false"):
        LLM(record["target_dir"], load_format="dummy", model_loader_extra_config={"partial_checkpoint": "yes"})
    (tmp_path / "config.json").write_text(json.dumps(DRAFT))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        chain_llm(tmp_path)


def test_the_seeds_async_script_on_a_chain_pair(pair, tmp_path):
    """bench/seed_async.py, the seed's AsyncLLMEngine path (dtype "half" and the rest as written), on
    the CPU at tensor_parallel_size 1: both arms run, the draft arm's acceptance is counted, the
    report names the construction."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "seed_async.py"
    spec = importlib.util.spec_from_file_location("seed_async", path)
    seed_async = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed_async)
    args = seed_async.seed_engine_args("T", "D", 4, {"load_format": "dummy"})
    assert (args.dtype, args.max_num_seqs, args.enforce_eager, args.trust_remote_code, args.speculative_model,
            args.tensor_parallel_size) == ("half", 8, True, True, "D", 4)
    _, record = pair
    code = seed_async.main(["--target", record["target_dir"], "--draft", record["draft_dir"],
                            "--tensor-parallel-size", "1", "--concurrency", "1,2", "--prompts-per-user", "1",
                            "--input-len", "8", "--output-len", "12", "--out", str(tmp_path), "--tag", "t",
                            # k fixed: adaptive k would rightly speculate little on a CPU
                            "--engine-json", json.dumps({"load_format": "dummy", "model_loader_extra_config":
                                                         chain_pair.LOADER_EXTRA, "speculative_config": {
                                                             "adaptive": False, "num_speculative_tokens": 3}})])
    assert code == 0
    (result,) = tmp_path.glob("*-t.json")
    doc = json.loads(result.read_text())
    spec_arm, plain = doc["arms"]
    assert spec_arm["draft"] == record["draft_dir"] and plain["draft"] is None
    assert (spec_arm["num_speculative_tokens"], spec_arm["adaptive"], spec_arm["draft_tensor_parallel_size"]) == (
        3, False, 1)
    assert [lv["concurrency"] for lv in spec_arm["levels"]] == [1, 2]
    assert all(lv["output_tokens"] == lv["num_requests"] * 12 for arm in doc["arms"] for lv in arm["levels"])
    assert all(0 < lv["acceptance"] < 1 for lv in spec_arm["levels"])
    assert all(lv["acceptance"] is None for lv in plain["levels"])
    assert all(lv["chain_follow"] == 1.0 for arm in doc["arms"] for lv in arm["levels"])
    text = result.with_suffix(".md").read_text()
    assert "Chain pair" in text and "spec / no-spec" in text and "split over 1 GPU(s)" in text


def test_latency_with_the_chain_pairs_draft_reports_its_acceptance(pair, bench):
    """`octavo bench latency` as the seed phases run it (the pair's directories, dummy + partial
    checkpoint, a draft): each row carries accepted / drafted over its timed runs, and the table
    shows it; without a draft there is no such column."""
    _, record = pair
    common = ["latency", "--model", record["target_dir"], "--load-format", "dummy", "--model-loader-extra-config",
              json.dumps(chain_pair.LOADER_EXTRA), "--dtype", "float32", "--batch-size", "1,4", "--num-iters", "1",
              "--input-len", "8", "--output-len", "12"]
    code, doc, files = bench(*common, "--speculative-model", record["draft_dir"], "--speculative-config",
                             json.dumps({"adaptive": False, "num_speculative_tokens": 3}), "--tag", "draft")
    assert code == 0
    for row in doc["rows"]:
        speculation = row["octavo"]["speculation"]
        assert speculation["drafted"] > 0 and 0 < speculation["accepted"] <= speculation["drafted"]
    markdown = next(f for f in files if f.endswith("-draft.md"))
    assert "| acceptance |" in (doc and open(f"{doc['settings']['out']}/{markdown}").read())
    code, plain, _ = bench(*common, "--tag", "plain")
    assert code == 0 and all("speculation" not in row["octavo"] for row in plain["rows"])


def test_a_pair_is_reused_only_when_it_is_the_one_asked_for(tmp_path):
    first = chain_pair.ensure(TARGET, DRAFT, tmp_path, 0.8, rank=RANK, dtype="float32")
    stamp = (tmp_path / "target" / "model.safetensors").stat().st_mtime_ns
    again = chain_pair.ensure(TARGET, DRAFT, tmp_path, 0.8, rank=RANK, dtype="float32")
    assert again["reused"] and "reused" not in first
    assert (tmp_path / "target" / "model.safetensors").stat().st_mtime_ns == stamp
    for changed in (dict(agreement=0.5), dict(dtype="bfloat16"), dict(target={**TARGET, "num_hidden_layers": 2})):
        args = {"target": TARGET, "agreement": 0.8, "dtype": "float32", **changed}
        made = chain_pair.ensure(args["target"], DRAFT, tmp_path, args["agreement"], rank=RANK, dtype=args["dtype"])
        assert "reused" not in made


def test_a_partial_checkpoint_must_name_this_models_parameters(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(DRAFT))
    save_file({}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="holds no tensor of this model"):
        chain_llm(tmp_path)
    save_file({"not.a.parameter": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="'not.a.parameter' has no place"):
        chain_llm(tmp_path)
