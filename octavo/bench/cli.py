"""`octavo bench`: latency, throughput, serve, spec, kernels and report subcommands, with flags named
after vLLM's benchmark scripts. Nothing heavy is imported until a subcommand runs."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from typing import Any

from octavo.runtime.engine_flags import add_engine_args, engine_args_from_namespace


def engine_args(args: argparse.Namespace, **changes: Any):
    """The EngineArgs that the engine flags describe, with `changes`. Every mode that builds an
    engine or launches a server takes exactly `octavo serve`'s engine flags (add_engine_args)."""
    return dataclasses.replace(engine_args_from_namespace(args), **changes)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (e.g. 1,8,32), got {text!r}")
    return sorted(set(values))


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _model_flags(parser: argparse.ArgumentParser) -> None:
    add_engine_args(parser)  # --model DIR among them
    group = parser.add_argument_group("model (instead of --model)")
    group.add_argument("--config", help="a config in bench/configs (llama-3.1-8b, llama-3.2-1b, ...) or a path to "
                                        "a config.json; random weights")
    group.add_argument("--hf-overrides", help="JSON object of config.json fields to override (implies dummy)")


def _lengths(parser: Any, default: int | None = 128) -> None:
    parser.add_argument("--input-len", type=int, default=default, help="prompt tokens")
    parser.add_argument("--output-len", type=int, default=default, help="output tokens")


def _client_flags(parser: Any, timeout: float) -> None:
    """The streaming client's flags, which serve and spec share."""
    parser.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16, 32, 64])
    _lengths(parser)
    parser.add_argument("--num-warmups", type=int,
                        help="requests when a server starts (default: 2 alone, then 2x the largest c at it)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request")
    parser.add_argument("--launch-timeout", type=float, default=timeout, help="seconds to wait for a server")
    parser.add_argument("--request-timeout", type=float, default=timeout)
    parser.add_argument("--server-args", default="", help="extra `octavo serve` arguments of every server")


def _report_flags(parser: argparse.ArgumentParser, anchors: bool = True, baseline: bool = True) -> None:
    """baseline: the HF transformers anchor of bench PROTOCOL workloads 1 and 2 (latency, throughput)."""
    group = parser.add_argument_group("anchors and output")
    if anchors and baseline:
        group.add_argument("--baseline", choices=["hf"], default=None,
                           help="hf: also run HF transformers generate on the same shape and requests")
        group.add_argument("--hf-batch-size", type=int, default=128, help="HF static batch size (throughput)")
    if anchors:
        group.add_argument("--roofline", action="store_true",
                           help="measure copy bandwidth and matmul peak on the device and report floors")
    group.add_argument("--out", default="bench/results", help="directory for the JSON, Markdown and PNG files")
    group.add_argument("--tag", help="appended to file names; the configuration's label in charts")


