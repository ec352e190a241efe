"""The second seed's own client path (#26): `AsyncLLMEngine.from_engine_args(AsyncEngineArgs(...))`
with the seed's arguments as written, then `generate` streaming, at several concurrencies, with
and without the draft (one engine after the other: the two do not fit the GPUs together).

The seed's arguments are kept word for word (trust_remote_code, tensor_parallel_size,
max_num_seqs=8, dtype="half", use_v2_block_manager, enforce_eager); only the models are local
dummy-weight directories, usually a chain pair (octavo/bench/chain_pair.py), loaded with
load_format="dummy" and model_loader_extra_config={"partial_checkpoint": true}.

    python bench/seed_async.py --target DIR --draft DIR --tensor-parallel-size 4 --out $OUT

Per arm and concurrency c: c untimed requests, then per_user x c timed with c in flight; tokens/s
total and per user, TTFT p50/p99, end-to-end p50, and the engine's acceptance counters. JSON and
Markdown under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from octavo import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
from octavo.bench.env import environment
from octavo.bench.measure import summarize
from octavo.bench.report import num, table, write_json
from octavo.bench.workload import fixed_requests

logger = logging.getLogger("octavo")
SPEC_COUNTERS = ("spec_draft_tokens", "spec_accepted_tokens")


def seed_engine_args(target: str, draft: str | None, tensor_parallel_size: int, extra: dict) -> AsyncEngineArgs:
    """The seed's AsyncEngineArgs, word for word but for the models (and `extra`, e.g. how dummy
    weights load; its speculative_config, if any, only with a draft)."""
    seed = dict(model=target, trust_remote_code=True, tensor_parallel_size=tensor_parallel_size, max_num_seqs=8,
                dtype="half", use_v2_block_manager=True, enforce_eager=True)
    if draft:
        seed["speculative_model"] = draft
    else:
        extra = {key: value for key, value in extra.items() if key != "speculative_config"}
    return AsyncEngineArgs(**seed, **extra)


async def one_request(engine: AsyncLLMEngine, request_id: str, prompt: list[int], params: SamplingParams) -> dict:
    started = time.perf_counter()
    first = None
    ids: list[int] = []
    async for output in engine.generate({"prompt_token_ids": prompt}, params, request_id):
        if first is None and output.outputs[0].token_ids:
            first = time.perf_counter()
        ids = list(output.outputs[0].token_ids)
    ended = time.perf_counter()
    return {"ttft_ms": ((first or ended) - started) * 1e3, "e2e_ms": (ended - started) * 1e3, "tokens": len(ids),
            "tokens_per_s": len(ids) / (ended - started), "walk": [prompt[-1], *ids]}


def chain_follow(records: list[dict], successor) -> float:
    """The share of generated tokens that are the chain's next token after the one before (a chain
    pair's target generates exactly its chain: 1.0 checks the construction at this model's scale)."""
    steps = [(a, b) for r in records for a, b in zip(r["walk"], r["walk"][1:])]
    return sum(int(successor[a]) == b for a, b in steps) / max(1, len(steps))


async def level(engine: AsyncLLMEngine, requests: list, concurrency: int, tag: str, successor=None) -> dict:
    """Every request, `concurrency` in flight; wall time from the first start to the last end.
    With a chain pair's successor table, also how closely the outputs follow its chain."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(index: int, request) -> dict:
        async with gate:
            params = SamplingParams(temperature=0.0, max_tokens=request.output_len, ignore_eos=True)
            return await one_request(engine, f"{tag}-{index}", request.prompt_token_ids, params)

    started = time.perf_counter()
    records = await asyncio.gather(*(gated(i, r) for i, r in enumerate(requests)))
    wall = time.perf_counter() - started
    return {"num_requests": len(records), "seconds": wall, "output_tokens": sum(r["tokens"] for r in records),
            "chain_follow": chain_follow(records, successor) if successor is not None else None,
            "output_tokens_per_s": sum(r["tokens"] for r in records) / wall,
            "tokens_per_s_per_user": summarize(r["tokens_per_s"] for r in records),
            "ttft_ms": summarize(r["ttft_ms"] for r in records), "e2e_ms": summarize(r["e2e_ms"] for r in records)}


async def run_arm(args: argparse.Namespace, draft: str | None, vocab_size: int, successor=None) -> dict:
    extra = json.loads(args.engine_json) if args.engine_json else {}
    if args.draft_tensor_parallel_size and draft:
        extra["speculative_draft_tensor_parallel_size"] = args.draft_tensor_parallel_size
    began = time.perf_counter()
    engine = AsyncLLMEngine.from_engine_args(seed_engine_args(args.target, draft, args.tensor_parallel_size, extra))
    config = engine.engine.config
    spec = config.speculative_config
    arm = {"draft": draft, "start_s": time.perf_counter() - began, "levels": [],
           "draft_tensor_parallel_size": spec.draft_tensor_parallel_size if spec else None,
           "num_speculative_tokens": spec.num_speculative_tokens if spec else None,
           "adaptive": spec.adaptive if spec else None}
    try:
        for concurrency in args.concurrency:
            untimed = fixed_requests(concurrency, args.input_len, args.output_len, vocab_size, args.seed + concurrency)
            await level(engine, untimed, concurrency, f"warm-{concurrency}")
            before = [getattr(engine.stats, name, 0) for name in SPEC_COUNTERS]
            timed = fixed_requests(args.prompts_per_user * concurrency, args.input_len, args.output_len, vocab_size,
                                   args.seed + 1000 + concurrency)
            result = await level(engine, timed, concurrency, f"c{concurrency}", successor)
            drafted, accepted = (getattr(engine.stats, n, 0) - b for n, b in zip(SPEC_COUNTERS, before))
            result.update(concurrency=concurrency, drafted=drafted, accepted=accepted,
                          acceptance=accepted / drafted if drafted else None)
            arm["levels"].append(result)
            logger.info("%s c=%d: %.1f tok/s, TTFT p50 %.1f ms%s", "spec" if draft else "no-spec", concurrency,
                        result["output_tokens_per_s"], result["ttft_ms"]["p50"],
                        f", acceptance {result['acceptance']:.3f}" if drafted else "")
    finally:
        engine.shutdown()
    return arm


