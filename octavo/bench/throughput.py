"""Offline throughput: N requests of seeded random prompt and output lengths handed to the engine
at once (as `LLM.generate` does), timed from the first request added to the last one finished.
The HF baseline runs the same requests (or the first K of them: stated in the report) in static
batches; its tokens/s is what the ratio is taken against."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from octavo.bench import roofline as roofline_mod
from octavo.bench.env import environment, settings
from octavo.bench.measure import DeviceClock, summarize
from octavo.bench.models import build_llm, model_facts, release, resolve_model
from octavo.bench.workload import BenchRequest, parse_range, random_requests

logger = logging.getLogger("octavo")


def length_ranges(args: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """--input-len / --output-len (fixed) win over the --*-len-range flags."""
    input_range = (args.input_len, args.input_len) if args.input_len else parse_range(args.input_len_range)
    output_range = (args.output_len, args.output_len) if args.output_len else parse_range(args.output_len_range)
    return input_range, output_range


def sampling_params(requests: list[BenchRequest]):
    from octavo.runtime.sampling_params import SamplingParams

    return [SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0, detokenize=False)
            for r in requests]


def run_octavo(llm: Any, requests: list[BenchRequest], use_tqdm: bool = True) -> dict:
    clock = DeviceClock(llm.llm_engine.config.device)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = sampling_params(requests)
    start = clock.now()
    start_monotonic = time.monotonic()  # the engine stamps request metrics with time.monotonic
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    elapsed = clock.now() - start
    records = []
    for request, output in zip(requests, outputs):
        metrics = output.metrics
        produced = len(output.outputs[0].token_ids)
        record = {"prompt_len": request.prompt_len, "output_len": request.output_len, "output_tokens": produced,
                  "error": output.error}
        if metrics is not None and metrics.first_token_time is not None:
            finished = metrics.finished_time or metrics.last_token_time
            record.update({
                "arrival_s": metrics.arrival_time - start_monotonic,
                "ttft_ms": (metrics.first_token_time - metrics.arrival_time) * 1e3,
                "e2e_ms": (finished - metrics.arrival_time) * 1e3,
                "tpot_ms": ((metrics.last_token_time - metrics.first_token_time) * 1e3 / (produced - 1)
                            if produced > 1 else 0.0),
                "num_preemptions": metrics.num_preemptions,
            })
        records.append(record)
    return summarize_records(records, elapsed)


def profile_run(llm: Any, requests: list[BenchRequest]) -> dict:
    """With --profiler-config: after the timed run (which the profiler leaves alone), the same
    requests again under the profiler (its delay and limit pick the steps), summarised per trace."""
    from octavo.bench import profile

    engine = llm.llm_engine
    before = len(engine.profiler.traces)
    llm.start_profile()
    run_octavo(llm, requests, use_tqdm=False)
    llm.stop_profile()
    return profile.summarize_files(engine.profiler.traces[before:])


def summarize_records(records: list[dict], elapsed_s: float) -> dict:
    prompt_tokens = sum(r["prompt_len"] for r in records)
    output_tokens = sum(r["output_tokens"] for r in records)
    return {
        "num_requests": len(records),
        "num_errors": sum(1 for r in records if r.get("error") or r["output_tokens"] != r["output_len"]),
        "elapsed_s": elapsed_s,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "requests_per_s": len(records) / elapsed_s,
        "output_tokens_per_s": output_tokens / elapsed_s,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed_s,
        "ttft_ms": summarize(r["ttft_ms"] for r in records if "ttft_ms" in r),
        "tpot_ms": summarize(r["tpot_ms"] for r in records if "tpot_ms" in r),
        "e2e_ms": summarize(r["e2e_ms"] for r in records if "e2e_ms" in r),
        "num_preemptions": sum(r.get("num_preemptions", 0) for r in records),
        "records": records,
    }


def benchmark(args: Any, save_partial: Callable[[dict], None] | None = None) -> dict:
    save = save_partial or (lambda result: None)
    spec = resolve_model(args.model, args.config, args.load_format, args.hf_overrides)
    input_range, output_range = length_ranges(args)
    result: dict = {"kind": "throughput", "tag": args.tag, "env": environment(args.device, args)}
    roofline = roofline_mod.measure(args.device) if args.roofline else None

    llm = build_llm(args, spec)
    facts = model_facts(llm)
    dtype = llm.llm_engine.config.model_config.dtype
    device = llm.llm_engine.config.device
    engine_max_num_seqs = llm.llm_engine.config.scheduler_config.max_num_seqs
    requests = random_requests(args.num_prompts, input_range, output_range, facts["vocab_size"], args.seed)
    # Warm-up on other prompts of the same length ranges: kernels that compile or tune on first use
    # (mixed prefill/decode steps, every context length) do so outside the timed run.
    if args.num_warmups > 0:
        warmup = random_requests(min(args.num_prompts, args.num_warmups), input_range, output_range,
                                 facts["vocab_size"], args.seed + 1)
        run_octavo(llm, warmup, use_tqdm=False)
    ours = run_octavo(llm, requests)
    logger.info("octavo: %.0f output tok/s over %d requests", ours["output_tokens_per_s"], len(requests))
    profile = profile_run(llm, requests) if llm.llm_engine.profiler is not None else None
    del llm
    release()
    if roofline is not None:
        roofline.update(roofline_mod.summary(roofline, facts))
    result.update({
        "model": {"name": spec.label, "config_source": spec.config_source, "load_format": spec.load_format,
                  "hf_overrides": spec.overrides, **facts},
        "settings": settings(args, input_len_range=list(input_range), output_len_range=list(output_range)),
        "roofline": roofline,
        "octavo": ours,
        "hf": None,
        "profile": profile,
        "floor": None,
        "ratios": {},
    })
    if roofline is not None:
        floor = roofline_mod.throughput_floor(roofline, facts, requests, engine_max_num_seqs)
        result["floor"] = floor
        result["ratios"]["octavo_over_ceiling"] = ours["output_tokens_per_s"] / floor["ceiling_output_tokens_per_s"]
    save(result)

    if args.baseline == "hf":
        from octavo.bench import hf_baseline

        subset_size = min(args.hf_num_prompts or args.hf_batch_size, len(requests))
        model = hf_baseline.HFModel(spec.path, dtype, device, args.seed)
        hf = hf_baseline.throughput(model, requests[:subset_size], args.hf_batch_size)
        del model
        release()
        hf["subset_size"] = subset_size
        hf["extrapolated"] = subset_size < len(requests)
        hf["extrapolated_elapsed_s_all_requests"] = ours["output_tokens"] / hf["output_tokens_per_s"]
        result["hf"] = hf
        result["settings"]["hf_num_prompts"] = subset_size
        result["ratios"].update(output_tps_vs_hf=ours["output_tokens_per_s"] / hf["output_tokens_per_s"],
                                total_tps_vs_hf=ours["total_tokens_per_s"] / hf["total_tokens_per_s"],
                                requests_per_s_vs_hf=ours["requests_per_s"] / hf["requests_per_s"])
    return result
