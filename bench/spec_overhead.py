"""What a draft costs when it drafts nothing: engine steps of the target alone against the same
target with a draft attached whose k is 0 (forced, or chosen by adaptive k), in process.

Adaptive k promises that speculation never costs throughput; when it decides k = 0 the step
should cost what a plain step costs. A small, launch-bound pair (the demo pair: a 0.74 ms step
on an H100) shows any per-step bookkeeping the speculative path adds. Each configuration is also
timed with the garbage collector's start-up objects frozen (gc.freeze), to tell collector pauses
from bookkeeping.

    python bench/spec_overhead.py --out /tmp/r/overhead.json          # the demo pair
    python bench/spec_overhead.py --target T --draft D --batch 1 8
    python bench/spec_overhead.py --profile /tmp/r/prof --ttft 24     # also: where the host time
                                                                       # goes, and first-token times

--profile writes the functions with the most own time (cProfile) over batch-1 generation, for the
target alone and with the draft attached at k = 0: the difference is the speculative path's
per-step host work. --ttft runs N requests one after another through AsyncLLMEngine (no HTTP),
without and with the draft, and reports the time to the first token and to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import json
import statistics
import time
from pathlib import Path

import torch

from octavo import LLM, AsyncEngineArgs, AsyncLLMEngine, SamplingParams
from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR


def prompt(i: int, prompt_len: int) -> dict:
    """Request i's prompt: BOS, then token ids that differ between requests (no prefix sharing)."""
    return {"prompt_token_ids": [1] + [5 + (i * 7 + j) % 200 for j in range(prompt_len - 1)]}


def step_times(llm: LLM, batch_size: int, prompt_len: int, output_len: int, repeats: int) -> tuple[list[float], list[float]]:
    """(ms per engine step, ms per output token of a request) for `repeats` batches of
    `batch_size` requests run to completion."""
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False)
    prompts = [prompt(i, prompt_len) for i in range(batch_size)]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up (and adaptive k's first timings)
    engine = llm.llm_engine
    times, per_token = [], []
    for _ in range(repeats):
        steps = engine.stats.num_steps
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        times.append(1e3 * elapsed / max(engine.stats.num_steps - steps, 1))
        per_token.append(1e3 * elapsed / output_len)
    return times, per_token


def host_profile(llm: LLM, prompt_len: int, output_len: int, path: Path, top: int = 40) -> None:
    """cProfile of batch-1 generation (after one warm-up), the `top` functions by own time."""
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False)
    prompts = [prompt(0, prompt_len)]
    llm.generate(prompts, params, use_tqdm=False)
    steps = llm.llm_engine.stats.num_steps
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(4):
        llm.generate(prompts, params, use_tqdm=False)
    profile.disable()
    text = io.StringIO()
    text.write(f"engine steps: {llm.llm_engine.stats.num_steps - steps}\n")
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(top)
    path.write_text(text.getvalue())


def first_token_times(args: argparse.Namespace, speculative: bool, count: int) -> dict:
    """`count` requests one after another through AsyncLLMEngine in this process (the first 4
    are warm-up): median time to the first token and to the last."""
    options = {"speculative_model": args.draft, "num_speculative_tokens": args.k} if speculative else {}
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=args.target, seed=0, num_gpu_blocks_override=1024,
                                                             **options))
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)

    async def one(i: int) -> tuple[float, float]:
        start = time.perf_counter()
        first = None
        async for _ in engine.generate(prompt(i, args.prompt_len), params, f"ttft-{i}"):
            if first is None:
                first = time.perf_counter() - start
        return first, time.perf_counter() - start

    async def run() -> list[tuple[float, float]]:
        return [await asyncio.wait_for(one(i), 120) for i in range(count + 4)]

    try:
        timings = asyncio.run(run())[4:]
    finally:
        engine.shutdown()
        del engine
        gc.collect()  # its KV cache goes back before the next engine sizes its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    ttft = [1e3 * t for t, _ in timings]
    e2e = [1e3 * t for _, t in timings]
    return {"speculative": speculative, "requests": count, "ttft_ms_median": statistics.median(ttft),
            "ttft_ms": ttft, "e2e_ms_median": statistics.median(e2e)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=str(DEMO_TARGET_DIR))
    parser.add_argument("--draft", default=str(DEMO_DRAFT_DIR))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the results here (JSON)")
    parser.add_argument("--profile", help="a directory: write host profiles there (see above)")
    parser.add_argument("--ttft", type=int, default=0, help="timed requests of the first-token comparison")
    args = parser.parse_args()
    ttft = []
    if args.ttft:
        for speculative in (False, True, False, True):  # twice each, interleaved: drift shows
            ttft.append(first_token_times(args, speculative, args.ttft))
            print(json.dumps({k: v for k, v in ttft[-1].items() if k != "ttft_ms"}), flush=True)

    plain = LLM(args.target, seed=0, num_gpu_blocks_override=1024)
    spec = LLM(args.target, seed=0, num_gpu_blocks_override=1024, speculative_model=args.draft,
               num_speculative_tokens=args.k)
    decoder = spec.llm_engine.spec_decoder
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        host_profile(plain, args.prompt_len, args.output_len, Path(args.profile) / "plain.txt")
        decoder.k_max, decoder.adaptive = 0, False
        host_profile(spec, args.prompt_len, args.output_len, Path(args.profile) / "draft_k0.txt")
    rows = []
    for frozen in (False, True):
        if frozen:
            gc.collect()
            gc.freeze()
        for batch in args.batch:
            row = {"batch_size": batch, "gc_frozen": frozen}
            for label, llm, k_max, adaptive in (("plain", plain, None, None), ("draft_k0", spec, 0, False),
                                                ("draft_adaptive", spec, args.k, True)):
                if llm is spec:
                    decoder.k_max, decoder.adaptive = k_max, adaptive
                drafted = spec.llm_engine.stats.spec_draft_tokens
                times, per_token = step_times(llm, batch, args.prompt_len, args.output_len, args.repeats)
                row[label] = {"ms_per_step_median": statistics.median(times), "ms_per_step": times,
                              "ms_per_token_median": statistics.median(per_token),
                              "drafted": spec.llm_engine.stats.spec_draft_tokens - drafted}
            for label in ("draft_k0", "draft_adaptive"):  # > 1: slower than the target alone
                row[label]["time_vs_plain"] = (row[label]["ms_per_token_median"]
                                               / row["plain"]["ms_per_token_median"])
            rows.append(row)
            print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "ms_per_step"})
                              for k, v in row.items()}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"target": args.target, "draft": args.draft, "k": args.k,
                                              "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                                              else "cpu", "rows": rows, "ttft": ttft}, indent=1))


if __name__ == "__main__":
    main()
