"""Serving sweep: a streaming client for an OpenAI-compatible `/v1/completions` endpoint at fixed
concurrency levels (c users who each send the next request as soon as the last one ends). Prompts
are token ids and `ignore_eos` pins the output length, so any model, dummy weights included, gets
the same work. With --launch, `octavo serve` runs on loopback for the sweep; the latency anchor
then runs on the freed device. The metrics are defined in bench/README.md."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from octavo.bench import roofline as roofline_mod
from octavo.bench.env import environment, settings
from octavo.bench.measure import progress, summarize
from octavo.bench.models import ModelSpec, build_llm, has_tokenizer, release, resolve_model, write_synthetic_tokenizer
from octavo.bench.workload import BenchRequest, parse_range, random_requests, text_requests

logger = logging.getLogger("octavo")


# ---- the client ----------------------------------------------------------------------------------
async def stream_completion(client: Any, base_url: str, model: str, request: BenchRequest,
                            temperature: float = 0.0, json_schema: dict | None = None) -> dict:
    """Send one streaming completion (`client`: an aiohttp session); return its timings and
    errors. Under `json_schema` (structured outputs) the output may end before output_len, once
    the schema is complete."""
    payload = {"model": model, "prompt": request.prompt_token_ids, "max_tokens": request.output_len,
               "temperature": temperature, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}}
    if json_schema is not None:
        payload["structured_outputs"] = {"json": json_schema}
    chunk_times: list[float] = []
    usage = error = None
    sent = time.perf_counter()
    try:
        async with client.post(f"{base_url}/v1/completions", json=payload) as response:
            if response.status != 200:
                error = f"HTTP {response.status}: {(await response.read()).decode(errors='replace')[:300]}"
            else:
                async for raw in response.content:  # one line at a time
                    line = raw.decode()
                    data = line[5:].strip() if line.startswith("data:") else None
                    if data == "[DONE]":
                        break
                    if data is None:
                        continue
                    now, chunk = time.perf_counter(), json.loads(data)
                    if chunk.get("error"):
                        error = f"error event: {json.dumps(chunk['error'])[:300]}"
                        break
                    usage = chunk.get("usage") or usage
                    if carries_tokens(chunk.get("choices") or []):
                        chunk_times.append(now)
    except Exception as exc:  # connection resets, timeouts, bad JSON: the request failed, the sweep goes on
        error = f"{type(exc).__name__}: {exc}"
    return token_record(request, sent, time.perf_counter(), chunk_times, usage, error,
                        may_end_early=json_schema is not None)


def carries_tokens(choices: list[dict]) -> bool:
    """A chunk with choices carries new tokens unless it only reports the finish (empty text and a
    finish_reason), which OpenAI-style servers may send as a separate last chunk."""
    return any(c.get("text") or c.get("token_ids") or not c.get("finish_reason") for c in choices)


def token_record(request: BenchRequest, sent: float, done: float, chunk_times: list[float],
                 usage: dict | None, error: str | None, may_end_early: bool = False) -> dict:
    """Timings of one streamed request. The token count is the server's `usage` when sent, else one
    per token-carrying chunk. `may_end_early`: a constrained output that stops early is no error."""
    tokens = usage.get("completion_tokens") if usage else None
    if not isinstance(tokens, int):
        tokens = len(chunk_times)
    chunk_times = chunk_times[:tokens]
    if error is None and tokens != request.output_len and (not may_end_early or not tokens):
        error = f"short output: {tokens} of {request.output_len} tokens"
    if error is None and tokens and not chunk_times:
        error = ("the stream carried no per-token chunks (empty text: a model without a tokenizer?), so TTFT "
                 "and inter-token latency cannot be measured")
    record: dict = {"prompt_len": request.prompt_len, "output_len": request.output_len, "output_tokens": tokens,
                    "num_chunks": len(chunk_times), "sent_s": sent, "e2e_ms": (done - sent) * 1e3, "error": error}
    if chunk_times:
        record["ttft_ms"] = (chunk_times[0] - sent) * 1e3
        record["tpot_ms"] = (chunk_times[-1] - chunk_times[0]) * 1e3 / (tokens - 1) if tokens > 1 else 0.0
        record["itl_ms"] = [round((b - a) * 1e3, 3) for a, b in zip(chunk_times, chunk_times[1:])]
    return record


async def run_level(load: Workload, base_url: str, model: str, requests: list[BenchRequest], concurrency: int,
                    desc: str) -> tuple[list[dict], float]:
    """Run `requests` with `concurrency` in flight; returns the records and the wall time.

    The client is aiohttp (vLLM's benchmark client too): at concurrency 64 httpx's own cost per
    request and per chunk delayed the sends of a wave, and with them the servers' TTFT. Against an
    instant server (bench/fake_sse_server.py) on 2 CPU cores, the wait from a send to the server
    reading it was 27.5 / 42.6 ms (p50 / p90) with httpx and 6.1 / 8.7 ms with aiohttp, TTFT p50
    42.1 against 17.1 ms (bench/results/2026-12-07-bench-client-cpu.md)."""
    import aiohttp

    records: list[dict | None] = [None] * len(requests)
    pending = iter(range(len(requests)))
    bar = progress(len(requests), desc, unit="req")
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=load.timeout_s)
    # read_bufsize: the longest SSE line it reads whole (a chunk with many log-probabilities).
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=2**22) as client:
        async def user() -> None:
            for index in pending:  # one shared iterator: each request is taken once
                records[index] = await stream_completion(client, base_url, model, requests[index],
                                                         load.temperature, load.json_schema)
                bar.update(1)

        start = time.perf_counter()
        try:
            await asyncio.gather(*(user() for _ in range(concurrency)))
        finally:
            bar.close()
        wall = time.perf_counter() - start
    for record in records:
        record["sent_at"] = record["sent_s"]  # time.perf_counter(): lines up with a server's step trace
        record["sent_s"] -= start
    return records, wall


def summarize_level(concurrency: int, records: list[dict], wall_s: float) -> dict:
    ok = [r for r in records if not r["error"]]
    prompt_tokens, output_tokens = sum(r["prompt_len"] for r in ok), sum(r["output_tokens"] for r in ok)
    return {"concurrency": concurrency, "num_requests": len(records), "num_errors": len(records) - len(ok),
            "duration_s": wall_s, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "requests_per_s": len(ok) / wall_s, "output_tokens_per_s": output_tokens / wall_s,
            "total_tokens_per_s": (prompt_tokens + output_tokens) / wall_s,
            "per_user_tokens_per_s": summarize(1e3 / r["tpot_ms"] for r in ok if r.get("tpot_ms")),
            **{name: summarize(r[name] for r in ok if name in r) for name in ("ttft_ms", "tpot_ms")},
            "itl_ms": summarize(g for r in ok for g in r.get("itl_ms", [])),
            "e2e_ms": summarize(r["e2e_ms"] for r in ok)}


# ---- the server's counters -----------------------------------------------------------------------
# Latency histograms whose sums and counts the sweep reads: the server's own view of a request's
# time to first token (from the handler's call into the engine), of its wait for a first step, and
# of that step. Beside the client's TTFT they show where a wave of requests waits.
SERVER_LATENCIES = ("time_to_first_token_seconds", "request_queue_time_seconds", "request_prefill_time_seconds")


def parse_counters(text: str) -> dict[str, float]:
    """octavo's counters in a Prometheus text exposition, as {name: value}: the name without the
    `octavo:` prefix and the `_total` suffix, the value summed over label sets; and the `_sum`
    and `_count` of the SERVER_LATENCIES histograms, under their full names."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("octavo:"):
            continue
        if "{" in line:
            name, rest = line[: line.index("{")], line[line.rindex("}") + 1:].split()
        else:
            name, *rest = line.split()
        key = name[len("octavo:"):]
        if key.endswith("_total"):
            key = key[: -len("_total")]
        elif not (key.endswith(("_sum", "_count")) and key.rsplit("_", 1)[0] in SERVER_LATENCIES):
            continue
        if rest:
            with contextlib.suppress(ValueError):
                values[key] = values.get(key, 0.0) + float(rest[0])
    return values


def server_latency_means(deltas: dict[str, float] | None) -> dict[str, float] | None:
    """Mean milliseconds of each SERVER_LATENCIES histogram over one level (None without them)."""
    if not deltas:
        return None
    means = {name.removesuffix("_seconds"): deltas[f"{name}_sum"] * 1e3 / deltas[f"{name}_count"]
             for name in SERVER_LATENCIES if deltas.get(f"{name}_count")}
    return means or None


def scrape_counters(base_url: str) -> dict[str, float] | None:
    """The server's counters now (GET /metrics), or None when it has no octavo metrics."""
    import httpx

    try:
        response = httpx.get(base_url + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    return (parse_counters(response.text) or None) if response.status_code == 200 else None


def counter_deltas(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def spec_summary(deltas: dict[str, float] | None) -> dict | None:
    """Speculative decoding over one level from the server's counter deltas (None without a draft).
    A verified request-step emits its accepted drafts plus one token of the target's, so there are
    emitted - accepted of them; tokens_per_verification = the mean accepted length + 1 and
    drafts_per_verification = the mean k; the fractions are shares of all generated tokens."""
    if not deltas or "spec_decode_num_draft_tokens" not in deltas:
        return None
    drafted = deltas.get("spec_decode_num_draft_tokens", 0.0)
    accepted = deltas.get("spec_decode_num_accepted_tokens", 0.0)
    emitted = deltas.get("spec_decode_num_emitted_tokens", 0.0)
    generated = deltas.get("generation_tokens", 0.0)
    steps = emitted - accepted

    def share(part: float, whole: float) -> float | None:
        return part / whole if whole else None

    return {"drafted": int(drafted), "accepted": int(accepted), "emitted": int(emitted), "verifications": int(steps),
            "acceptance_rate": share(accepted, drafted), "tokens_per_verification": share(emitted, steps),
            "drafts_per_verification": share(drafted, steps), "verified_fraction": share(emitted, generated),
            "accepted_fraction": share(accepted, generated)}


def structured_summary(counters: dict[str, float] | None) -> dict | None:
    """Grammar compilation since the server started (a launched server: this run)."""
    if not counters:
        return None
    compiled = counters.get("structured_output_grammars_compiled", 0.0)
    seconds = counters.get("structured_output_compile_seconds", 0.0)
    return {"grammars_compiled": int(compiled), "compile_ms_total": seconds * 1e3,
            "compile_ms_per_schema": seconds * 1e3 / compiled if compiled else None}


# ---- the server ----------------------------------------------------------------------------------
def serve_command(model_path: str, engine: Any, extra: str = "") -> list[str]:
    """`octavo serve MODEL` with the flags of these EngineArgs (those away from their defaults),
    then `extra` (more `octavo serve` arguments in one string). -P: the server imports octavo from
    its PYTHONPATH (python_env), never from the working directory."""
    flags = dataclasses.replace(engine, model=None).to_cli_args()
    return [sys.executable, "-P", "-m", "octavo.cli", "serve", model_path, *flags, *shlex.split(extra or "")]


def python_env(pythonpath: str | None = None, **variables: str) -> dict:
    """This process's environment for a child Python (a server): `pythonpath` first (another version
    of octavo, say), then the checkout octavo was imported from, then the inherited PYTHONPATH."""
    import octavo

    root = Path(octavo.__file__).resolve().parents[1]
    paths = [pythonpath, str(root) if (root / "pyproject.toml").is_file() else None, os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1", **variables)


def imported_octavo(env: dict) -> str:
    """The octavo package a server started with `env` imports (its __init__.py's path)."""
    done = subprocess.run([sys.executable, "-P", "-c", "import octavo; print(octavo.__file__)"], env=env,
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or f"(import failed: {done.stderr.strip()[-300:]})"


def wait_ready(base_url: str, process: subprocess.Popen, timeout_s: float, log_path: str) -> None:
    """Poll /health until it answers 200 (503 while loading); fail early if the server exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base_url + "/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    with open(log_path, errors="replace") as f:
        tail = "".join(f.readlines()[-30:])
    why = (f"exited with code {process.returncode} before it was ready" if process.poll() is not None
           else f"was not ready within {timeout_s:.0f}s (raise --launch-timeout)")
    raise RuntimeError(f"the server {why}; its log ({log_path}) ends:\n{tail}")


def stop(process: subprocess.Popen) -> None:
    """SIGINT (graceful), then SIGTERM, then SIGKILL, each with a bounded wait."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)


@contextlib.contextmanager
def launched_server(command: list[str], log_path: str, timeout_s: float, env: dict | None = None):
    """`command` (serve_command's) on a free loopback port, its output in log_path; yields
    (base_url, the full command) once /health answers, and stops the server after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [*command, "--host", "127.0.0.1", "--port", str(port)]
    logger.info("launching: %s (log: %s)", shlex.join(command), log_path)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env or python_env())
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, timeout_s, log_path)
        yield f"http://127.0.0.1:{port}", command
    finally:
        stop(process)


def served_model_name(base_url: str, fallback: str) -> str:
    import httpx

    with contextlib.suppress(httpx.HTTPError, ValueError):
        data = httpx.get(base_url + "/v1/models", timeout=10.0).json().get("data") or []
        if data and data[0].get("id"):
            return data[0]["id"]
    return fallback


# ---- the sweep -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    """What the client sends: prompts of random token ids, or windows of a text in the model's
    tokens; their lengths (fixed, or uniform over the ranges); temperature and per-request timeout."""

    vocab_size: int
    input_range: tuple[int, int]
    output_range: tuple[int, int]
    temperature: float = 0.0
    timeout_s: float = 600.0
    corpus_ids: list[int] | None = None
    bos_token_id: int | None = None
    json_schema: dict | None = None  # every request constrained to it (--json-schema)

    def use_text(self, path: str, model_dir: str) -> None:
        """Prompts from now on are windows of the UTF-8 file `path` in the model's own tokens (no
        special tokens; each prompt starts with BOS when the tokenizer has one)."""
        from transformers import AutoTokenizer

        if not has_tokenizer(model_dir):
            raise ValueError(f"prompts from a text need the model's tokenizer, and {model_dir} has none")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.corpus_ids = tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False,
                                    verbose=False)["input_ids"]
        self.bos_token_id = tokenizer.bos_token_id
        if len(self.corpus_ids) < 2 * self.input_range[1]:
            raise ValueError(f"{path} is {len(self.corpus_ids)} tokens long: give at least twice the longest "
                             f"prompt ({self.input_range[1]} tokens)")

    def requests(self, count: int, seed: int) -> list[BenchRequest]:
        if self.corpus_ids:
            return text_requests(self.corpus_ids, count, self.input_range, self.output_range, seed, self.bos_token_id)
        return random_requests(count, self.input_range, self.output_range, self.vocab_size, seed)

    def run(self, base_url: str, model: str, requests: list[BenchRequest], concurrency: int,
            desc: str) -> tuple[list[dict], float]:
        return asyncio.run(run_level(self, base_url, model, requests, concurrency, desc))

    def measure(self, base_url: str, model: str, requests: list[BenchRequest], concurrency: int,
                desc: str) -> tuple[dict, list[dict]]:
        """One timed level between two /metrics scrapes: its summary (with the counter deltas,
        speculation's and the perf_counter window it ran in) and its records."""
        before = scrape_counters(base_url)
        start = time.perf_counter()
        records, wall = self.run(base_url, model, requests, concurrency, desc)
        summary = summarize_level(concurrency, records, wall)
        summary["window"] = [start, time.perf_counter()]
        summary["server_counters"] = deltas = counter_deltas(before, scrape_counters(base_url))
        summary["server_latency_ms"] = server_latency_means(deltas)
        summary["spec"] = spec_summary(deltas)
        for record in records:
            record["concurrency"] = concurrency
        return summary, records

    def warm_up(self, base_url: str, model: str, largest: int, num_warmups: int | None, seed: int) -> None:
        """Untimed requests first: by default two alone, then twice the largest concurrency at it, so
        that kernels compiled or tuned on first use are ready. Any failure stops the benchmark."""
        plan = [(1, 2), (largest, 2 * largest)] if num_warmups is None else (
            [(min(num_warmups, largest), num_warmups)] if num_warmups > 0 else [])
        for index, (concurrency, count) in enumerate(plan):
            records, _ = self.run(base_url, model, self.requests(count, seed - 1 - index), concurrency,
                                  f"warm-up at concurrency {concurrency}")
            failed = [r["error"] for r in records if r["error"]]
            if failed:
                raise RuntimeError(f"{len(failed)} of {len(records)} warm-up requests failed; first: {failed[0]}")


def level_requests(args: Any, load: Workload, concurrency: int) -> list[BenchRequest]:
    """A level's timed requests: --num-prompts, or max(--min-prompts-per-level, --prompts-per-user x c)."""
    count = args.num_prompts or max(args.min_prompts_per_level, args.prompts_per_user * concurrency)
    return load.requests(count, args.seed + 1000 * concurrency)


def sweep(args: Any, load: Workload, base_url: str, model: str, levels: list[dict], records: list[dict],
          save: Callable[[], None]) -> list[int]:
    """Warm up, then run every concurrency level, appending summaries and records as they come. With
    --time-budget no level starts once the sweep has run that long; returns the levels skipped."""
    start = time.monotonic()
    load.warm_up(base_url, model, max(args.concurrency), args.num_warmups, args.seed)
    skipped: list[int] = []
    for concurrency in sorted(set(args.concurrency)):
        if args.time_budget is not None and time.monotonic() - start > args.time_budget:
            skipped.append(concurrency)
            logger.warning("concurrency %d skipped: the sweep has run %.0f s of its %.0f s budget", concurrency,
                           time.monotonic() - start, args.time_budget)
            continue
        summary, level_records = load.measure(base_url, model, level_requests(args, load, concurrency), concurrency,
                                              f"concurrency {concurrency}")
        levels.append(summary)
        records.extend(level_records)
        spec = summary["spec"]
        logger.info("concurrency %d: %.0f tok/s, TTFT p50 %.1f ms, TPOT p50 %.2f ms, %d errors%s", concurrency,
                    summary["output_tokens_per_s"], summary["ttft_ms"]["p50"], summary["tpot_ms"]["p50"],
                    summary["num_errors"], f", acceptance {spec['acceptance_rate']:.3f}, mean k "
                    f"{spec['drafts_per_verification']:.2f}" if spec and spec["acceptance_rate"] is not None else "")
        save()
    return skipped


def profile_level(args: Any, load: Workload, base_url: str, model: str) -> dict | None:
    """With --profiler-config on a launched server: the largest level once more between POST
    /start_profile and /stop_profile, summarised from the traces the server wrote meanwhile."""
    import httpx

    from octavo.bench import profile
    from octavo.runtime.config import ProfilerConfig

    config = ProfilerConfig.resolve(args.profiler_config)
    if config is None:
        return None
    directory = Path(config.torch_profiler_dir)
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.glob("*.pt.trace.json*"))
    concurrency = max(args.concurrency)
    httpx.post(base_url + "/start_profile", timeout=60.0).raise_for_status()
    load.measure(base_url, model, level_requests(args, load, concurrency), concurrency,
                 f"concurrency {concurrency}, profiled")
    httpx.post(base_url + "/stop_profile", timeout=600.0).raise_for_status()  # returns once written
    traces = sorted(set(directory.glob("*.pt.trace.json*")) - before, key=lambda p: p.stat().st_mtime)
    if not traces:
        raise RuntimeError(f"the server wrote no trace to {directory} between /start_profile and /stop_profile")
    return profile.summarize_files(traces)


def latency_anchor(args: Any, spec: ModelSpec) -> dict:
    """octavo's batch-1 decode step on this device, in process (the server stopped), without a draft."""
    from octavo.bench.latency import octavo_row

    llm = build_llm(args, spec, speculative_model=None, num_speculative_tokens=None)
    row = octavo_row(llm, 1, args.input_len, args.output_len, num_iters=args.anchor_iters, num_warmup=1,
                     seed=args.seed)
    del llm
    release()
    return {"batch_size": 1, "input_len": args.input_len, "output_len": args.output_len,
            "decode_ms_per_step": row["decode_ms_per_step"], "prefill_ms": row["prefill_ms"],
            "decode_step_ms": row["decode_step_ms"]}


def benchmark(args: Any, save_partial: Callable[[dict], None]) -> dict:
    from octavo.bench.cli import engine_args
    from octavo.bench.report import file_stem
    from octavo.runtime.config import resolve_dtype

    spec = resolve_model(args.model, args.config, args.load_format, args.hf_overrides)
    if not args.launch and not args.base_url:
        raise ValueError("give --base-url of a running server, or --launch to start `octavo serve` here")
    if not args.launch and (args.latency_anchor or args.speculative_model):
        raise ValueError("--latency-anchor runs on this machine's device after the server stops, and "
                         "--speculative-model is for the server this benchmark starts: use them with --launch")
    config = json.loads(Path(spec.path, "config.json").read_text())
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int):
        raise ValueError(f"{spec.path}/config.json names no vocab_size; token-id prompts need one")
    load = Workload(vocab_size, parse_range(args.input_len_range) if args.input_len_range else (args.input_len,) * 2,
                    parse_range(args.output_len_range) if args.output_len_range else (args.output_len,) * 2,
                    args.temperature, args.request_timeout,
                    json_schema=json.loads(Path(args.json_schema).read_text()) if args.json_schema else None)
    if args.prompt_text:
        load.use_text(args.prompt_text, spec.path)
    device = engine_args(args).resolved_device()
    dtype = resolve_dtype(args.dtype, config.get("torch_dtype") or config.get("dtype"), device)
    levels: list[dict] = []
    records: list[dict] = []
    result: dict = {
        "kind": "serve", "tag": args.tag, "env": environment(args.device, args),
        "model": spec.describe(vocab_size=vocab_size,
                               dtype=str(dtype).replace("torch.", "") if args.launch else args.dtype),
        "settings": settings(args, launched=bool(args.launch), server_command=None, synthetic_tokenizer=False,
                             prompt_corpus_tokens=len(load.corpus_ids or []) or None, skipped_levels=[]),
        "roofline": roofline_mod.measure(args.device) if args.roofline else None,
        "levels": levels, "anchor": None, "ratios": {}, "total_errors": 0, "records": records,
    }
    recorded, ratios = result["settings"], result["ratios"]

    def save() -> None:
        result["total_errors"] = sum(level["num_errors"] for level in levels)
        save_partial(result)

    with contextlib.ExitStack() as stack:
        base_url = (args.base_url or "").rstrip("/")
        if args.launch:
            if spec.temporary and not has_tokenizer(spec.path):
                write_synthetic_tokenizer(spec.path, vocab_size, config.get("eos_token_id"))
                recorded["synthetic_tokenizer"] = True
            os.makedirs(args.out, exist_ok=True)
            log_path = os.path.join(args.out, file_stem(result) + "-server.log")
            command = serve_command(spec.path, engine_args(args, load_format=spec.load_format), args.server_args)
            base_url, command = stack.enter_context(launched_server(command, log_path, args.launch_timeout))
            recorded.update(base_url=base_url, server_command=shlex.join(command))
        model = result["model"]["served_name"] = args.served_model_name or served_model_name(base_url, spec.path)
        recorded["skipped_levels"] = sweep(args, load, base_url, model, levels, records, save)
        if args.launch and levels:
            result["profile"] = profile_level(args, load, base_url, model)  # at max(args.concurrency)
        if load.json_schema is not None:
            result["structured_outputs"] = structured_summary(scrape_counters(base_url))
    if args.latency_anchor:
        anchor = result["anchor"] = latency_anchor(args, spec)
        if levels and levels[0]["concurrency"] == 1 and levels[0]["tpot_ms"]["count"]:
            ratios["tpot_c1_over_latency_bs1_step"] = levels[0]["tpot_ms"]["p50"] / anchor["decode_ms_per_step"]
    save()
    return result