def markdown(doc: dict) -> str:
    env = doc["env"]
    lines = [f"## The seed's AsyncLLMEngine path: {doc['target']} (draft {doc['draft']}) on "
             f"{env['device'].get('name')}", "", f"`{env['command']}`", "",
             f"{env['time_utc']} · commit {(env.get('git_commit') or 'unknown')[:12]} · tensor_parallel_size "
             f"{doc['tensor_parallel_size']} · {doc['input_len']} in / {doc['output_len']} out, greedy", ""]
    if doc.get("construction"):
        lines += [doc["construction"], ""]
    for arm in doc["arms"]:
        if arm["draft"]:
            lines += [f"Draft arm: k <= {arm['num_speculative_tokens']}" + (" (adaptive)" if arm["adaptive"] else "")
                      + f", the draft split over {arm['draft_tensor_parallel_size']} GPU(s) of the target's "
                      f"{doc['tensor_parallel_size']}.", ""]
    arms = {("spec" if arm["draft"] else "no-spec"): {lv["concurrency"]: lv for lv in arm["levels"]}
            for arm in doc["arms"]}
    rows = []
    for concurrency in doc["concurrency"]:
        base, spec = arms.get("no-spec", {}).get(concurrency), arms.get("spec", {}).get(concurrency)
        for name, lv in (("no-spec", base), ("spec", spec)):
            if lv:
                rows.append([str(concurrency), name, num(lv["output_tokens_per_s"]),
                             num(lv["tokens_per_s_per_user"]["p50"]), num(lv["ttft_ms"]["p50"]),
                             num(lv["ttft_ms"]["p99"]), num(lv["e2e_ms"]["p50"]),
                             f"{lv['acceptance']:.3f}" if lv.get("acceptance") is not None else "—",
                             f"{lv['chain_follow']:.4f}" if lv.get("chain_follow") is not None else "—"])
        if base and spec:
            rows.append([str(concurrency), "spec / no-spec",
                         f"{spec['output_tokens_per_s'] / base['output_tokens_per_s']:.2f}x", "",
                         f"{spec['ttft_ms']['p50'] / base['ttft_ms']['p50']:.2f}x", "", "", "", ""])
    lines.append(table(["c", "arm", "output tok/s", "tok/s per user p50", "TTFT p50 ms", "TTFT p99 ms",
                        "e2e p50 ms", "acceptance", "on the chain"], rows))
    lines += ["", "One run per arm and level (engines one after the other): no interval; bench spec gives "
              "paired intervals where both servers fit at once. On the chain: the share of generated tokens "
              "that are the chain pair's next token (1 when the target computes what the pair was built for).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--tensor-parallel-size", type=int, default=4)
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma list")
    parser.add_argument("--prompts-per-user", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--draft-tensor-parallel-size", type=int,
                        help="GPUs the draft is split over (1: rank 0 alone; the target's: its group); unset: the "
                             "engine's default, as the seed leaves it")
    parser.add_argument("--arms", default="spec,no-spec", help="which engines, in order")
    parser.add_argument("--engine-json", default=json.dumps({"load_format": "dummy", "model_loader_extra_config":
                                                             {"partial_checkpoint": True}}),
                        help="more AsyncEngineArgs (JSON); default: the chain pair's loading")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="seed-async")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - {"spec", "no-spec"}:
        parser.error("--arms takes spec and/or no-spec")
    vocab_size = json.loads((Path(args.target) / "config.json").read_text())["vocab_size"]
    pair_record = Path(args.target).parent / "pair.json"
    doc = {"kind": "seed-async", "tag": args.tag, "env": environment(None, None), "target": args.target,
           "draft": args.draft, "tensor_parallel_size": args.tensor_parallel_size, "concurrency": args.concurrency,
           "input_len": args.input_len, "output_len": args.output_len, "arms": [],
           "construction": None}
    doc["env"]["command"] = shlex.join(["python", "bench/seed_async.py", *(sys.argv[1:] if argv is None else argv)])
    successor = None
    if pair_record.is_file():
        from octavo.bench.chain_pair import chain_successor, construction_text

        doc["construction"] = construction_text(json.loads(pair_record.read_text()))
        successor = chain_successor(pair_record.parent)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{doc['env']['date']}-{args.tag}")
    for arm in arms:
        doc["arms"].append(asyncio.run(run_arm(args, args.draft if arm == "spec" else None, vocab_size, successor)))
        write_json(doc, stem + ".json")
    Path(stem + ".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(main())
