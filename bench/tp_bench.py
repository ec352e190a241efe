"""Tensor parallelism on the device: nvidia-h200-x4 as planned; adapted to nvidia-h200-x2 when only
two GPUs are visible (every TP size is min(planned, GPUs), and the results say so).

Parts (--parts, default all; each saved to the results as it is measured, row by row):

  allreduce  NCCL all-reduce latency of one decode step's activations (hidden size x batch, bf16),
             eager and replayed from a CUDA graph, per TP size: the fixed cost TP adds per layer
             (two all-reduces a layer).
  roofline   llama-3.1-70b (random weights, bf16) at TP=4 (TP=2 on two GPUs, the closest stand-in:
             70B bf16 is 141 GB, more than one H200 holds): ms per batch-1 decode step beside its
             floor, the weight bytes one GPU streams per step over the measured copy bandwidth.
  scaling    llama-3.1-8b at TP=1/2/4 (those that fit the GPUs): batch-1 step time, and offline
             throughput of N requests.
  pair       the seed's pair, 70B target + 8B draft (draft TP 1 unless --pair-draft-tp), target
             TP=4 (2 on two GPUs), max_num_seqs 8: output tokens/s at batch 1 and 8 with
             speculation off, with a fixed k, and adaptive; the measured per-step costs (draft
             proposals, target verification), how many steps drafted, and the speedup the costs
             imply at given acceptance rates. With random weights the draft and target agree on
             almost nothing, so measured acceptance is ~0: the cost of speculating, adaptive k
             falling back to plain decoding, and the projection from measured costs are what to read.

    python bench/tp_bench.py --out bench/results                       # device, all parts
    python bench/tp_bench.py --out bench/results --parts roofline,pair  # split across calls
    python bench/tp_bench.py --smoke --out /tmp/tp-smoke               # CPU, gloo, tiny shapes
    python bench/tp_bench.py --out $OUT/tp --stem tp --append --parts pair   # add to one file

Writes <out>/<stem>.json (settings, environment, every measurement) and .md; the stem defaults to
<date>-tp-<device>-<parts>. With --append, parts already in <stem>.json are kept (one file for a
suite whose parts run as separate processes: bench/run_tp_suite.sh). A part that fails or is
interrupted keeps the rows it measured and records the error.
Rough device time on nvidia-h200-x2: allreduce < 30 s, roofline 1-2 min (building 70B at TP=2),
scaling 1.5-2 min, pair 1.5-2 min. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends are
forced here, and inherited by the worker processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
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
PLANNED_TP = 4  # the plan (nvidia-h200-x4); fewer GPUs give min(4, GPUs)


def settings(args: argparse.Namespace) -> dict:
    """What each part runs: the device plan, or tiny shapes on the CPU with --smoke."""
    if args.smoke:
        return dict(device="cpu", dtype="float32", big=dict(TINY), small=dict(TINY), big_tp=2, scaling_tp=[1, 2],
                    draft=dict(TINY, num_hidden_layers=1), pair_tp=2, max_model_len=512, input_len=16,
                    output_len=8, num_prompts=8, throughput_input=(8, 24), throughput_output=(4, 12),
                    allreduce_tp=[2], allreduce_hidden=[64], k=3, gpus=0, note=None,
                    names=dict(big="tiny stand-in for 70B", small="tiny stand-in for 8B", draft="tiny"))
    from octavo.bench.models import config_file

    def load(name: str) -> dict:
        return json.loads(config_file(name).read_text())

    gpus = torch.cuda.device_count()
    big_tp = min(PLANNED_TP, gpus)
    note = None
    if big_tp < PLANNED_TP:
        note = (f"{gpus} GPUs visible (the planned nvidia-h200-x{PLANNED_TP} is not lent): the 70B parts run at "
                f"TP={big_tp} instead of TP={PLANNED_TP}, the closest stand-in (70B bf16 is 141 GB, more than one "
                f"H200 holds); each GPU streams {PLANNED_TP // big_tp}x the weight bytes a TP={PLANNED_TP} rank "
                f"would, and there are {PLANNED_TP // big_tp}x fewer ranks per all-reduce")
    return dict(device="cuda", dtype="bfloat16", big=load("llama-3.1-70b"), small=load("llama-3.1-8b"),
                big_tp=big_tp, scaling_tp=[t for t in (1, 2, 4) if t <= gpus], draft=load("llama-3.1-8b"),
                pair_tp=big_tp, max_model_len=4096, input_len=128, output_len=args.output_len,
                num_prompts=args.num_prompts, throughput_input=(128, 512), throughput_output=(64, 256),
                allreduce_tp=[t for t in (2, 4) if t <= gpus], allreduce_hidden=[4096, 8192], k=args.k,
                gpus=gpus, note=note, names=dict(big="llama-3.1-70b", small="llama-3.1-8b", draft="llama-3.1-8b"))


def model_dir(config: dict) -> str:
    from octavo.bench.models import materialize_config

    return materialize_config(config, prefix="octavo-tp-bench-")


def build(config: dict, tp: int, plan: dict, **kwargs):
    from octavo.runtime.llm import LLM

    options = dict(load_format="dummy", dtype=plan["dtype"], device=plan["device"], seed=0,
                   max_model_len=plan["max_model_len"], tensor_parallel_size=tp,
                   enforce_eager=plan.get("enforce_eager", False))
    options.update(kwargs)
    start = time.perf_counter()
    llm = LLM(model_dir(config), **options)
    return llm, time.perf_counter() - start


def shutdown(llm) -> None:
    """Stop the engine's workers. The caller then drops every reference it holds to the engine
    and calls free_memory(): memory comes back only once nothing refers to the model."""
    if llm is not None:
        llm.llm_engine.shutdown()


def free_memory() -> None:
    from octavo.bench.models import release

    release()


def gpu_memory_used_mib() -> list[int] | None:
    """Memory in use on every GPU, from nvidia-smi (asking torch would open a context on each)."""
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=20)
        return [int(v) for v in found.stdout.split()] if found.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def shard_facts(llm) -> dict:
    """Bytes of weights on rank 0 (one GPU's shard), and those a decode step streams in full
    (all but the embedding table, whose step reads a few rows)."""
    model = llm.llm_engine.model_runner.model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.model.embed_tokens.weight
    streamed = total - embedding.numel() * embedding.element_size()
    if model.lm_head is None:  # tied: the head streams the embedding table
        streamed = total
    facts = {"weight_bytes_per_gpu": total, "streamed_bytes_per_gpu": streamed,
             "tensor_parallel_size": llm.llm_engine.config.parallel_config.tensor_parallel_size,
             "num_kv_blocks": llm.llm_engine.model_runner.num_blocks,
             "cuda_graphs": sorted(llm.llm_engine.model_runner.graphs)}
    if llm.llm_engine.config.device.type == "cuda":
        facts["gpu_memory_used_mib"] = gpu_memory_used_mib()
    return facts


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
    # The results are out. Drop the graph first: while a graph that captured this group's
    # collectives is alive, teardown hangs (pytorch/pytorch#115388). The parent still kills a rank
    # that has not exited after 10 s.
    graph = None
    dist.distributed_c10d._abort_process_group()


def allreduce_latency(plan: dict, rows: list[dict], save) -> list[dict]:
    import queue as queue_module

    import torch.multiprocessing as mp

    from octavo.runtime.distributed import _free_port

    for tp in plan["allreduce_tp"]:
        numels = [h * b for h in plan["allreduce_hidden"] for b in (1, 8)]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        port = _free_port()
        processes = [ctx.Process(target=_allreduce_rank, args=(r, tp, port, plan["device"], numels, queue))
                     for r in range(tp)]
        for p in processes:
            p.start()
        try:
            deadline = time.monotonic() + 300
            while True:  # a rank that dies must not leave this waiting for its result
                try:
                    results = queue.get(timeout=2)
                    break
                except queue_module.Empty:
                    failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                    if failed or time.monotonic() > deadline:
                        raise RuntimeError(f"all-reduce ranks at TP={tp} failed (exit codes "
                                           f"{[p.exitcode for p in processes]}) or took over 300 s")
            rows += [dict(r, tensor_parallel_size=tp) for r in results]
            save()
            for p in processes:
                p.join(timeout=10)
        finally:
            for p in processes:
                if p.is_alive():
                    p.kill()
    return rows


# ---- parts ------------------------------------------------------------------------------------
# Each part fills `rec.data` (its entry in the results) as it measures and calls rec.save(): a
# part cut short by an error or a time limit keeps what it measured.
def part_allreduce(plan: dict, args, rec) -> None:
    rec.data["rows"] = []
    allreduce_latency(plan, rec.data["rows"], rec.save)


def part_roofline(plan: dict, args, rec) -> None:
    from octavo.bench import roofline

    d = rec.data
    d.update(model="big", note=plan["note"])
    d["ceiling"] = ceiling = roofline.measure(plan["device"] if plan["device"] == "cpu" else "cuda:0")
    rec.save()
    llm, d["build_s"] = build(plan["big"], plan["big_tp"], plan, max_num_seqs=8)
    try:
        d["facts"] = facts = shard_facts(llm)
        bandwidth = ceiling["copy_bandwidth_gbps"] * 1e9
        floor_ms = facts["streamed_bytes_per_gpu"] / bandwidth * 1e3
        d["rows"] = []
        rec.save()
        for batch in (1, 8):
            row = decode_steps(llm, plan, batch, f"roof-{batch}")
            # Batch 1 streams the weights once; K/V of a 128..256-token context is negligible next to them.
            row["floor_ms"] = floor_ms
            row["fraction_of_roofline"] = floor_ms / row["step_ms_p50"] if row["step_ms_p50"] else None
            d["rows"].append(row)
            rec.save()
    finally:
        shutdown(llm)
        llm = None
        free_memory()


def part_scaling(plan: dict, args, rec) -> None:
    rows = rec.data["rows"] = []
    for tp in plan["scaling_tp"]:
        llm, build_s = build(plan["small"], tp, plan, max_num_seqs=args.max_num_seqs)
        try:
            row = {"tensor_parallel_size": tp, "build_s": build_s, **shard_facts(llm)}
            rows.append(row)
            row["batch1"] = decode_steps(llm, plan, 1, f"scale-{tp}")
            rec.save()
            row["throughput"] = offline_throughput(llm, plan)
            rec.save()
        finally:
            # The next TP size is built in this process: this engine's weights and KV cache must
            # be gone first (its KV cache alone holds most of GPU 0).
            shutdown(llm)
            llm = None
            free_memory()
    base = rows[0]
    for row in rows:
        if "throughput" in row and "throughput" in base:
            row["throughput_speedup"] = row["throughput"]["output_tokens_per_s"] / base["throughput"]["output_tokens_per_s"]
        if row.get("batch1", {}).get("step_ms_p50") and base.get("batch1", {}).get("step_ms_p50"):
            row["batch1_speedup"] = base["batch1"]["step_ms_p50"] / row["batch1"]["step_ms_p50"]
    rec.save()


class StepCosts:
    """Wall time (device synchronized) of the draft's proposals and the target's forward, per step,
    and the draft tokens each proposal made (0: that step decoded plainly)."""

    def __init__(self, engine) -> None:
        self.propose: list[float] = []
        self.execute: list[float] = []
        self.proposed: list[int] = []
        sync = (lambda: torch.cuda.synchronize()) if engine.config.device.type == "cuda" else (lambda: None)
        scheduler = engine.scheduler
        for obj, name, sink in ((engine.spec_decoder, "propose", self.propose),
                                (engine.model_runner, "execute", self.execute)):
            original = getattr(obj, name)

            def timed(*a, _original=original, _sink=sink, _name=name, **kw):
                sync()
                start = time.perf_counter()
                result = _original(*a, **kw)
                sync()
                _sink.append((time.perf_counter() - start) * 1e3)
                if _name == "propose":
                    self.proposed.append(sum(len(r.spec_token_ids) for r in scheduler.running))
                return result

            setattr(obj, name, timed)

    def reset(self) -> None:
        self.propose.clear()
        self.execute.clear()
        self.proposed.clear()

    def summary(self) -> dict:
        drafting = [n for n in self.proposed if n > 0]
        return {"propose_ms_p50": statistics.median(self.propose) if self.propose else 0.0,
                "execute_ms_p50": statistics.median(self.execute) if self.execute else 0.0,
                "steps": len(self.proposed), "steps_with_drafts": len(drafting),
                "draft_tokens_per_drafting_step": statistics.fmean(drafting) if drafting else 0.0}


def part_pair(plan: dict, args, rec) -> None:
    from octavo.runtime.spec_policy import expected_tokens_per_step

    rec.data["note"] = plan["note"]
    configurations = rec.data["configurations"] = []
    for draft_tp in args.pair_draft_tp:
        llm, build_s = build(plan["big"], plan["pair_tp"], plan, max_num_seqs=8, speculative_model=model_dir(plan["draft"]),
                             num_speculative_tokens=plan["k"], speculative_draft_tensor_parallel_size=draft_tp)
        engine = llm.llm_engine
        spec = engine.spec_decoder
        costs = StepCosts(engine)  # patches two methods; built before anything that can fail
        modes = {"off": (0, False), f"fixed-k{plan['k']}": (plan["k"], False), "adaptive": (plan["k"], True)}
        rows: list[dict] = []
        config = {"draft_tensor_parallel_size": draft_tp, "target_tensor_parallel_size": plan["pair_tp"],
                  "build_s": build_s, "rows": rows, "projections": []}
        configurations.append(config)
        try:
            config["facts"] = shard_facts(llm)
            rec.save()
            for batch in (1, 8):
                for mode, (k, adaptive) in modes.items():
                    spec.k_max, spec.adaptive = k, adaptive
                    before = (engine.stats.spec_draft_tokens, engine.stats.spec_accepted_tokens)
                    costs.reset()
                    row = decode_steps(llm, plan, batch, f"pair-{draft_tp}-{batch}-{mode}")
                    drafted = engine.stats.spec_draft_tokens - before[0]
                    accepted = engine.stats.spec_accepted_tokens - before[1]
                    row.update(mode=mode, k=k, adaptive=adaptive, draft_tokens=drafted, accepted_tokens=accepted,
                               acceptance_rate=accepted / drafted if drafted else None, **costs.summary())
                    rows.append(row)
                    rec.save()
        finally:
            shutdown(llm)
            llm = engine = spec = costs = None
            free_memory()
        # What the measured costs imply at acceptance rate a: a fixed-k step emits E(a, k) tokens
        # per request and costs what the fixed-k run's step cost; plain decoding emits one.
        for batch in (1, 8):
            off = next((r for r in rows if r["batch_size"] == batch and r["mode"] == "off"), None)
            fixed = next((r for r in rows if r["batch_size"] == batch and r["mode"].startswith("fixed")), None)
            if not off or not fixed or not off["step_ms_p50"] or not fixed["step_ms_p50"]:
                continue
            for a in (0.5, 0.6, 0.7, 0.8, 0.9):
                speedup = expected_tokens_per_step(a, fixed["k"]) * off["step_ms_p50"] / fixed["step_ms_p50"]
                config["projections"].append({"batch_size": batch, "acceptance_rate": a, "k": fixed["k"],
                                              "projected_speedup": speedup})
        rec.save()


# ---- report -----------------------------------------------------------------------------------
def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _eager(part: dict) -> str:
    return " (eager: no CUDA graphs)" if part.get("enforce_eager") else ""


def _error_lines(part: dict) -> list[str]:
    if not part.get("error"):
        return []
    last = part["error"].strip().splitlines()[-1]
    return [f"**This part did not finish** ({part.get('status', 'failed')}): `{last[:300]}`; the rows above are what it "
            "measured before.", ""]


def markdown(result: dict) -> str:
    env, plan, parts = result["environment"], result["settings"], result["parts"]
    device = "smoke, CPU" if plan["device"] == "cpu" else env["device"].get("name", "GPU")
    if plan["device"] != "cpu":
        device += f" x{env['device'].get('count', '?')}"
    versions = env["versions"]
    names = plan.get("names") or dict(big="big model", small="small model", draft="draft")
    lines = [f"# Tensor parallelism ({device})", "",
             f"{env['date']}, commit {env['git_commit']}, torch {versions.get('torch')}, triton {versions.get('triton')}, "
             f"transformers {versions.get('transformers')}; " + (
                 f"command `{env['command']}`" if len(result.get("runs", [])) <= 1 else
                 f"parts run by {len(result['runs'])} commands, the last `{env['command']}` (all in the JSON's runs)"),
             ""]
    if plan.get("note"):
        lines += [f"Note: {plan['note']}.", ""]
    if "allreduce" in parts:
        p = parts["allreduce"]
        lines += ["## All-reduce latency (one decode step's activations)", "",
                  "| TP | bytes | eager us | CUDA-graph us |", "|---|---|---|---|"]
        for r in p.get("rows", []):
            lines.append(f"| {r['tensor_parallel_size']} | {r['bytes']} | {_f(r['eager_us'], 1)} | "
                         f"{_f(r.get('graph_us'), 1)} |")
        lines += [""] + _error_lines(p)
    if "roofline" in parts:
        p = parts["roofline"]
        facts, ceiling = p.get("facts"), p.get("ceiling")
        tp = facts["tensor_parallel_size"] if facts else plan["big_tp"]
        lines += [f"## {names['big']} (dummy weights) at TP={tp}: decode step vs roofline{_eager(p)}", ""]
        if ceiling:
            text = f"Copy bandwidth {ceiling['copy_bandwidth_gbps']:.0f} GB/s (read + written, GPU 0)"
            if facts:
                text += (f"; weights streamed per step per GPU {facts['streamed_bytes_per_gpu'] / 2**30:.2f} GiB "
                         f"(of {facts['weight_bytes_per_gpu'] / 2**30:.2f} GiB on the GPU); "
                         f"GPU memory in use {facts.get('gpu_memory_used_mib')} MiB; {facts['num_kv_blocks']} KV blocks; "
                         f"built in {p['build_s']:.0f} s")
                if tp < PLANNED_TP:
                    text += (f". At TP={PLANNED_TP} the floor would be {PLANNED_TP // tp}x lower per GPU "
                             f"({facts['streamed_bytes_per_gpu'] * tp / PLANNED_TP / (ceiling['copy_bandwidth_gbps'] * 1e9) * 1e3:.2f} ms)")
            lines += [text + ".", ""]
        lines += ["| batch | ms/step (p50) | floor ms | fraction of roofline | output tok/s |", "|---|---|---|---|---|"]
        for r in p.get("rows", []):
            lines.append(f"| {r['batch_size']} | {_f(r['step_ms_p50'])} | {_f(r['floor_ms'])} | "
                         f"{_f(r['fraction_of_roofline'])} | {_f(r['output_tokens_per_s'], 1)} |")
        lines += [""] + _error_lines(p)
    if "scaling" in parts:
        p = parts["scaling"]
        lines += [f"## Scaling on {names['small']} (dummy weights){_eager(p)}", "",
                  "| TP | GiB/GPU | bs-1 ms/step | bs-1 speedup | throughput out tok/s | speedup | requests |",
                  "|---|---|---|---|---|---|---|"]
        for r in p.get("rows", []):
            t = r.get("throughput", {})
            lines.append(f"| {r['tensor_parallel_size']} | {r['weight_bytes_per_gpu'] / 2**30:.2f} | "
                         f"{_f(r.get('batch1', {}).get('step_ms_p50'))} | {_f(r.get('batch1_speedup'))} | "
                         f"{_f(t.get('output_tokens_per_s'), 1)} | {_f(r.get('throughput_speedup'))} | "
                         f"{t.get('num_requests', '-')} |")
        lines += [""] + _error_lines(p)
    if "pair" in parts:
        p = parts["pair"]
        for c in p.get("configurations", []):
            lines += [f"## Speculative pair: {names['big']} target TP={c.get('target_tensor_parallel_size', plan['pair_tp'])}, "
                      f"{names['draft']} draft TP={c['draft_tensor_parallel_size']}, max_num_seqs 8, k={plan['k']} "
                      f"(random weights: acceptance ~0){_eager(p)}",
                      "", "| batch | mode | ms/step | out tok/s | acceptance | steps drafting / all | "
                      "draft ms/step | target ms/step |", "|---|---|---|---|---|---|---|---|"]
            for r in c["rows"]:
                lines.append(f"| {r['batch_size']} | {r['mode']} | {_f(r['step_ms_p50'])} | "
                             f"{_f(r['output_tokens_per_s'], 1)} | {_f(r['acceptance_rate'])} | "
                             f"{r.get('steps_with_drafts', '-')} / {r.get('steps', '-')} | "
                             f"{_f(r['propose_ms_p50'])} | {_f(r['execute_ms_p50'])} |")
            if c["projections"]:
                lines += ["", "Projected speedup of the fixed-k step over plain decoding, from the measured step "
                          "times, at acceptance rate a (random weights accept ~nothing, so this is the number "
                          "to read):", "", "| batch | a | k | speedup |", "|---|---|---|---|"]
                for q in c["projections"]:
                    lines.append(f"| {q['batch_size']} | {q['acceptance_rate']} | {q['k']} | {_f(q['projected_speedup'])} |")
            lines.append("")
        lines += _error_lines(p)
    return "\n".join(lines)


def write(result: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2, default=str)), (".md", markdown(result))):
        partial = out / f"{stem}{suffix}.tmp"
        partial.write_text(text)
        partial.replace(out / f"{stem}{suffix}")  # a reader never sees half a file


class PartRecorder:
    """One part's entry in the results, and a way to save them all as it fills."""

    def __init__(self, result: dict, part: str, out: Path, stem: str) -> None:
        self.result, self.out, self.stem = result, out, stem
        self.data: dict = {"status": "running"}
        result["parts"][part] = self.data

    def save(self) -> None:
        write(self.result, self.out, self.stem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--stem", default=None, help="file name without suffix (default <date>-tp-<device>-<parts>)")
    parser.add_argument("--append", action="store_true", help="keep the parts already in <out>/<stem>.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny shapes: checks the script end to end")
    parser.add_argument("--num-prompts", type=int, default=256, help="requests in the scaling throughput run")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="scaling runs' max_num_seqs")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens per request in the fixed batches")
    parser.add_argument("--k", type=int, default=5, help="speculative tokens for the pair")
    parser.add_argument("--pair-draft-tp", default="1", help="draft TP sizes to try for the pair, e.g. 1,2")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (a fallback if capture fails)")
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
    plan["enforce_eager"] = args.enforce_eager
    if args.smoke:
        torch.set_num_threads(1)
    env = environment(plan["device"], args)
    # The parts in the name: runs split across device calls do not overwrite each other.
    stem = args.stem or f"{env['date']}-tp-{'smoke' if args.smoke else device_slug(env['device'])}-{'-'.join(parts)}"
    out = Path(args.out)
    result = {"environment": env, "settings": {k: v for k, v in plan.items() if k not in ("big", "small", "draft")},
              "models": {k: plan[k] for k in ("big", "small", "draft")}, "parts": {}, "runs": []}
    previous = out / f"{stem}.json"
    if args.append and previous.is_file():
        try:
            earlier = json.loads(previous.read_text())
            result["parts"] = {k: v for k, v in earlier.get("parts", {}).items() if k not in parts}
            result["runs"] = earlier.get("runs", [])
        except (OSError, ValueError) as exc:
            print(f"cannot read {previous} ({exc}): starting a new file", flush=True)
    result["runs"].append({"command": env["command"], "parts": parts, "time_utc": env["time_utc"]})
    failed = []
    for part in parts:
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        rec = PartRecorder(result, part, out, stem)
        rec.data["enforce_eager"] = args.enforce_eager
        try:
            globals()[f"part_{part}"](plan, args, rec)
            rec.data["status"] = "ok"
        except BaseException as exc:  # noqa: BLE001 - recorded, then the next part (or exit)
            rec.data["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            rec.data["error"] = traceback.format_exc()
            failed.append(part)
            print(f"== {part} {rec.data['status']}:\n{rec.data['error']}", flush=True)
            if not isinstance(exc, Exception):
                rec.data["seconds"] = time.perf_counter() - start
                rec.save()
                raise
        finally:
            rec.data["seconds"] = time.perf_counter() - start
            rec.save()
        free_memory()  # what a failed part's traceback held is gone now
        print(f"== {part} {rec.data['status']} in {time.perf_counter() - start:.0f} s", flush=True)
    print(markdown(dict(result, parts={p: result["parts"][p] for p in parts})))  # this run's parts
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
