"""Offline throughput: N requests of seeded random lengths handed to the engine at once (as
`LLM.generate` does), timed from the first request added to the last one finished. The HF
baseline runs the same requests (or the first K: stated in the report) in static batches."""

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


def run_octavo(llm: Any, requests: list[BenchRequest], use_tqdm: bool = True) -> dict:
    from octavo.runtime.sampling_params import SamplingParams

    clock = DeviceClock(llm.llm_engine.config.device)
    params = [SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0, detokenize=False)
              for r in requests]
    start = clock.now()
    start_monotonic = time.monotonic()  # the engine stamps request metrics with time.monotonic
    outputs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in requests], params, use_tqdm=use_tqdm)
    elapsed = clock.now() - start
    records = []
    for request, output in zip(requests, outputs):
        metrics, produced = output.metrics, len(output.outputs[0].token_ids)
        record = {"prompt_len": request.prompt_len, "output_len": request.output_len, "output_tokens": produced,
                  "error": output.error}
        if metrics is not None and metrics.first_token_time is not None:
            record.update({
                "arrival_s": metrics.arrival_time - start_monotonic,
                "ttft_ms": (metrics.first_token_time - metrics.arrival_time) * 1e3,
                "e2e_ms": ((metrics.finished_time or metrics.last_token_time) - metrics.arrival_time) * 1e3,
                "tpot_ms": ((metrics.last_token_time - metrics.first_token_time) * 1e3 / (produced - 1)
                            if produced > 1 else 0.0),
                "num_preemptions": metrics.num_preemptions})
        records.append(record)
    prompt_tokens = sum(r["prompt_len"] for r in records)
    output_tokens = sum(r["output_tokens"] for r in records)
    return {"num_requests": len(records),
            "num_errors": sum(1 for r in records if r["error"] or r["output_tokens"] != r["output_len"]),
            "elapsed_s": elapsed, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "requests_per_s": len(records) / elapsed, "output_tokens_per_s": output_tokens / elapsed,
            "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed,
            **{name: summarize(r[name] for r in records if name in r) for name in ("ttft_ms", "tpot_ms", "e2e_ms")},
            "num_preemptions": sum(r.get("num_preemptions", 0) for r in records), "records": records}


def profile_run(llm: Any, requests: list[BenchRequest]) -> dict:
    """With --profiler-config: after the timed run (which the profiler leaves alone), the same
    requests again under the profiler (its delay and limit pick the steps), summarised per trace."""
    from octavo.bench import profile

    before = len(llm.llm_engine.profiler.traces)
    llm.start_profile()
    run_octavo(llm, requests, use_tqdm=False)
    llm.stop_profile()
    return profile.summarize_files(llm.llm_engine.profiler.traces[before:])


def benchmark(args: Any, save: Callable[[dict], None]) -> dict:
    spec = resolve_model(args.model, args.config, args.load_format, args.hf_overrides)
    # --input-len / --output-len (fixed) win over the --*-len-range flags.
    input_range = (args.input_len,) * 2 if args.input_len else parse_range(args.input_len_range)
    output_range = (args.output_len,) * 2 if args.output_len else parse_range(args.output_len_range)
    env = environment(args.device, args)
    roofline = roofline_mod.measure(args.device) if args.roofline else None
    llm = build_llm(args, spec)
    facts = model_facts(llm)
    config = llm.llm_engine.config
    dtype, device, max_num_seqs = config.model_config.dtype, config.device, config.scheduler_config.max_num_seqs
    requests = random_requests(args.num_prompts, input_range, output_range, facts["vocab_size"], args.seed)
    # Warm-up on other prompts of the same length ranges: kernels that compile or tune on first use
    # (mixed prefill/decode steps, every context length) do so outside the timed run.
    if args.num_warmups > 0:
        run_octavo(llm, random_requests(min(args.num_prompts, args.num_warmups), input_range, output_range,
                                        facts["vocab_size"], args.seed + 1), use_tqdm=False)
    ours = run_octavo(llm, requests)
    logger.info("octavo: %.0f output tok/s over %d requests", ours["output_tokens_per_s"], len(requests))
    profile = profile_run(llm, requests) if llm.llm_engine.profiler is not None else None
    del llm, config
    release()
    result = {"kind": "throughput", "tag": args.tag, "env": env, "model": spec.describe(**facts),
              "settings": settings(args, input_len_range=list(input_range), output_len_range=list(output_range)),
              "roofline": roofline, "octavo": ours, "hf": None, "profile": profile, "floor": None, "ratios": {}}
    if roofline is not None:
        roofline.update(roofline_mod.summary(roofline, facts))
        floor = result["floor"] = roofline_mod.throughput_floor(roofline, facts, requests, max_num_seqs)
        result["ratios"]["octavo_over_ceiling"] = ours["output_tokens_per_s"] / floor["ceiling_output_tokens_per_s"]
    save(result)
    if args.baseline == "hf":
        from octavo.bench import hf_baseline

        subset_size = min(args.hf_num_prompts or args.hf_batch_size, len(requests))
        model = hf_baseline.HFModel(spec.path, dtype, device, args.seed)
        hf = result["hf"] = hf_baseline.throughput(model, requests[:subset_size], args.hf_batch_size)
        del model
        release()
        hf.update(subset_size=subset_size, extrapolated=subset_size < len(requests),
                  extrapolated_elapsed_s_all_requests=ours["output_tokens"] / hf["output_tokens_per_s"])
        result["settings"]["hf_num_prompts"] = subset_size
        result["ratios"].update(output_tps_vs_hf=ours["output_tokens_per_s"] / hf["output_tokens_per_s"],
                                total_tps_vs_hf=ours["total_tokens_per_s"] / hf["total_tokens_per_s"],
                                requests_per_s_vs_hf=ours["requests_per_s"] / hf["requests_per_s"])
    return result
