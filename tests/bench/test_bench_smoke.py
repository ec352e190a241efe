"""`octavo bench` end to end on a tiny model with tiny counts (CPU): every mode writes its files,
and the numbers are positive and add up."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

ENGINE = ["--max-model-len", "64", "--max-num-seqs", "8"]


def check_env(data: dict) -> None:
    env = data["env"]
    for key in ("date", "time_utc", "command", "git_commit", "device", "versions"):
        assert key in env, key
    assert env["command"].startswith("octavo")
    assert env["device"]["name"] and env["versions"]["torch"] and env["versions"]["transformers"]


def test_latency_with_hf_baseline_and_roofline(bench, llama_dir):
    code, data, files = bench("latency", "--model", str(llama_dir), "--batch-size", "1,2", "--input-len", "8",
                              "--output-len", "4", "--num-iters", "1", "--baseline", "hf", "--roofline", *ENGINE)
    assert code == 0
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["json", "md", "png"]
    check_env(data)
    assert data["kind"] == "latency" and data["model"]["weight_bytes"] > 0
    assert data["roofline"]["copy_bandwidth_gbps"] > 0 and data["roofline"]["matmul_tflops"] > 0
    assert [row["batch_size"] for row in data["rows"]] == [1, 2]
    for row in data["rows"]:
        bs = row["batch_size"]
        for engine in ("octavo", "hf"):
            result = row[engine]
            (run,) = result["iterations"]
            assert run["output_tokens"] == bs * 4
            assert len(run["step_ms"]) == 3  # one token from the prefill, three decode steps
            assert 0 < result["prefill_ms"] < result["total_ms"]
            assert result["decode_ms_per_step"] > 0
            assert result["output_tokens_per_s"] == pytest.approx(bs * 4 / (result["total_ms"] / 1e3))
        assert row["floor"]["floor_ms"] > 0
        assert row["ratios"]["hf_step_over_octavo_step"] == pytest.approx(
            row["hf"]["decode_ms_per_step"] / row["octavo"]["decode_ms_per_step"])


def test_latency_of_one_output_token_times_the_prefill_only(bench, llama_dir, tmp_path):
    """--output-len 1 (prefill plus the first token, as vLLM's latency benchmark reports it) has no
    decode step: its ms/step is absent (None, "—" in the table), never 0."""
    code, data, files = bench("latency", "--model", str(llama_dir), "--batch-size", "1,2", "--input-len", "8",
                              "--output-len", "1", "--num-iters", "1", "--roofline", *ENGINE)
    assert code == 0
    for row in data["rows"]:
        assert row["octavo"]["prefill_ms"] > 0 and row["octavo"]["decode_ms_per_step"] is None
        assert "octavo_step_over_floor" not in row["ratios"]
    (md,) = [f for f in files if f.endswith(".md")]
    table = (tmp_path / "out" / md).read_text().split("|---")[-1]
    assert "| 1 | 8 | 1 |" in table and "0.00" not in table and "—" in table


def test_throughput_with_hf_subset(bench, llama_dir):
    code, data, files = bench("throughput", "--model", str(llama_dir), "--num-prompts", "6", "--input-len-range",
                              "4:12", "--output-len-range", "2:6", "--baseline", "hf", "--hf-batch-size", "2",
                              "--hf-num-prompts", "4", "--seed", "3", *ENGINE)
    assert code == 0 and len(files) == 2
    check_env(data)
    ours, hf = data["octavo"], data["hf"]
    records = ours["records"]
    assert len(records) == 6 and ours["num_errors"] == 0
    assert all(4 <= r["prompt_len"] <= 12 and 2 <= r["output_len"] <= 6 for r in records)
    assert ours["output_tokens"] == sum(r["output_tokens"] for r in records) == sum(r["output_len"] for r in records)
    assert ours["prompt_tokens"] == sum(r["prompt_len"] for r in records)
    assert ours["output_tokens_per_s"] == pytest.approx(ours["output_tokens"] / ours["elapsed_s"])
    assert all(0 < r["ttft_ms"] <= r["e2e_ms"] for r in records)
    # HF ran the same first four requests, in two static batches of two.
    assert hf["subset_size"] == 4 and hf["num_batches"] == 2 and hf["extrapolated"]
    assert [r["prompt_len"] for r in hf["records"]] == [r["prompt_len"] for r in records[:4]]
    assert hf["output_tokens"] == sum(r["output_len"] for r in records[:4]) <= hf["generated_tokens_incl_padding"]
    assert data["ratios"]["output_tps_vs_hf"] == pytest.approx(
        ours["output_tokens_per_s"] / hf["output_tokens_per_s"])


def test_config_with_dummy_weights(bench, tiny_overrides):
    code, data, _ = bench("latency", "--config", "llama-3.1-8b", "--hf-overrides", tiny_overrides,
                          "--batch-size", "2", "--input-len", "8", "--output-len", "3", "--num-iters", "1",
                          "--tag", "tiny", *ENGINE)
    assert code == 0
    model = data["model"]
    assert model["name"] == "llama-3.1-8b" and model["load_format"] == "dummy"
    assert model["config_source"].endswith("bench/configs/llama-3.1-8b.json")
    assert model["vocab_size"] == 512 and model["num_layers"] == 2 and model["dtype"] == "float32"
    assert 0 < model["num_params"] < 1_000_000
    assert data["rows"][0]["octavo"]["iterations"][0]["output_tokens"] == 6


def test_bad_flags_name_the_fix(bench, capsys):
    code, _, _ = bench("latency", "--config", "no-such-model")
    assert code == 2
    assert "llama-3.1-8b" in capsys.readouterr().err
    code, _, _ = bench("serve", "--config", "llama-3.2-1b")
    assert code == 2
    assert "--launch" in capsys.readouterr().err
    code, _, _ = bench("spec", "--pair", "demo,sweep")
    assert code == 2 and "demo, controlled, chain, paths" in capsys.readouterr().err
    if not torch.cuda.is_available():
        code, _, _ = bench("kernels")
        assert code == 2 and "CUDA" in capsys.readouterr().err


def test_synthetic_tokenizer_decodes_every_id(tmp_path):
    from transformers import AutoTokenizer

    from octavo.bench.models import has_tokenizer, write_synthetic_tokenizer

    write_synthetic_tokenizer(str(tmp_path), 300, eos_token_id=2)
    assert has_tokenizer(str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer) == 300 and tokenizer.eos_token_id == 2
    assert tokenizer.decode([96, 299]) == "w96 w299"
    assert tokenizer.convert_ids_to_tokens([1, 28, 92, 94]) == [" ", ";", "{", "}"]  # JSON can be spelled
    assert tokenizer.convert_ids_to_tokens([2]) == ["w2"]  # the EOS id keeps its word


@pytest.mark.skipif(importlib.util.find_spec("octavo.runtime.server") is None,
                    reason="the OpenAI server (octavo.runtime.server) is not built yet")
def test_serve_with_a_json_schema_on_a_config_model(bench, tiny_overrides):
    """The structured phase's CPU smoke test: a --config model (dummy weights, synthetic tokenizer)
    serves requests constrained by bench/schemas/structured.json, and compile time is reported."""
    code, data, _ = bench("serve", "--config", "llama-3.1-8b", "--hf-overrides", tiny_overrides, "--launch",
                          "--launch-timeout", "180", "--concurrency", "1,2", "--num-prompts", "2", "--input-len", "8",
                          "--output-len", "12", "--num-warmups", "1", "--json-schema", "bench/schemas/structured.json",
                          "--tag", "structured", *ENGINE)
    assert code == 0, data and [r["error"] for r in data["records"] if r["error"]]
    assert data["total_errors"] == 0 and data["settings"]["synthetic_tokenizer"]
    structured = data["structured_outputs"]
    assert structured["grammars_compiled"] == 1 and structured["compile_ms_per_schema"] > 0
    assert all(0 < r["output_tokens"] <= 12 for r in data["records"])


@pytest.mark.skipif(importlib.util.find_spec("octavo.runtime.server") is None,
                    reason="the OpenAI server (octavo.runtime.server) is not built yet")
def test_serve_sweep_against_launched_server(bench, llama_dir):
    code, data, files = bench("serve", "--model", str(llama_dir), "--launch", "--launch-timeout", "180",
                              "--concurrency", "1,2", "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
                              "--num-warmups", "2", "--latency-anchor", "--anchor-iters", "1", *ENGINE)
    assert code == 0, data and [r["error"] for r in data["records"] if r["error"]]
    check_env(data)
    assert sum(f.endswith(".png") for f in files) == 3 and any(f.endswith("-server.log") for f in files)
    assert data["total_errors"] == 0 and data["settings"]["launched"]
    assert [level["concurrency"] for level in data["levels"]] == [1, 2]
    for level in data["levels"]:
        assert level["num_requests"] == 3 and level["output_tokens"] == 12
        assert level["output_tokens_per_s"] == pytest.approx(level["output_tokens"] / level["duration_s"])
        assert 0 < level["ttft_ms"]["p50"] <= level["e2e_ms"]["p50"]
    records = data["records"]
    assert len(records) == 6 and all(r["output_tokens"] == 4 and r["tpot_ms"] > 0 for r in records)
    assert data["anchor"]["decode_ms_per_step"] > 0
    assert data["ratios"]["tpot_c1_over_latency_bs1_step"] > 0


def test_throughput_profile_summarises_the_steps(bench, llama_dir, tmp_path):
    """--profiler-config: the timed run is left alone, a second run is recorded (its delay and limit
    pick the steps) and its trace summarised: phases per step, and no GPU share on a CPU."""
    config = ('{"profiler": "torch", "torch_profiler_dir": "%s", "delay_iterations": 2, "max_iterations": 4}'
              % (tmp_path / "traces"))
    code, data, _ = bench("throughput", "--model", str(llama_dir), "--num-prompts", "4", "--input-len-range",
                          "4:8", "--output-len-range", "8:8", "--num-warmups", "0", "--profiler-config", config,
                          *ENGINE)
    assert code == 0 and data["octavo"]["num_errors"] == 0
    ((name, summary),) = data["profile"].items()
    assert (tmp_path / "traces" / name).is_file()
    assert summary["num_steps"] == 4
    phases = summary["phases"]
    assert {"step", "schedule", "launch", "resolve", "wait", "outputs"} <= set(phases)
    assert all(phases[p]["count"] == 4 for p in ("step", "schedule", "launch", "outputs"))
    assert phases["launch"]["total_ms"] < phases["step"]["total_ms"]
    assert summary["gpu_busy_fraction"] is None  # no device on a CPU


def test_throughput_with_the_engine_core_process(bench, llama_dir):
    """--enable-multiprocessing reaches the engine, for the GPU A/B of the two modes; the results
    record the mode."""
    code, data, _ = bench("throughput", "--model", str(llama_dir), "--num-prompts", "4", "--input-len-range",
                          "4:12", "--output-len-range", "2:6", "--seed", "3", "--enable-multiprocessing", *ENGINE)
    assert code == 0
    ours = data["octavo"]
    assert ours["num_errors"] == 0 and ours["output_tokens"] == sum(r["output_len"] for r in ours["records"])
    assert '"enable_multiprocessing": true' in json.dumps(data)


def test_serve_launches_the_server_with_the_engine_core_process(bench, llama_dir):
    code, data, _ = bench("serve", "--model", str(llama_dir), "--launch", "--launch-timeout", "180",
                          "--concurrency", "2", "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
                          "--num-warmups", "1", "--enable-multiprocessing", *ENGINE)
    assert code == 0 and data["total_errors"] == 0
    assert data["levels"][0]["output_tokens"] == 12
    assert "--enable-multiprocessing" in data["settings"]["server_command"].split()


def test_serve_profile_reruns_the_largest_level_under_the_servers_profiler(bench, llama_dir, tmp_path):
    """--profiler-config on a launched server: the timed levels run unprofiled, then the largest
    level again between POST /start_profile and /stop_profile; the trace the server wrote is
    summarised (3 requests of 4 tokens at concurrency 2: at least 6 steps)."""
    config = '{"profiler": "torch", "torch_profiler_dir": "%s"}' % (tmp_path / "traces")
    code, data, files = bench("serve", "--model", str(llama_dir), "--launch", "--launch-timeout", "180",
                              "--concurrency", "1,2", "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
                              "--num-warmups", "1", "--profiler-config", config, *ENGINE)
    assert code == 0 and data["total_errors"] == 0
    ((name, summary),) = data["profile"].items()
    assert (tmp_path / "traces" / name).is_file()
    assert summary["num_steps"] >= 6 and summary["phases"]["step"]["count"] == summary["num_steps"]
    assert summary["gpu_busy_fraction"] is None  # no device on a CPU


def test_kernels_report_shows_the_split_width_and_both_gemm_layouts():
    from octavo.bench.kernels import markdown

    env = {"command": "octavo bench kernels", "time_utc": "2026-12-07T00:00:00+00:00", "git_commit": "abc",
           "device": {"name": "GPU"}, "versions": {}}
    result = {"kind": "kernels", "env": env, "model": {"name": "attention"}, "roofline": None,
              "decode": [{"batch": 1, "context": 192, "table_blocks": 128, "us": 9.5, "gbps": 80.0, "of_copy": 0.03,
                          "rel_err": 1e-3}],
              "prefill": [],
              "linear": [{"name": "o_proj", "in": 4096, "out": 4096, "tokens": 1, "rel_err": 1e-3,
                          "out_in_us": 19.7, "out_in_gbps": 1700.0, "out_in_of_copy": 0.57,
                          "in_out_us": 11.0, "in_out_gbps": 3050.0, "in_out_of_copy": 1.01}]}
    text = markdown(result)
    assert "| 192 | 1 | 128 | 9.5 |" in text
    assert "| o_proj | 4096 x 4096 | 1 | 19.7 | 1,700 | 57% | 11.0 | 3,050 | 101% |" in text


def test_kernels_report_puts_the_fused_projection_beside_the_unfused_ops_and_the_sweeps_best():
    from octavo.bench.kernels import markdown

    env = {"command": "octavo bench kernels --parts gemv", "time_utc": "2026-12-08T00:00:00+00:00",
           "git_commit": "abc", "device": {"name": "GPU"}, "versions": {}}
    sweep = [{"block_n": 8, "block_k": 512, "num_warps": 4, "num_stages": 1, "us": 19.0},
             {"block_n": 16, "block_k": 1024, "num_warps": 8, "num_stages": 3, "us": 17.5},
             {"block_n": 4, "block_k": 512, "num_warps": 4, "num_stages": 3, "us": math.inf, "error": "out of resources"}]
    result = {"kind": "kernels", "env": env, "model": {"name": "attention"}, "roofline": None, "decode": [],
              "prefill": [], "linear": [],
              "gemv": [{"name": "qkv", "in": 4096, "out": 6144, "tokens": 1, "prologue": "norm", "rel_err": 4e-3,
                        "unfused_us": 23.2, "unfused_gbps": 2172.0, "gemv_us": 18.4, "gemv_gbps": 2735.0,
                        "sweep": sweep}]}
    text = markdown(result)
    assert "| qkv | norm | 1 | 23.2 | 2,172 | 18.4 | 2,735 | 0.79 | 17.5 (n16 k1024 w8 s3) |" in text


def test_latency_roofline_under_tensor_parallelism_counts_the_collectives(bench, llama_dir, tmp_path):
    """At tensor_parallel_size 2 (two gloo processes) the decode floor is one rank's: its shard of
    the weights and its KV heads, plus a step's collectives (2 per layer + 2) at the all-reduce
    time measured on the group for each batch size."""
    code, data, files = bench("latency", "--model", str(llama_dir), "--batch-size", "1,2", "--input-len", "8",
                              "--output-len", "4", "--num-iters", "1", "--roofline", "--tensor-parallel-size", "2",
                              *ENGINE)
    assert code == 0
    model = data["model"]
    assert model["tensor_parallel_size"] == 2 and model["collectives_per_step"] == 2 * model["num_layers"] + 2
    all_reduce = data["roofline"]["all_reduce_ms"]
    assert set(all_reduce) == {"1", "2"} and all(ms > 0 for ms in all_reduce.values())
    for row in data["rows"]:
        floor = row["floor"]
        assert floor["collective_ms"] == pytest.approx(model["collectives_per_step"] * all_reduce[str(row["batch_size"])])
        assert floor["floor_ms"] == pytest.approx(max(floor["memory_ms"], floor["compute_ms"]) + floor["collective_ms"])
    md = next(name for name in files if name.endswith(".md"))
    assert "collectives a step at the all-reduce time measured" in (tmp_path / "out" / md).read_text()
