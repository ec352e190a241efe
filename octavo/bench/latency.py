"""Latency mode: one fixed batch (bs prompts of input_len tokens, output_len tokens each) run to
completion, several times. Per batch size: the prefill phase (until every request's first token is
read back) and the decode phase after it in ms per step, (end - prefill) / (output_len - 1), as
vLLM's latency benchmark counts it; beside HF transformers on the same batch and the roofline's
floor. The device is synchronized only when a run starts and ends: a synchronization after every
step would put the host's work and the GPU's in series, which asynchronous scheduling overlaps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from octavo.bench import roofline as roofline_mod
from octavo.bench.env import environment, settings
from octavo.bench.measure import DeviceClock, percentile, progress, summarize
from octavo.bench.models import build_llm, model_facts, release, resolve_model
from octavo.bench.workload import BenchRequest, fixed_requests
from octavo.runtime.config import DEFAULT_MAX_NUM_SEQS

logger = logging.getLogger("octavo")


def run_engine_batch(engine: Any, batch: list[BenchRequest], tag: str, bar: Any) -> dict:
    """Run one batch through LLMEngine.step() to completion, timing every step."""
    from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams

    clock = DeviceClock(engine.config.device)
    prompt_tokens_target = engine.stats.prompt_tokens + sum(r.prompt_len for r in batch)
    start = last = clock.now()  # synchronized; the steps' clock reads are not
    for index, request in enumerate(batch):
        params = SamplingParams(max_tokens=request.output_len, ignore_eos=True, temperature=0.0,
                                detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
        engine.add_request(f"{tag}-{index}", {"prompt_token_ids": request.prompt_token_ids}, params)
    prefill_end = None
    step_ms: list[float] = []
    prefill_steps = output_tokens = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter() if engine.has_unfinished_requests() else clock.now()
        output_tokens += sum(len(output.outputs[0].token_ids) for output in outputs if output.finished)
        if prefill_end is None:
            prefill_steps += 1
            # The engine counts a request's prompt tokens when its first token is sampled.
            if engine.stats.prompt_tokens >= prompt_tokens_target:
                prefill_end = now
        else:
            step_ms.append((now - last) * 1e3)
            bar.update(1)
        last = now
    if output_tokens != sum(r.output_len for r in batch):
        raise RuntimeError(f"the engine produced {output_tokens} output tokens for a batch that asked for "
                           f"{sum(r.output_len for r in batch)}: a request stopped early or failed")
    return {"prefill_ms": ((prefill_end or last) - start) * 1e3, "prefill_steps": prefill_steps,
            "step_ms": step_ms, "total_ms": (last - start) * 1e3, "output_tokens": output_tokens}


def octavo_row(llm: Any, batch_size: int, input_len: int, output_len: int, num_iters: int, num_warmup: int,
               seed: int) -> dict:
    engine = llm.llm_engine
    iterations = []
    drafted = accepted = 0
    bar = progress((num_iters + num_warmup) * max(output_len - 1, 1), f"octavo bs={batch_size}", unit="step")
    try:
        for it in range(num_warmup + num_iters):
            # Fresh prompts each iteration: a repeated prompt would hit the prefix cache.
            batch = fixed_requests(batch_size, input_len, output_len, engine.config.model_config.vocab_size,
                                   seed + 7919 * it + batch_size)
            before = engine.stats.spec_draft_tokens, engine.stats.spec_accepted_tokens
            result = run_engine_batch(engine, batch, f"lat-bs{batch_size}-it{it}", bar)
            if it >= num_warmup:
                iterations.append(result)
                drafted += engine.stats.spec_draft_tokens - before[0]
                accepted += engine.stats.spec_accepted_tokens - before[1]
    finally:
        bar.close()
    row = summarize_iterations(iterations, batch_size, output_len)
    if drafted:  # a draft model ran: its acceptance (accepted / drafted) over the timed runs
        row["speculation"] = {"drafted": drafted, "accepted": accepted, "acceptance": accepted / drafted}
    return row


def summarize_iterations(iterations: list[dict], batch_size: int, output_len: int) -> dict:
    steps = [ms for it in iterations for ms in it["step_ms"]]  # the engine's step() calls, for their spread
    decode = [(it["total_ms"] - it["prefill_ms"]) / (output_len - 1) for it in iterations] if output_len > 1 else []
    step_ms = percentile(decode, 50) if decode else None  # one output token: no decode step to time
    total_ms = percentile([it["total_ms"] for it in iterations], 50)
    return {"prefill_ms": percentile([it["prefill_ms"] for it in iterations], 50), "decode_ms_per_step": step_ms,
            "decode_step_ms": summarize(steps), "total_ms": total_ms,
            "output_tokens_per_s": batch_size * output_len / (total_ms / 1e3),
            "decode_tokens_per_s": batch_size / (step_ms / 1e3) if step_ms else None,
            "num_iters": len(iterations), "iterations": iterations}


def hf_row(model: Any, batch_size: int, input_len: int, output_len: int, num_iters: int, seed: int,
           vocab: int) -> dict:
    from octavo.bench import hf_baseline

    batch = fixed_requests(batch_size, input_len, output_len, vocab, seed + batch_size)
    iterations = [{"prefill_ms": t.prefill_ms, "step_ms": t.step_ms, "total_ms": t.total_ms,
                   "output_tokens": batch_size * output_len} for t in hf_baseline.latency(model, batch, num_iters)]
    return summarize_iterations(iterations, batch_size, output_len)


def add_ratios(rows: list[dict], roofline: dict | None, facts: dict, input_len: int, output_len: int) -> None:
    context = input_len + output_len / 2  # mean context over the decode steps
    for row in rows:
        ours, hf = row["octavo"], row.get("hf")
        row["ratios"] = ratios = {}
        if hf and ours["decode_ms_per_step"] and hf["decode_ms_per_step"]:
            ratios["hf_step_over_octavo_step"] = hf["decode_ms_per_step"] / ours["decode_ms_per_step"]
            ratios["octavo_tps_over_hf_tps"] = ours["output_tokens_per_s"] / hf["output_tokens_per_s"]
        if roofline is not None and ours["decode_ms_per_step"]:
            all_reduce_ms = roofline.get("all_reduce_ms", {}).get(str(row["batch_size"]), 0.0)
            row["floor"] = roofline_mod.decode_step_floor_ms(roofline, facts, row["batch_size"], context,
                                                             all_reduce_ms)
            row["floor"]["prefill_ms"] = roofline_mod.prefill_floor_ms(roofline, facts, row["batch_size"] * input_len)
            ratios["octavo_step_over_floor"] = ours["decode_ms_per_step"] / row["floor"]["floor_ms"]


def benchmark(args: Any, save: Callable[[dict], None]) -> dict:
    import torch

    spec = resolve_model(args.model, args.config, args.load_format, args.hf_overrides)
    batch_sizes = sorted(set(args.batch_size))
    args.max_num_seqs = max(args.max_num_seqs or DEFAULT_MAX_NUM_SEQS, max(batch_sizes))  # each batch runs as one
    env = environment(args.device, args)
    roofline = roofline_mod.measure(args.device) if args.roofline else None
    llm = build_llm(args, spec)
    facts = model_facts(llm)
    dtype, device = llm.llm_engine.config.model_config.dtype, llm.llm_engine.config.device
    if roofline is not None:
        roofline.update(roofline_mod.summary(roofline, facts))
        runner = getattr(llm.llm_engine, "model_runner", None)  # none in this process with an engine core apart
        if facts["tensor_parallel_size"] > 1 and runner is not None:  # each of a step's collectives, per batch size
            roofline["all_reduce_ms"] = {str(bs): runner.time_all_reduce(bs) for bs in batch_sizes}
    rows: list[dict] = []
    result = {"kind": "latency", "tag": args.tag, "env": env, "model": spec.describe(**facts),
              "settings": settings(args, batch_sizes=batch_sizes, torch_threads=torch.get_num_threads(),
                                   decode_timing="end-to-end"),
              "roofline": roofline, "rows": rows}
    for bs in batch_sizes:
        rows.append({"batch_size": bs, "input_len": args.input_len, "output_len": args.output_len,
                     "octavo": octavo_row(llm, bs, args.input_len, args.output_len, args.num_iters,
                                          args.num_iters_warmup, args.seed)})
        logger.info("octavo bs=%d: prefill %.2f ms, %s ms/step", bs, rows[-1]["octavo"]["prefill_ms"],
                    rows[-1]["octavo"]["decode_ms_per_step"])
        add_ratios(rows, roofline, facts, args.input_len, args.output_len)
        save(result)
    del llm
    release()
    if args.baseline == "hf":
        from octavo.bench.hf_baseline import HFModel

        model = HFModel(spec.path, dtype, device, args.seed)
        for row in rows:
            row["hf"] = hf_row(model, row["batch_size"], args.input_len, args.output_len, args.hf_num_iters,
                               args.seed, facts["vocab_size"])
            logger.info("HF bs=%d: %s ms/step", row["batch_size"], row["hf"]["decode_ms_per_step"])
            add_ratios(rows, roofline, facts, args.input_len, args.output_len)
            save(result)
        del model
        release()
    return result
