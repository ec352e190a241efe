"""What a draft costs when it drafts nothing: engine steps of the target alone against the same
target with a draft attached whose k is 0 (forced, or chosen by adaptive k), in process.

Adaptive k promises that speculation never costs throughput; when it decides k = 0 the step
should cost what a plain step costs. A small, launch-bound pair (the demo pair: a 0.74 ms step
on an H100) shows any per-step bookkeeping the speculative path adds. Each configuration is also
timed with the garbage collector's start-up objects frozen (gc.freeze), to tell collector pauses
from bookkeeping.

    python bench/spec_overhead.py --out /tmp/r/overhead.json          # the demo pair
    python bench/spec_overhead.py --target T --draft D --batch 1 8
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from octavo import LLM, SamplingParams
from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR


def step_times(llm: LLM, batch_size: int, prompt_len: int, output_len: int, repeats: int) -> tuple[list[float], list[float]]:
    """(ms per engine step, ms per output token of a request) for `repeats` batches of
    `batch_size` requests run to completion."""
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False)
    prompts = [{"prompt_token_ids": [1] + [5 + (i * 7 + j) % 200 for j in range(prompt_len - 1)]}
               for i in range(batch_size)]
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
    args = parser.parse_args()

    plain = LLM(args.target, seed=0)
    spec = LLM(args.target, seed=0, speculative_model=args.draft, num_speculative_tokens=args.k)
    decoder = spec.llm_engine.spec_decoder
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
                                              else "cpu", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
