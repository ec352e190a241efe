"""GPT-2 and BLOOM on the device: correctness first, then speed next to HF transformers.

For each family (gpt2-xl and bloomz-560m shapes from bench/configs, dummy weights):

1. Token-exact check: a tiny random-weight model of the same architecture (the tests' fixture:
   GPT-2 with 5 heads, BLOOM with 6 so the ALiBi slopes take the non-power-of-two form), fp32,
   octavo greedy on the device vs transformers greedy fp32 on the CPU (eager attention, the tests'
   oracle; transformers on the device is recorded beside it as a measure of fp32 noise). Prompts of 5..700 tokens, so the
   paged prefill, extend (chunked prefill over a cached prefix) and split-K decode kernels all
   run, with ALiBi for BLOOM. Variants: CUDA graphs + prefix caching (each batch run twice, the
   second one served from the prefix cache), and eager + chunked prefill + no prefix caching.
2. Batch-1 latency: a 128-token prompt, 128 output tokens: prefill (time to the first token) and
   decode ms per token, octavo's engine step loop vs HF `generate`.
3. Offline throughput: N seeded requests (prompt 128..512, output 64..256 tokens, token-id
   prompts, ignore_eos), octavo `LLM.generate` with everything submitted at once vs HF
   `generate` over static left-padded batches (each batch generates for its longest request;
   only the tokens requests asked for count as output).

octavo runs first and is torn down before HF loads, so each gets the device to itself. Results
are written after every phase to <out>/families_bench.json and .md, so a run cut short keeps what
it measured.

    python bench/families_bench.py --out results/            # on the GPU (a few minutes)
    python bench/families_bench.py --out /tmp/smoke --smoke  # tiny shapes on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "models")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from octavo.bench.hf_baseline import HFModel  # noqa: E402  (after the path set-up above)
from octavo.bench.measure import DeviceClock  # noqa: E402

MODELS = {"gpt2-xl": ("gpt2", "gpt2-xl.json"), "bloomz-560m": ("bloom", "bloomz-560m.json")}
# --smoke: the same architectures and head counts at toy width and depth.
SMOKE_SHAPES = {"gpt2": dict(n_embd=200, n_layer=2, vocab_size=1000, bos_token_id=1, eos_token_id=2),
                "bloom": dict(hidden_size=128, n_layer=2, vocab_size=1000)}


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _first_mismatch(got: list[list[int]], expected: list[list[int]], lengths: list[int]) -> int | None:
    return next((n for n, a, b in zip(lengths, got, expected) if a != b), None)


def hf_greedy_reference(model_dir: Path, prompts: list[list[int]], max_tokens: int, device: torch.device,
                        attn: str) -> dict:
    """transformers' greedy tokens (the tests' reference, ignore_eos as octavo runs), and the
    smallest top-1/top-2 logit gap along them (how close the trajectory comes to a tie: a gap near
    fp32 noise makes any reordering flip a token)."""
    from hf_reference import forget_models, hf_greedy

    try:
        tokens, margins = hf_greedy(model_dir, prompts, max_tokens, ignore_eos=True, device=device,
                                    attn_implementation=attn, with_margins=True)
    finally:
        forget_models()
        free_device_memory()
    return {"tokens": tokens, "min_margin": min(min(m) for m in margins)}


# ---- 1. token-exact on a tiny model of the same architecture -------------------------------------
def check_token_exact(family: str, device: torch.device, workdir: Path, smoke: bool) -> dict:
    from family_checkpoints import build_family_checkpoint

    from octavo import LLM, SamplingParams

    model_dir = build_family_checkpoint(workdir, family)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    lengths = [5, 17, 64, 130] if smoke else [5, 17, 64, 130, 700]
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]
    max_tokens = 8 if smoke else 24

    # The oracle is transformers on the CPU in fp32 with eager attention (the tests' reference).
    # transformers on the device is recorded next to it: its fused SDPA kernels need not round
    # like the CPU, so a disagreement there says how wide fp32's own noise is on this model.
    reference = {}
    for ref_device, attn in (("cpu", "eager"), (device.type, "eager"), (device.type, "sdpa")):
        key = f"{ref_device}_{attn}"
        if key in reference:
            continue
        try:
            reference[key] = hf_greedy_reference(model_dir, prompts, max_tokens, torch.device(ref_device), attn)
        except (ValueError, ImportError) as exc:  # e.g. BLOOM has no sdpa path in transformers
            print(f"transformers {key} skipped: {exc}", flush=True)
    expected = reference["cpu_eager"]["tokens"]
    result: dict = {"family": family, "prompt_lens": lengths, "max_tokens": max_tokens,
                    "oracle": "transformers fp32 on the CPU, eager attention",
                    "oracle_min_top2_margin": reference["cpu_eager"]["min_margin"],
                    "transformers_on_device": {key: {"agrees_with_oracle": ref["tokens"] == expected,
                                                     "first_mismatch_prompt_len": _first_mismatch(ref["tokens"], expected, lengths)}
                                               for key, ref in reference.items() if key != "cpu_eager"}}

    variants = {
        "graphs_prefix_cache": dict(enforce_eager=False, enable_prefix_caching=True),
        "eager_chunked_prefill": dict(enforce_eager=True, enable_prefix_caching=False, max_num_batched_tokens=64),
    }
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for name, kwargs in variants.items():
        llm = LLM(model=str(model_dir), dtype="float32", device=device.type, num_gpu_blocks_override=256,
                  max_num_seqs=8, **kwargs)
        runs = [llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
                for _ in range(2 if kwargs["enable_prefix_caching"] else 1)]
        got = [[o.outputs[0].token_ids for o in run] for run in runs]
        result[name] = {
            "exact": all(g == expected for g in got),
            "prefix_cache_hits": llm.llm_engine.kv_cache.prefix_hits,
            "first_mismatch_prompt_len": next((m for m in (_first_mismatch(g, expected, lengths) for g in got) if m), None),
        }
        del llm
        free_device_memory()
    result["exact"] = all(result[name]["exact"] for name in variants)
    return result


# ---- workloads ---------------------------------------------------------------------------------
def random_requests(n: int, prompt_range: tuple[int, int], output_range: tuple[int, int], vocab: int,
                    seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(*prompt_range))], rng.randint(*output_range))
            for _ in range(n)]


def throughput_summary(requests, elapsed: float, **extra) -> dict:
    prompt_tokens = sum(len(p) for p, _ in requests)
    output_tokens = sum(n for _, n in requests)
    return {"num_requests": len(requests), "elapsed_s": elapsed, "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens, "requests_per_s": len(requests) / elapsed,
            "output_tokens_per_s": output_tokens / elapsed,
            "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed, **extra}


# ---- 2 + 3. octavo -----------------------------------------------------------------------------
def octavo_latency(llm, prompt: list[int], output_len: int, iters: int, clock: DeviceClock) -> dict:
    """Drive the engine one step at a time: step 1 is the prefill (and the first token), every
    later step one decode token."""
    from octavo import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False)
    prefill_ms, decode_ms = [], []
    for index in range(iters + 1):  # the first run warms up (Triton compiles, autotunes)
        engine.add_request(f"latency-{index}", {"prompt_token_ids": prompt}, params)
        start = clock.now()
        stamps = []
        while engine.has_unfinished_requests():
            engine.step()
            stamps.append(clock.now())
        if index == 0:
            continue
        prefill_ms.append((stamps[0] - start) * 1e3)
        decode_ms.append((stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1))
    return {"prompt_len": len(prompt), "output_len": output_len, "iters": iters,
            "prefill_ms": statistics.median(prefill_ms), "decode_ms_per_token": statistics.median(decode_ms)}


def octavo_throughput(llm, requests, warmup, clock: DeviceClock) -> dict:
    from octavo import SamplingParams

    def run(batch):
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False) for _, n in batch]
        return llm.generate([{"prompt_token_ids": p} for p, _ in batch], params, use_tqdm=False)

    run(warmup)
    stats = llm.llm_engine.stats
    preemptions_before = stats.num_preemptions
    start = clock.now()
    outputs = run(requests)
    elapsed = clock.now() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    expected = sum(n for _, n in requests)
    if produced != expected:
        raise RuntimeError(f"octavo produced {produced} output tokens, the requests asked for {expected}")
    return throughput_summary(requests, elapsed, preemptions=stats.num_preemptions - preemptions_before)


def run_octavo(config_dir: Path, args, device: torch.device, latency_prompt, throughput_requests, warmup) -> dict:
    from octavo import LLM

    clock = DeviceClock(device)
    start = time.perf_counter()
    llm = LLM(model=str(config_dir), load_format="dummy", dtype=args.dtype, device=device.type,
              gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs, seed=0)
    runner = llm.llm_engine.model_runner
    result = {"startup_s": time.perf_counter() - start, "kv_blocks": runner.num_blocks,
              "cuda_graph_sizes": sorted(size for size, q in (getattr(runner, "graphs", {}) or {}) if q == 1)}
    result["latency"] = octavo_latency(llm, latency_prompt, args.latency_output_len, args.latency_iters, clock)
    result["throughput"] = octavo_throughput(llm, throughput_requests, warmup, clock)
    del llm, runner
    free_device_memory()
    return result


# ---- 2 + 3. HF transformers --------------------------------------------------------------------
def run_hf(config_dir: Path, args, device: torch.device, dtype: torch.dtype, latency_prompt, throughput_requests) -> dict:
    start = time.perf_counter()
    hf = HFModel(str(config_dir), dtype, device)
    result: dict = {"startup_s": time.perf_counter() - start,
                    "attn_implementation": getattr(hf.model.config, "_attn_implementation", None)}
    hf.generate([latency_prompt], 2)  # warm-up
    prefill, decode = [], []
    for _ in range(args.latency_iters):
        timing = hf.generate([latency_prompt], args.latency_output_len)
        prefill.append(timing.prefill_ms)
        decode.append(timing.decode_ms_per_step)
    result["latency"] = {"prompt_len": len(latency_prompt), "output_len": args.latency_output_len,
                         "iters": args.latency_iters, "prefill_ms": statistics.median(prefill),
                         "decode_ms_per_token": statistics.median(decode)}
    batch_size = args.hf_batch_size
    groups = [throughput_requests[i:i + batch_size] for i in range(0, len(throughput_requests), batch_size)]
    hf.generate([p for p, _ in groups[0]], 2)  # warm-up at the batch shape
    elapsed, generated = 0.0, 0
    for group in groups:
        new_tokens = max(n for _, n in group)
        elapsed += hf.generate([p for p, _ in group], new_tokens).total_ms / 1e3
        generated += new_tokens * len(group)
    result["throughput"] = throughput_summary(throughput_requests, elapsed, batch_size=batch_size,
                                              generated_tokens_incl_padding=generated)
    del hf
    free_device_memory()
    return result


# ---- report ------------------------------------------------------------------------------------
def _exactness(variant: dict) -> str:
    if variant["exact"]:
        return "exact"
    return f"MISMATCH (first at prompt len {variant['first_mismatch_prompt_len']})"


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "families_bench.json").write_text(json.dumps(results, indent=2))
    env = results["environment"]
    lines = ["# GPT-2 and BLOOM families: octavo vs HF transformers",
             "",
             f"{env['device_name']}, dtype {env['dtype']}, dummy weights; torch {env['torch']}, "
             f"transformers {env['transformers']}{', smoke (toy shapes)' if env['smoke'] else ''}.",
             "",
             "## Token-exact greedy vs transformers (fp32, tiny random model of the same architecture)",
             "",
             "| model | heads | CUDA graphs + prefix cache (2 passes) | eager + chunked prefill | prompt lengths |",
             "|---|---|---|---|---|"]
    for name, model in results["models"].items():
        check = model.get("token_exact")
        if check:
            lines.append(f"| {name} | {model['tiny_heads']} | {_exactness(check['graphs_prefix_cache'])} | "
                         f"{_exactness(check['eager_chunked_prefill'])} | {', '.join(map(str, check['prompt_lens']))} |")
    lines += ["", "Oracle: transformers fp32 on the CPU with eager attention. transformers on the device, same weights:", ""]
    for name, model in results["models"].items():
        check = model.get("token_exact") or {}
        for key, ref in check.get("transformers_on_device", {}).items():
            verdict = "agrees" if ref["agrees_with_oracle"] else f"differs (first at prompt len {ref['first_mismatch_prompt_len']})"
            lines.append(f"- {name}, transformers {key.replace('_', ' ')}: {verdict}")
        if "oracle_min_top2_margin" in check:
            lines.append(f"- {name}: smallest top-1/top-2 logit gap along the oracle's tokens {check['oracle_min_top2_margin']:.2e}")
    lines += ["",
              "## Speed",
              "",
              "Batch 1: prompt {p} tokens, {o} output tokens (median of {i}). Throughput: {n} requests, prompt {pr}, "
              "output {orr} tokens, ignore_eos; HF in static left-padded batches of {b}.".format(
                  p=results["workload"]["latency_prompt_len"], o=results["workload"]["latency_output_len"],
                  i=results["workload"]["latency_iters"], n=results["workload"]["num_requests"],
                  pr="..".join(map(str, results["workload"]["prompt_range"])),
                  orr="..".join(map(str, results["workload"]["output_range"])), b=results["workload"]["hf_batch_size"]),
              "",
              "| model | engine | prefill ms (batch 1) | decode ms/token (batch 1) | output tok/s | total tok/s "
              "| req/s | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for name, model in results["models"].items():
        for engine in ("octavo", "hf"):
            run = model.get(engine)
            if not run:
                continue
            lat, thr = run.get("latency", {}), run.get("throughput", {})
            lines.append(f"| {name} | {'octavo' if engine == 'octavo' else 'HF transformers'} | "
                         f"{lat.get('prefill_ms', float('nan')):.1f} | {lat.get('decode_ms_per_token', float('nan')):.2f} | "
                         f"{thr.get('output_tokens_per_s', float('nan')):.0f} | {thr.get('total_tokens_per_s', float('nan')):.0f} | "
                         f"{thr.get('requests_per_s', float('nan')):.2f} | {thr.get('elapsed_s', float('nan')):.1f} |")
        if model.get("octavo", {}).get("throughput") and model.get("hf", {}).get("throughput"):
            o, h = model["octavo"], model["hf"]
            lines.append(f"| {name} | speed-up | {h['latency']['prefill_ms'] / o['latency']['prefill_ms']:.2f}x | "
                         f"{h['latency']['decode_ms_per_token'] / o['latency']['decode_ms_per_token']:.2f}x | "
                         f"{o['throughput']['output_tokens_per_s'] / h['throughput']['output_tokens_per_s']:.2f}x | | | |")
    errors = [f"- {name} {phase}: {error}" for name, model in results["models"].items()
              for phase, error in model.get("errors", {}).items()]
    if errors:
        lines += ["", "## Errors", ""] + errors
    (out / "families_bench.md").write_text("\n".join(lines) + "\n")


def environment(device: torch.device, args) -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "triton": triton_version,
            "dtype": args.dtype, "smoke": args.smoke}


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for families_bench.json and .md")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--smoke", action="store_true", help="toy shapes and workloads on the CPU")
    parser.add_argument("--dtype", default=None, help="float16 (default on CUDA), bfloat16 or float32")
    parser.add_argument("--num-requests", type=int, default=None, help="throughput requests (default 200)")
    parser.add_argument("--hf-batch-size", type=int, default=None, help="HF static batch size (default 32)")
    parser.add_argument("--latency-iters", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.dtype = args.dtype or ("float32" if smoke else "float16")
    args.num_requests = args.num_requests or (6 if smoke else 200)
    args.hf_batch_size = args.hf_batch_size or (4 if smoke else 32)
    args.latency_iters = args.latency_iters or (1 if smoke else 3)
    args.latency_prompt_len, args.latency_output_len = (16, 8) if smoke else (128, 128)
    args.prompt_range, args.output_range = ((16, 48), (4, 12)) if smoke else ((128, 512), (64, 256))
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device: run with --smoke for the CPU version", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 check compares exact float32 products
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    out = Path(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="families_bench_"))
    results = {"environment": environment(device, args), "models": {},
               "workload": {"latency_prompt_len": args.latency_prompt_len, "latency_output_len": args.latency_output_len,
                            "latency_iters": args.latency_iters, "num_requests": args.num_requests,
                            "prompt_range": list(args.prompt_range), "output_range": list(args.output_range),
                            "hf_batch_size": args.hf_batch_size}}
    ok = True
    for name in args.models.split(","):
        family, config_file = MODELS[name]
        config = json.loads((ROOT / "bench" / "configs" / config_file).read_text())
        if args.smoke:
            config.update(SMOKE_SHAPES[family])
        config_dir = workdir / name
        config_dir.mkdir()
        (config_dir / "config.json").write_text(json.dumps(config))
        model_result: dict = results["models"].setdefault(name, {"config": config})
        model_result["tiny_heads"] = 5 if family == "gpt2" else 6
        vocab = config["vocab_size"]
        rng = random.Random(1)
        latency_prompt = [rng.randrange(vocab) for _ in range(args.latency_prompt_len)]
        requests = random_requests(args.num_requests, args.prompt_range, args.output_range, vocab, seed=0)
        warmup = random_requests(4, args.prompt_range, (2, 4), vocab, seed=1)
        phases = [("octavo", lambda: run_octavo(config_dir, args, device, latency_prompt, requests, warmup))]
        if not args.skip_check:
            phases.insert(0, ("token_exact", lambda: check_token_exact(family, device, workdir, args.smoke)))
        if not args.skip_hf:
            phases.append(("hf", lambda: run_hf(config_dir, args, device, dtype, latency_prompt, requests)))
        for phase, run in phases:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {phase} ...", flush=True)
            try:
                model_result[phase] = run()
            except Exception as exc:  # keep going: one failed phase must not lose the others
                ok = False
                model_result.setdefault("errors", {})[phase] = f"{type(exc).__name__}: {exc}"
                print(f"{name} {phase} failed: {exc!r}", file=sys.stderr, flush=True)
                free_device_memory()
            if phase == "token_exact" and not model_result.get(phase, {}).get("exact", False):
                ok = False
            write_report(results, out)
    print((out / "families_bench.md").read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
