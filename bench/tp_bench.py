"""Tensor parallelism on the device (nvidia-h200-x4; the TP <= 2 parts also fit nvidia-h200-x2).

Parts (--parts, default all, each written to the results as soon as it is measured):

  allreduce  NCCL all-reduce latency of one decode step's activations (hidden size x batch, bf16),
             eager and replayed from a CUDA graph, per TP size: the fixed cost TP adds per layer
             (two all-reduces a layer).
  roofline   llama-3.1-70b (random weights, bf16) at TP=4: ms per batch-1 decode step beside its
             floor, the weight bytes one GPU streams per step over the measured copy bandwidth.
  scaling    llama-3.1-8b at TP=1/2/4: batch-1 step time, and offline throughput of N requests.
  pair       the seed's pair, 70B target + 8B draft (draft TP 1 unless --pair-draft-tp), TP=4,
             max_num_seqs 8: output tokens/s at batch 1 and 8 with speculation off, with a fixed
             k, and adaptive; the measured per-step costs (draft proposals, target verification)
             and the speedup they imply at given acceptance rates. With random weights the draft
             and target agree on almost nothing, so measured acceptance is ~0: the projection
             from measured costs is the number to read.

    python bench/tp_bench.py --out bench/results                       # device, 4 GPUs, all parts
    python bench/tp_bench.py --out bench/results --parts roofline,pair  # split across calls
    python bench/tp_bench.py --smoke --out /tmp/tp-smoke               # CPU, gloo, tiny shapes

Writes <out>/<date>-tp-<device>-<parts>.json (settings, environment, every measurement) and .md.
Rough device time on nvidia-h200-x4: allreduce < 1 min, roofline 2-3 min (building 70B at TP=4),
scaling 3-4 min, pair 3-4 min per draft TP: split the parts across calls of the 10-minute limit.
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends are forced here, and inherited by
the worker processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Forced, not defaulted: multicast can take a shared host's GPUs out of service.
os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PARTS = ("allreduce", "roofline", "scaling", "pair")
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float32"}


# ---- settings ---------------------------------------------------------------------------------
def settings(args: argparse.Namespace) -> dict:
    """What each part runs: the device plan, or tiny shapes on the CPU with --smoke."""
    if args.smoke:
        return dict(device="cpu", dtype="float32", big=dict(TINY), small=dict(TINY), big_tp=2, scaling_tp=[1, 2],
                    draft=dict(TINY, num_hidden_layers=1), pair_tp=2, max_model_len=512, input_len=16,
                    output_len=8, num_prompts=8, throughput_input=(8, 24), throughput_output=(4, 12),
                    allreduce_tp=[2], allreduce_hidden=[64], k=3)
    from octavo.bench.models import config_file

    def load(name: str) -> dict:
        return json.loads(config_file(name).read_text())

    gpus = torch.cuda.device_count()
    return dict(device="cuda", dtype="bfloat16", big=load("llama-3.1-70b"), small=load("llama-3.1-8b"),
                big_tp=min(4, gpus), scaling_tp=[t for t in (1, 2, 4) if t <= gpus], draft=load("llama-3.1-8b"),
                pair_tp=min(4, gpus), max_model_len=4096, input_len=128, output_len=128,
                num_prompts=args.num_prompts, throughput_input=(128, 512), throughput_output=(64, 256),
                allreduce_tp=[t for t in (2, 4) if t <= gpus], allreduce_hidden=[4096, 8192], k=args.k)


def model_dir(config: dict) -> str:
    from octavo.bench.models import materialize_config

    return materialize_config(config, prefix="octavo-tp-bench-")


def build(config: dict, tp: int, plan: dict, **kwargs):
    from octavo.runtime.llm import LLM

    options = dict(load_format="dummy", dtype=plan["dtype"], device=plan["device"], seed=0,
                   max_model_len=plan["max_model_len"], tensor_parallel_size=tp)
    options.update(kwargs)
    start = time.perf_counter()
    llm = LLM(model_dir(config), **options)
    return llm, time.perf_counter() - start


def release(llm) -> None:
    llm.llm_engine.shutdown()
    from octavo.bench.models import release as free_memory

    del llm
    free_memory()


def shard_facts(llm) -> dict:
    """Bytes of weights on rank 0 (one GPU's shard), and those a decode step streams in full
    (all but the embedding table, whose step reads a few rows)."""
    model = llm.llm_engine.model_runner.model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.model.embed_tokens.weight
    streamed = total - embedding.numel() * embedding.element_size()
    if model.lm_head is None:  # tied: the head streams the embedding table
        streamed = total
    return {"weight_bytes_per_gpu": total, "streamed_bytes_per_gpu": streamed,
            "tensor_parallel_size": llm.llm_engine.config.parallel_config.tensor_parallel_size,
            "num_kv_blocks": llm.llm_engine.model_runner.num_blocks}


# ---- measurements -----------------------------------------------------------------------------
def decode_steps(llm, plan: dict, batch_size: int, tag: str, output_len: int | None = None) -> dict:
    """A batch of fixed requests to completion (after a short warm-up batch): ms per decode step
    and output tokens/s over the whole run."""
    from octavo.bench.latency import run_engine_batch
    from octavo.bench.workload import fixed_requests

    engine = llm.llm_engine
    vocab = engine.config.model_config.vocab_size
    run_engine_batch(engine, fixed_requests(batch_size, plan["input_len"], 4, vocab, seed=1), f"{tag}-warm")
    output_len = output_len or plan["output_len"]
    run = run_engine_batch(engine, fixed_requests(batch_size, plan["input_len"], output_len, vocab, seed=2), tag)
    steps = run["step_ms"]
    return {"batch_size": batch_size, "input_len": plan["input_len"], "output_len": output_len,
            "step_ms_p50": statistics.median(steps) if steps else None,
            "step_ms_mean": statistics.fmean(steps) if steps else None, "num_steps": len(steps),
            "prefill_ms": run["prefill_ms"], "total_ms": run["total_ms"],
            "output_tokens_per_s": run["output_tokens"] / (run["total_ms"] / 1e3)}


def offline_throughput(llm, plan: dict) -> dict:
    from octavo.bench.throughput import run_octavo
    from octavo.bench.workload import random_requests

    vocab = llm.llm_engine.config.model_config.vocab_size
    requests = random_requests(plan["num_prompts"], plan["throughput_input"], plan["throughput_output"], vocab, 3)
    result = run_octavo(llm, requests, use_tqdm=False)
    result.pop("records")
    return result


def _allreduce_rank(rank: int, world_size: int, port: int, device_type: str, numels: list[int], queue) -> None:
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    sync = (lambda: torch.cuda.synchronize(device)) if device_type == "cuda" else (lambda: None)
    results = []
    for numel in numels:
        x = torch.ones(numel, dtype=dtype, device=device)
        for _ in range(10):
            dist.all_reduce(x)
        iters = 200
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        sync()
        row = {"numel": numel, "bytes": numel * x.element_size(),
               "eager_us": (time.perf_counter() - start) / iters * 1e6}
        if device_type == "cuda":
            per_graph = 160  # two all-reduces a layer, 80 layers: one 70B decode step's worth
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(per_graph):
                    dist.all_reduce(x)
            graph.replay()
            sync()
            start = time.perf_counter()
            for _ in range(10):
                graph.replay()
            sync()
            row["graph_us"] = (time.perf_counter() - start) / (10 * per_graph) * 1e6
        results.append(row)
    dist.barrier()
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def allreduce_latency(plan: dict) -> list[dict]:
    import torch.multiprocessing as mp

    from octavo.runtime.distributed import _free_port

    rows = []
    for tp in plan["allreduce_tp"]:
        numels = [h * b for h in plan["allreduce_hidden"] for b in (1, 8)]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        port = _free_port()
        processes = [ctx.Process(target=_allreduce_rank, args=(r, tp, port, plan["device"], numels, queue))
                     for r in range(tp)]
        for p in processes:
            p.start()
        results = queue.get(timeout=300)
        for p in processes:
            p.join(timeout=60)
        rows += [dict(r, tensor_parallel_size=tp) for r in results]
    return rows


# ---- parts ------------------------------------------------------------------------------------
def part_allreduce(plan: dict, args) -> dict:
    return {"rows": allreduce_latency(plan)}


def part_roofline(plan: dict, args) -> dict:
    from octavo.bench import roofline

    ceiling = roofline.measure(plan["device"] if plan["device"] == "cpu" else "cuda:0")
    llm, build_s = build(plan["big"], plan["big_tp"], plan, max_num_seqs=8)
    try:
        facts = shard_facts(llm)
        rows = [decode_steps(llm, plan, batch, f"roof-{batch}") for batch in (1, 8)]
    finally:
        release(llm)
    bandwidth = ceiling["copy_bandwidth_gbps"] * 1e9
    floor_ms = facts["streamed_bytes_per_gpu"] / bandwidth * 1e3
    for row in rows:
        # Batch 1 streams the weights once; K/V of a 128..256-token context is negligible next to them.
        row["floor_ms"] = floor_ms
        row["fraction_of_roofline"] = floor_ms / row["step_ms_p50"] if row["step_ms_p50"] else None
    return {"model": "big", "build_s": build_s, "facts": facts, "ceiling": ceiling, "rows": rows}


def part_scaling(plan: dict, args) -> dict:
    rows = []
    for tp in plan["scaling_tp"]:
        llm, build_s = build(plan["small"], tp, plan, max_num_seqs=args.max_num_seqs)
        try:
            row = {"tensor_parallel_size": tp, "build_s": build_s, **shard_facts(llm)}
            row["batch1"] = decode_steps(llm, plan, 1, f"scale-{tp}")
            row["throughput"] = offline_throughput(llm, plan)
        finally:
            release(llm)
        rows.append(row)
    base = rows[0]["throughput"]["output_tokens_per_s"]
    for row in rows:
        row["throughput_speedup"] = row["throughput"]["output_tokens_per_s"] / base
        row["batch1_speedup"] = rows[0]["batch1"]["step_ms_p50"] / row["batch1"]["step_ms_p50"]
    return {"rows": rows}


class StepCosts:
    """Wall time (device synchronized) of the draft's proposals and the target's forward, per step."""

    def __init__(self, engine) -> None:
        self.propose: list[float] = []
        self.execute: list[float] = []
        sync = (lambda: torch.cuda.synchronize()) if engine.config.device.type == "cuda" else (lambda: None)
        for obj, name, sink in ((engine.spec_decoder, "propose", self.propose),
                                (engine.model_runner, "execute", self.execute)):
            original = getattr(obj, name)

            def timed(*a, _original=original, _sink=sink, **kw):
                sync()
                start = time.perf_counter()
                result = _original(*a, **kw)
                sync()
                _sink.append((time.perf_counter() - start) * 1e3)
                return result

            setattr(obj, name, timed)

    def reset(self) -> None:
        self.propose.clear()
        self.execute.clear()

    def medians(self) -> dict:
        return {"propose_ms_p50": statistics.median(self.propose) if self.propose else 0.0,
                "execute_ms_p50": statistics.median(self.execute) if self.execute else 0.0}


def part_pair(plan: dict, args) -> dict:
    from octavo.runtime.spec_decode import expected_tokens_per_step

    results = []
    for draft_tp in args.pair_draft_tp:
        llm, build_s = build(plan["big"], plan["pair_tp"], plan, max_num_seqs=8, speculative_model=model_dir(plan["draft"]),
                             num_speculative_tokens=plan["k"], speculative_draft_tensor_parallel_size=draft_tp)
        engine = llm.llm_engine
        spec = engine.spec_decoder
        costs = StepCosts(engine)
        modes = {"off": (0, False), f"fixed-k{plan['k']}": (plan["k"], False), "adaptive": (plan["k"], True)}
        rows = []
        try:
            for batch in (1, 8):
                for mode, (k, adaptive) in modes.items():
                    spec.k_max, spec.adaptive = k, adaptive
                    before = (engine.stats.spec_draft_tokens, engine.stats.spec_accepted_tokens)
                    costs.reset()
                    row = decode_steps(llm, plan, batch, f"pair-{draft_tp}-{batch}-{mode}")
                    drafted = engine.stats.spec_draft_tokens - before[0]
                    accepted = engine.stats.spec_accepted_tokens - before[1]
                    row.update(mode=mode, k=k, draft_tokens=drafted,
                               acceptance_rate=accepted / drafted if drafted else None, **costs.medians())
                    rows.append(row)
        finally:
            facts = shard_facts(llm)
            release(llm)
        # What the measured costs imply at acceptance rate a: a fixed-k step emits E(a, k) tokens
        # per request and costs what the fixed-k run's step cost; plain decoding emits one.
        projections = []
        for batch in (1, 8):
            off = next(r for r in rows if r["batch_size"] == batch and r["mode"] == "off")
            fixed = next(r for r in rows if r["batch_size"] == batch and r["mode"].startswith("fixed"))
            for a in (0.5, 0.6, 0.7, 0.8, 0.9):
                speedup = expected_tokens_per_step(a, fixed["k"]) * off["step_ms_p50"] / fixed["step_ms_p50"]
                projections.append({"batch_size": batch, "acceptance_rate": a, "k": fixed["k"],
                                    "projected_speedup": speedup})
        results.append({"draft_tensor_parallel_size": draft_tp, "build_s": build_s, "facts": facts, "rows": rows,
                        "projections": projections})
    return {"configurations": results}


# ---- report -----------------------------------------------------------------------------------
def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    env, plan, parts = result["environment"], result["settings"], result["parts"]
    lines = [f"# Tensor parallelism ({'smoke, CPU' if plan['device'] == 'cpu' else env['device'].get('name', 'GPU')})",
             "", f"{env['date']}, commit {env['git_commit']}, torch {env['versions'].get('torch')}; "
             f"command `{env['command']}`", ""]
    if "allreduce" in parts:
        lines += ["## All-reduce latency (one decode step's activations)", "",
                  "| TP | bytes | eager us | CUDA-graph us |", "|---|---|---|---|"]
        for r in parts["allreduce"]["rows"]:
            lines.append(f"| {r['tensor_parallel_size']} | {r['bytes']} | {_f(r['eager_us'], 1)} | "
                         f"{_f(r.get('graph_us'), 1)} |")
        lines.append("")
    if "roofline" in parts:
        p = parts["roofline"]
        lines += [f"## Big model at TP={p['facts']['tensor_parallel_size']}: decode step vs roofline", "",
                  f"Copy bandwidth {p['ceiling']['copy_bandwidth_gbps']:.0f} GB/s (read + written, GPU 0); weights "
                  f"streamed per step per GPU {p['facts']['streamed_bytes_per_gpu'] / 2**30:.2f} GiB "
                  f"(of {p['facts']['weight_bytes_per_gpu'] / 2**30:.2f} GiB on the GPU); built in {p['build_s']:.0f} s.",
                  "", "| batch | ms/step (p50) | floor ms | fraction of roofline | output tok/s |", "|---|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['batch_size']} | {_f(r['step_ms_p50'])} | {_f(r['floor_ms'])} | "
                         f"{_f(r['fraction_of_roofline'])} | {_f(r['output_tokens_per_s'], 1)} |")
        lines.append("")
    if "scaling" in parts:
        lines += ["## Scaling on the small model", "",
                  "| TP | GiB/GPU | bs-1 ms/step | bs-1 speedup | throughput out tok/s | speedup | requests |",
                  "|---|---|---|---|---|---|---|"]
        for r in parts["scaling"]["rows"]:
            t = r["throughput"]
            lines.append(f"| {r['tensor_parallel_size']} | {r['weight_bytes_per_gpu'] / 2**30:.2f} | "
                         f"{_f(r['batch1']['step_ms_p50'])} | {_f(r['batch1_speedup'])} | "
                         f"{_f(t['output_tokens_per_s'], 1)} | {_f(r['throughput_speedup'])} | {t['num_requests']} |")
        lines.append("")
    if "pair" in parts:
        for c in parts["pair"]["configurations"]:
            lines += [f"## Speculative pair, target TP={plan['pair_tp']}, draft TP={c['draft_tensor_parallel_size']}",
                      "", "| batch | mode | ms/step | out tok/s | acceptance | draft ms/step | target ms/step |",
                      "|---|---|---|---|---|---|---|"]
            for r in c["rows"]:
                lines.append(f"| {r['batch_size']} | {r['mode']} | {_f(r['step_ms_p50'])} | "
                             f"{_f(r['output_tokens_per_s'], 1)} | {_f(r['acceptance_rate'])} | "
                             f"{_f(r['propose_ms_p50'])} | {_f(r['execute_ms_p50'])} |")
            lines += ["", "Projected speedup of the fixed-k step over plain decoding, from the measured step "
                      "times, at acceptance rate a (random weights accept ~nothing, so this is the number "
                      "to read):", "", "| batch | a | k | speedup |", "|---|---|---|---|"]
            for p in c["projections"]:
                lines.append(f"| {p['batch_size']} | {p['acceptance_rate']} | {p['k']} | {_f(p['projected_speedup'])} |")
            lines.append("")
    return "\n".join(lines)


def write(result: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{stem}.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny shapes: checks the script end to end")
    parser.add_argument("--num-prompts", type=int, default=256, help="requests in the scaling throughput run")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="scaling runs' max_num_seqs")
    parser.add_argument("--k", type=int, default=5, help="speculative tokens for the pair")
    parser.add_argument("--pair-draft-tp", default="1", help="draft TP sizes to try for the pair, e.g. 1,4")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}: choose from {', '.join(PARTS)}")
    args.pair_draft_tp = [int(t) for t in args.pair_draft_tp.split(",")]
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU here: run on the device, or pass --smoke for the CPU check")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from octavo.bench.env import device_slug, environment

    plan = settings(args)
    if args.smoke:
        torch.set_num_threads(1)
    env = environment(plan["device"], args)
    # The parts in the name: runs split across device calls do not overwrite each other.
    stem = f"{env['date']}-tp-{'smoke' if args.smoke else device_slug(env['device'])}-{'-'.join(parts)}"
    result = {"environment": env, "settings": {k: v for k, v in plan.items() if k not in ("big", "small", "draft")},
              "models": {k: plan[k] for k in ("big", "small", "draft")}, "parts": {}}
    for part in parts:
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        result["parts"][part] = globals()[f"part_{part}"](plan, args)
        result["parts"][part]["seconds"] = time.perf_counter() - start
        write(result, Path(args.out), stem)  # after every part: a run cut short keeps what it measured
        print(f"== {part} done in {time.perf_counter() - start:.0f} s", flush=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
