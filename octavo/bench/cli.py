"""`octavo bench`: latency, throughput, serve and report subcommands, with flags named after
vLLM's benchmark scripts. Nothing heavy is imported until a subcommand runs."""

from __future__ import annotations

import argparse
import logging
import sys


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (e.g. 1,8,32), got {text!r}")
    return values


def _model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument("--model", help="local model directory (config.json, weights unless --load-format dummy)")
    group.add_argument("--config", help="a config in bench/configs (llama-3.1-8b, llama-3.2-1b, ...) or a path to "
                                        "a config.json; random weights")
    group.add_argument("--load-format", choices=["auto", "safetensors", "dummy"], default=None,
                       help="dummy: random weights from config.json alone (implied by --config)")
    group.add_argument("--hf-overrides", help="JSON object of config.json fields to override (implies dummy)")
    group.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    group.add_argument("--seed", type=int, default=0, help="seed for requests and weights")
    group.add_argument("--device", default="auto", help="auto, cuda, cpu")
    group.add_argument("--max-model-len", type=int)
    group.add_argument("--max-num-seqs", type=int)
    group.add_argument("--max-num-batched-tokens", type=int)
    group.add_argument("--gpu-memory-utilization", type=float)
    group.add_argument("--num-gpu-blocks-override", type=int)
    group.add_argument("--block-size", type=int)
    group.add_argument("--enforce-eager", action="store_true")
    group.add_argument("--no-enable-prefix-caching", action="store_true")


