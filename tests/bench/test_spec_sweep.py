"""bench/spec_sweep.py (issue #6's speculative serving sweep) and the pieces of `octavo bench serve`
it relies on: the s calibration, the checkpoint export, the server's counters, text prompts, the
speculative flags, and the smoke mode end to end on the CPU."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import pytest

from bench_scripts import REPO, load_bench_script, run_smoke


@pytest.fixture(scope="module")
def spec_sweep():
    return load_bench_script("spec_sweep")


# ---- pure pieces ---------------------------------------------------------------------------------
def test_find_scale_brackets_and_interpolates(spec_sweep):
    curve = lambda s: math.exp(-((s / 0.05) ** 2))  # noqa: E731  acceptance falling steeply with s
    scale, evaluations = spec_sweep.find_scale(curve, target=0.7, tolerance=0.02, high=0.1, max_evals=7)
    assert abs(curve(scale) - 0.7) <= 0.02 and len(evaluations) <= 7
    assert evaluations[0]["scale"] == 0.1  # the bracket's top first
    # A curve still above the target at the first top: the bracket widens.
    slow = lambda s: math.exp(-s)  # noqa: E731
    scale, evaluations = spec_sweep.find_scale(slow, target=0.7, tolerance=0.02, high=0.1, max_evals=8)
    assert evaluations[1]["scale"] == pytest.approx(0.4) and abs(slow(scale) - 0.7) <= 0.02
    # Out of measurements: the closest one measured, NaN (no drafts) counted as 0.
    scale, evaluations = spec_sweep.find_scale(lambda s: math.nan if s > 0.05 else 0.9, 0.7, 0.01, max_evals=2)
    assert len(evaluations) == 2 and evaluations[0]["acceptance_rate"] == 0.0 and scale == evaluations[1]["scale"]


def test_counters_and_speculation_summary():
    from octavo.bench.serve import counter_deltas, parse_counters, spec_summary

    text = "\n".join([
        "# HELP octavo:generation_tokens_total Tokens generated.",
        "# TYPE octavo:generation_tokens_total counter",
        'octavo:generation_tokens_total{model_name="m"} 130.0',
        'octavo:spec_decode_num_draft_tokens_total{model_name="m"} 120.0',
        'octavo:spec_decode_num_accepted_tokens_total{model_name="m"} 84.0',
        'octavo:spec_decode_num_emitted_tokens_total{model_name="m"} 124.0',
        'octavo:spec_decode_draft_acceptance_rate{model_name="m"} 0.7',
        'octavo:request_success_total{finished_reason="length",model_name="m"} 2.0',
        'octavo:request_success_total{finished_reason="stop",model_name="m"} 1.0',
        'octavo:time_to_first_token_seconds_count{model_name="m"} 3.0',
    ])
    counters = parse_counters(text)
    assert counters["generation_tokens"] == 130 and counters["request_success"] == 3
    assert "spec_decode_draft_acceptance_rate" not in counters and "time_to_first_token_seconds_count" not in counters
    deltas = counter_deltas({"generation_tokens": 2.0}, counters)
    assert deltas["generation_tokens"] == 128
    summary = spec_summary(deltas)
    assert summary["acceptance_rate"] == pytest.approx(0.7) and summary["verifications"] == 40
    assert summary["tokens_per_verification"] == pytest.approx(3.1)
    assert summary["drafts_per_verification"] == pytest.approx(3.0)
    assert summary["verified_fraction"] == pytest.approx(124 / 128)
    assert spec_summary({"generation_tokens": 5.0}) is None  # no draft: no speculation block
    assert spec_summary({"spec_decode_num_draft_tokens": 0.0})["acceptance_rate"] is None


def test_text_requests_are_windows_after_bos():
    from octavo.bench.workload import text_requests

    corpus = list(range(100, 400))
    first = text_requests(corpus, 20, (16, 16), (8, 8), seed=3, bos_token_id=1)
    assert first == text_requests(corpus, 20, (16, 16), (8, 8), seed=3, bos_token_id=1)
    for request in first:
        ids = request.prompt_token_ids
        assert len(ids) == 16 and ids[0] == 1 and request.output_len == 8
        assert ids[1:] == list(range(ids[1], ids[1] + 15))  # a contiguous window of the text
    assert len({r.prompt_token_ids[1] for r in first}) > 10
    with pytest.raises(ValueError, match="fewer than"):
        text_requests(corpus[:10], 1, (16, 16), (8, 8), seed=0)


def test_serve_passes_the_draft_to_the_server():
    from octavo.bench import cli as bench_cli
    from octavo.bench.models import ModelSpec
    from octavo.bench.serve import server_command

    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    args = parser.parse_args(["serve", "--model", "m", "--launch", "--speculative-model", "d",
                              "--num-speculative-tokens", "4", "--no-enable-prefix-caching", "--temperature", "0.5"])
    command = server_command(args, ModelSpec("m", "m", "auto"), 8000)
    assert command[command.index("--speculative-model") + 1] == "d"
    assert command[command.index("--num-speculative-tokens") + 1] == "4"
    assert "--no-enable-prefix-caching" in command and args.temperature == 0.5
    plain = server_command(parser.parse_args(["serve", "--model", "m", "--launch"]), ModelSpec("m", "m", "auto"), 1)
    assert "--speculative-model" not in plain and "--no-enable-prefix-caching" not in plain


def test_export_reloads_to_the_same_weights(spec_sweep, tmp_path):
    """An engine's fused q/k/v and gate/up weights, written under Hugging Face names, load back into
    octavo as the same tensors (the controlled pair reaches the server this way)."""
    import torch

    from octavo import LLM
    from octavo.bench.models import write_synthetic_tokenizer

    config = {**json.loads((REPO / "bench" / "configs" / "llama-3.1-8b.json").read_text()), **spec_sweep.SMOKE_OVERRIDES}
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    kwargs = dict(max_model_len=64, max_num_seqs=2, num_gpu_blocks_override=16, device="cpu")
    model = LLM(str(source), load_format="dummy", seed=5, **kwargs).llm_engine.model_runner.model
    out = tmp_path / "exported"
    written = spec_sweep.save_checkpoint(model, config, out, max_shard_bytes=200_000)
    (out / "config.json").write_text(json.dumps(config))
    write_synthetic_tokenizer(str(out), config["vocab_size"], config["eos_token_id"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert "model.layers.0.self_attn.k_proj.weight" in index["weight_map"]
    assert "model.layers.0.mlp.up_proj.weight" in index["weight_map"]
    assert written == sum(p.numel() * p.element_size() for p in model.parameters())
    reloaded = LLM(str(out), load_format="auto", **kwargs).llm_engine.model_runner.model
    theirs = dict(reloaded.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, theirs[name]), name


# ---- the smoke mode, end to end ------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("octavo.runtime.server") is None, reason="no server")
def test_smoke_sweep_end_to_end(tmp_path):
    """Both pairs on a tiny CPU setup: the calibration child, the exported controlled pair and the
    demo pair each served without and with the draft, then the report. Numbers on a shared CPU mean
    nothing; the plumbing is what is checked."""
    out = tmp_path / "out"
    result, doc = run_smoke("spec_sweep", out, "--concurrency", "1", "--workdir", str(tmp_path / "work"), timeout=240)
    assert doc["kind"] == "spec-sweep" and doc["env"]["command"].startswith("python bench/spec_sweep.py --smoke")
    assert not list(out.glob("*.partial.json"))
    pairs = {entry["name"]: entry for entry in doc["pairs"]}
    assert list(pairs) == ["controlled", "demo"] and not any(e["error"] for e in pairs.values())

    calibration = pairs["controlled"]["calibration"]
    assert calibration["draft_layers"] == 2 and calibration["k"] == 4 and not calibration["scale_given"]
    assert calibration["scale"] in [e["scale"] for e in calibration["evaluations"]]
    assert 0 <= calibration["measured_at_scale"]["greedy"]["acceptance_rate"] <= 1
    assert "o_proj" in pairs["controlled"]["construction"] and "s = " in pairs["controlled"]["construction"]
    assert not (tmp_path / "work" / "checkpoints").exists()  # removed after the pair ran

    for entry in pairs.values():
        runs = entry["runs"]
        assert runs["no-spec"]["settings"]["speculative_model"] is None
        assert runs["spec"]["settings"]["speculative_model"] == entry["draft"]
        assert "--speculative-model" in runs["spec"]["settings"]["server_command"]
        assert "--speculative-model" not in runs["no-spec"]["settings"]["server_command"]
        for mode in ("no-spec", "spec"):
            (level,) = runs[mode]["levels"]
            assert level["num_errors"] == 0 and level["output_tokens"] == level["num_requests"] * 8
            assert level["server_counters"]["generation_tokens"] == level["output_tokens"]
            assert (level["spec"] is None) == (mode == "no-spec")
        (row,) = entry["comparison"]
        assert row["concurrency"] == 1
        assert row["ratios"]["output_tokens_per_s"] == pytest.approx(
            row["spec"]["output_tokens_per_s"] / row["no_spec"]["output_tokens_per_s"])
        assert [g["verdict"] for g in entry["goals"]] == [False, False, False]  # a CPU run: context only
    demo = pairs["demo"]["runs"]["spec"]
    assert demo["settings"]["prompt_text"].endswith("held-out-shakespeare.txt")
    assert demo["settings"]["prompt_corpus_tokens"] > 1000

    markdown = (out / result.name.replace(".json", ".md")).read_text()
    assert "### controlled pair" in markdown and "### demo pair" in markdown and "acceptance" in markdown
    pngs = sorted(p.name for p in out.glob("*.png"))
    if importlib.util.find_spec("matplotlib") is not None:
        assert len(pngs) == 8  # per pair: tps, generation-time, ttft, summary
    assert len(list(out.glob("*-server.log"))) == 4

    # The report again from the JSON alone.
    again = tmp_path / "again"
    assert load_bench_script("spec_sweep").main(["--report-from", str(result), "--out", str(again)]) == 0
    assert (again / result.name.replace(".json", ".md")).read_text() == markdown