def _spec_flags(spec: argparse.ArgumentParser) -> None:
    add_engine_args(spec)  # every server's (the pair names the model and the draft)
    group = spec.add_argument_group("pairs")
    group.add_argument("--pair", type=name_list, default=["demo"],
                       help="comma list of demo (the shipped pair on held-out Shakespeare), controlled (a "
                            "llama-3.1-8b-shaped dummy pair of calibrated acceptance), chain (dummy target and "
                            "draft of any two shapes, acceptance set by construction: --chain-target, "
                            "--chain-draft) and paths (--target, --draft)")
    group.add_argument("--target", help="with --pair paths: the target's directory")
    group.add_argument("--draft", help="with --pair paths: the draft's directory")
    group.add_argument("--prompt-text", help="a UTF-8 file whose windows are the prompts (default: the demo pair: "
                                             "held-out Shakespeare; others: random token ids)")
    group.add_argument("--controlled-config", default="llama-3.1-8b", help="the controlled pair's target shape")
    group.add_argument("--draft-layers", type=int, default=2, help="the controlled draft's depth")
    group.add_argument("--controlled-scale", type=float, help="the later layers' scale s (default: calibrated)")
    group.add_argument("--target-acceptance", type=float, default=0.7, help="what s is calibrated to (greedy)")
    group.add_argument("--calibration-prompts", type=int, default=16)
    group.add_argument("--calibration-evals", type=int, default=7, help="most acceptance measurements")
    group.add_argument("--calibration-timeout", type=float, default=400.0, help="seconds to build and export the pair")
    group.add_argument("--controlled-workdir", default="/tmp/octavo-bench-controlled",
                       help="where the pair's checkpoints go (and are reused from when made alike)")
    chain = spec.add_argument_group("the chain pair (octavo/bench/chain_pair.py)")
    chain.add_argument("--chain-target", help="the target's config (a bench/configs name or a config.json)")
    chain.add_argument("--chain-draft", help="the draft's config (untied embeddings, the target's vocabulary)")
    chain.add_argument("--chain-target-layers", type=int, help="override the chain target's num_hidden_layers")
    chain.add_argument("--chain-acceptance-rate", type=float, default=0.7,
                       help="accepted / drafted tokens the pair is built for at k = --num-speculative-tokens")
    arms = spec.add_argument_group("arms (A: no draft, B: the draft, unless told otherwise)")
    for arm, draft in (("a", False), ("b", True)):
        upper = arm.upper()
        arms.add_argument(f"--{arm}-name", help=f"arm {upper}'s label (default: {'spec' if draft else 'no-spec'})")
        arms.add_argument(f"--{arm}-draft", action=argparse.BooleanOptionalAction, default=draft,
                          help=f"serve arm {upper} with the pair's draft")
        arms.add_argument(f"--{arm}-args", default="", help=f"extra `octavo serve` arguments of arm {upper}")
        arms.add_argument(f"--{arm}-pythonpath", help=f"put first on arm {upper}'s servers' PYTHONPATH (a directory "
                                                      "holding another version's `octavo` package)")
    runs = spec.add_argument_group("rounds")
    _client_flags(runs, timeout=300.0)
    runs.add_argument("--rounds", type=int, default=4, help="rounds per level")
    runs.add_argument("--instances", type=int, default=1, help="servers per arm")
    runs.add_argument("--min-requests", type=int, default=32,
                      help="timed requests per run = max(this, --requests-per-user x c)")
    runs.add_argument("--requests-per-user", type=int, default=4)
    runs.add_argument("--time-budget", type=float, default=540.0,
                      help="seconds: no round starts once the run has used this (shared by the pairs)")
    runs.add_argument("--trace", action="store_true", help="OCTAVO_STEP_TRACE for every server; summarise each "
                                                           "arm's timed steps by batch size and kind")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="MODE")

    def mode(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text)

    latency = mode("latency", "fixed batches: prefill time and ms per decode step")
    _model_flags(latency)
    latency.add_argument("--batch-size", type=int_list, default=[1, 8, 32, 128], help="comma list, e.g. 1,8,32,128")
    _lengths(latency)
    latency.add_argument("--num-iters", type=int, default=3, help="timed runs per batch size")
    latency.add_argument("--num-iters-warmup", type=int, default=1)
    latency.add_argument("--hf-num-iters", type=int, default=1, help="timed HF runs per batch size")
    _report_flags(latency)

    throughput = mode("throughput", "offline: N requests of seeded random lengths")
    _model_flags(throughput)
    throughput.add_argument("--num-prompts", type=int, default=1000)
    throughput.add_argument("--input-len-range", default="256:768", help="LOW:HIGH, uniform")
    throughput.add_argument("--output-len-range", default="128:384", help="LOW:HIGH, uniform")
    _lengths(throughput, default=None)  # fixed lengths override the ranges
    throughput.add_argument("--num-warmups", type=int, default=64,
                            help="untimed requests of the same length ranges first (kernels compile, tune)")
    throughput.add_argument("--hf-num-prompts", type=int,
                            help="run HF on the first K requests only and extrapolate (default: one HF batch)")
    _report_flags(throughput)

    serve = mode("serve", "streaming requests to an OpenAI-compatible /v1/completions at fixed concurrency levels")
    _model_flags(serve)
    serve.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    serve.add_argument("--launch", action="store_true", help="start `octavo serve` on loopback and stop it after")
    serve.add_argument("--served-model-name", help="the 'model' field to send (default: ask /v1/models)")
    _client_flags(serve, timeout=600.0)
    serve.add_argument("--input-len-range", help="LOW:HIGH (overrides --input-len)")
    serve.add_argument("--output-len-range", help="LOW:HIGH (overrides --output-len)")
    serve.add_argument("--num-prompts", type=int, help="requests per level (default: see --prompts-per-user)")
    serve.add_argument("--prompts-per-user", type=int, default=4, help="requests per level = this x concurrency")
    serve.add_argument("--min-prompts-per-level", type=int, default=8)
    serve.add_argument("--json-schema", help="a JSON schema file: every request's output is constrained to it "
                                             "(structured outputs); the result reports grammar compile time")
    serve.add_argument("--prompt-text", help="a UTF-8 text file: prompts are windows of its tokens (the model's "
                                             "tokenizer) at seeded offsets instead of random token ids")
    serve.add_argument("--time-budget", type=float,
                       help="seconds: start no level once the sweep (warm-up included) has run this long")
    serve.add_argument("--latency-anchor", action="store_true",
                       help="with --launch: time octavo's batch-1 decode step in process after the sweep")
    serve.add_argument("--anchor-iters", type=int, default=3)
    _report_flags(serve, baseline=False)

    spec = mode("spec", "paired, interleaved A/B of two live servers with an interval: by default the target "
                        "alone (A) and with its draft (B); per-arm flags and PYTHONPATH compare any two "
                        "configurations or versions of octavo")
    _spec_flags(spec)
    _report_flags(spec, anchors=False)

    kernels = mode("kernels", "paged attention kernels against copy bandwidth and the matmul peak (CUDA)")
    kernels.add_argument("--device", default="cuda")
    kernels.add_argument("--parts", default="attention,linear",
                         help="comma-separated: attention (paged decode and prefill), linear (the decode GEMMs' layouts), "
                              "gemv (the decode projections with their norm or activation: gemv.py against "
                              "the unfused ops, with a sweep of its tiles)")
    kernels.add_argument("--gemv-sweep", action=argparse.BooleanOptionalAction, default=True,
                         help="with --parts gemv: also time gemv.py's tile sweeps (most of the part's time)")
    _report_flags(kernels, anchors=False)

    report = mode("report", "Markdown from result JSON files; two or more serve results also give sweep charts "
                            "(serve-comparison-*.png), one line per result")
    report.add_argument("files", nargs="+", help="result .json files")
    report.add_argument("--out", help="directory for combined charts")
    for mode in sub.choices.values():
        mode.set_defaults(_bench_parser=mode)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    command = getattr(args, "bench_command", None)
    if command is None:
        print("usage: octavo bench {latency,throughput,serve,spec,kernels,report} ... (see octavo bench MODE --help)",
              file=sys.stderr)
        return 2
    from octavo.bench import report

    try:
        if command == "report":
            text, paths = report.combined([report.load(p) for p in args.files], args.out)
            print(text, *(f"wrote {path}" for path in paths), sep="\n")
            return 0
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
        mode = importlib.import_module(f"octavo.bench.{command}")
        result = mode.benchmark(args, report.partial_writer(args.out))
    except ValueError as exc:
        print(f"octavo bench {command}: error: {exc}", file=sys.stderr)
        return 2
    paths = report.write_all(result, args.out)
    print(report.markdown(result), *(f"wrote {path}" for path in paths), sep="\n")
    failed = result.get("total_errors") or result.get("interrupted") or result.get("failed") or any(
        entry.get("error") for entry in result.get("pairs", []))
    return 1 if failed else 0