def _report_flags(parser: argparse.ArgumentParser, with_baseline: bool = True) -> None:
    group = parser.add_argument_group("anchors and output")
    if with_baseline:
        group.add_argument("--baseline", choices=["hf"], default=None,
                           help="hf: also run HF transformers generate on the same shape and requests")
        group.add_argument("--hf-batch-size", type=int, default=128, help="HF static batch size (throughput)")
    group.add_argument("--roofline", action="store_true",
                       help="measure copy bandwidth and matmul peak on the device and report floors")
    group.add_argument("--out", default="bench/results", help="directory for the JSON, Markdown and PNG files")
    group.add_argument("--tag", help="appended to file names; the configuration's label in charts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="MODE")

    latency = sub.add_parser("latency", help="fixed batches: prefill time and ms per decode step",
                             description="Fixed batch, prompt and output lengths: prefill time and decode ms/step.")
    _model_flags(latency)
    latency.add_argument("--batch-size", type=int_list, default=[1, 8, 32, 128], help="comma list, e.g. 1,8,32,128")
    latency.add_argument("--input-len", type=int, default=128)
    latency.add_argument("--output-len", type=int, default=128)
    latency.add_argument("--num-iters", type=int, default=3, help="timed runs per batch size")
    latency.add_argument("--num-iters-warmup", type=int, default=1)
    latency.add_argument("--hf-num-iters", type=int, default=1, help="timed HF runs per batch size")
    _report_flags(latency)
    latency.set_defaults(_bench_parser=latency)

    throughput = sub.add_parser("throughput", help="offline: N requests of seeded random lengths",
                                description="Offline throughput over N requests of seeded random lengths.")
    _model_flags(throughput)
    throughput.add_argument("--num-prompts", type=int, default=1000)
    throughput.add_argument("--input-len-range", default="256:768", help="LOW:HIGH, uniform")
    throughput.add_argument("--output-len-range", default="128:384", help="LOW:HIGH, uniform")
    throughput.add_argument("--input-len", type=int, help="fixed prompt length (overrides the range)")
    throughput.add_argument("--output-len", type=int, help="fixed output length (overrides the range)")
    throughput.add_argument("--num-warmups", type=int, default=64,
                            help="untimed requests of the same length ranges first (kernels compile, tune)")
    throughput.add_argument("--hf-num-prompts", type=int,
                            help="run HF on the first K requests only and extrapolate (default: one HF batch)")
    _report_flags(throughput)
    throughput.set_defaults(_bench_parser=throughput)

    serve = sub.add_parser("serve", help="streaming OpenAI client at fixed concurrency levels",
                           description="Drive an OpenAI-compatible /v1/completions endpoint with streaming "
                                       "requests at fixed concurrency levels.")
    _model_flags(serve)
    serve.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    serve.add_argument("--launch", action="store_true", help="start `octavo serve` on loopback and stop it after")
    serve.add_argument("--launch-timeout", type=float, default=600.0, help="seconds to wait for the server")
    serve.add_argument("--server-args", default="", help="extra arguments for `octavo serve` (one string)")
    serve.add_argument("--served-model-name", help="the 'model' field to send (default: ask /v1/models)")
    serve.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16, 32, 64])
    serve.add_argument("--input-len", type=int, default=128)
    serve.add_argument("--output-len", type=int, default=128)
    serve.add_argument("--input-len-range", help="LOW:HIGH (overrides --input-len)")
    serve.add_argument("--output-len-range", help="LOW:HIGH (overrides --output-len)")
    serve.add_argument("--num-prompts", type=int, help="requests per level (default: see --prompts-per-user)")
    serve.add_argument("--prompts-per-user", type=int, default=4, help="requests per level = this x concurrency")
    serve.add_argument("--min-prompts-per-level", type=int, default=8)
    serve.add_argument("--num-warmups", type=int,
                       help="warm-up requests (default: 2 alone, then 2x the largest concurrency at it)")
    serve.add_argument("--request-timeout", type=float, default=600.0)
    serve.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request")
    serve.add_argument("--prompt-text", help="a UTF-8 text file: prompts are windows of its tokens (the model's "
                                             "tokenizer) at seeded offsets instead of random token ids")
    serve.add_argument("--warmup-each-level", action="store_true",
                       help="one untimed round (c requests) just before each level, after the warm-up")
    serve.add_argument("--time-budget", type=float,
                       help="seconds: start no level once the sweep (warm-up included) has run this long")
    serve.add_argument("--speculative-model", help="with --launch: the server's draft model")
    serve.add_argument("--num-speculative-tokens", type=int, help="with --speculative-model: k (the maximum "
                                                                   "when the server adapts k)")
    serve.add_argument("--latency-anchor", action="store_true",
                       help="with --launch: time octavo's batch-1 decode step in process after the sweep")
    serve.add_argument("--anchor-iters", type=int, default=3)
    _report_flags(serve)
    serve.set_defaults(_bench_parser=serve)

    report = sub.add_parser("report", help="Markdown (and combined sweep charts) from result JSON files",
                            description="Render result JSON files as Markdown; two or more serve results "
                                        "also give sweep charts with one line per result.")
    report.add_argument("files", nargs="+", help="result .json files")
    report.add_argument("--out", help="directory for combined charts")
    report.add_argument("--stem", default="serve-comparison", help="file name stem of the combined charts")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    command = getattr(args, "bench_command", None)
    if command is None:
        print("usage: octavo bench {latency,throughput,serve,report} ... (see octavo bench MODE --help)",
              file=sys.stderr)
        return 2
    from octavo.bench import report

    try:
        if command == "report":
            text, paths = report.combined([report.load(p) for p in args.files], args.out, args.stem)
            print(text)
            for path in paths:
                print(f"wrote {path}")
            return 0
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
        save_partial = report.partial_writer(args.out)
        if command == "latency":
            from octavo.bench import latency as mode

            result = mode.benchmark(args, save_partial)
        elif command == "throughput":
            from octavo.bench import throughput as mode

            result = mode.benchmark(args, save_partial)
        else:
            from octavo.bench import serve as mode

            result = mode.benchmark(args, args.out, save_partial)
    except ValueError as exc:
        print(f"octavo bench {command}: error: {exc}", file=sys.stderr)
        return 2
    paths = report.write_all(result, args.out)
    print(report.markdown(result))
    for path in paths:
        print(f"wrote {path}")
    if result["kind"] == "serve" and result["total_errors"]:
        return 1
    return 0
