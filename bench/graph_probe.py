"""Where a batch-1 decode step's GPU time goes between kernels (issue #21), CUDA only.

A b1 profile of the engine found about 5.5 ms of kernels in a 6.2 ms step. This probe separates
the two places that gap can be: inside the captured decode graph (launch gaps between its ~300
kernels) or between graphs (the host's step loop). It builds the LLM class on a dummy checkpoint,
decodes once so every graph exists, then replays each (batch, 1) graph alone at a chosen context:
  * `graph_ms`: median ms per replay from CUDA events, no profiler, replays back to back;
  * `kernels_ms`, `gaps_ms`: from a torch profiler over a few replays, the sum of kernel
    durations per replay and the idle time between consecutive kernels inside one replay;
  * the largest gaps with the kernels either side (what to fuse or launch earlier).

    python bench/graph_probe.py --config llama-3.1-8b --context 190 --batches 1,16,64 --out result.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def back_to_back_ms(graph, replays: int) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def kernel_gaps(graph, replays: int) -> dict:
    """Kernel time and inner gaps per replay, from the profiler's device timeline."""
    import torch

    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
            torch.cuda.synchronize()  # separates the replays on the timeline
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    # Replays are split where the timeline idles more than 50 us (a synchronize in between).
    groups, current = [], []
    for item in kernels:
        if current and item[0] - current[-1][1] > 50:
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    per_replay, gaps = [], []
    for group in groups:
        busy = sum(end - start for start, end, _ in group)
        span = group[-1][1] - group[0][0]
        per_replay.append((busy / 1e3, span / 1e3, len(group)))
        for before, after in zip(group, group[1:]):
            gaps.append((after[0] - before[1], before[2][:70], after[2][:70]))
    by_pair: dict[tuple[str, str], list[float]] = {}
    for gap, before, after in gaps:
        by_pair.setdefault((before, after), []).append(gap)
    pairs = sorted(by_pair.items(), key=lambda item: -sum(item[1]))[:15]
    count = max(len(groups), 1)
    return {
        "replays": len(groups),
        "kernels_per_replay": statistics.median(n for _, _, n in per_replay) if per_replay else 0,
        "kernels_ms": statistics.median(b for b, _, _ in per_replay) if per_replay else 0.0,
        "span_ms": statistics.median(s for _, s, _ in per_replay) if per_replay else 0.0,
        "gap_us_p50": statistics.median(g for g, _, _ in gaps) if gaps else 0.0,
        "gap_pairs": [{"before": b, "after": a, "us_per_replay": sum(g) / count, "count_per_replay": len(g) / count,
                       "us_mean": sum(g) / len(g)} for (b, a), g in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="llama-3.1-8b")
    parser.add_argument("--context", type=int, default=190, help="tokens of context the replays attend to")
    parser.add_argument("--replays", type=int, default=300)
    parser.add_argument("--batches", default="1", help="comma-separated decode batch sizes (captured graph sizes)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from octavo import LLM, SamplingParams
    from octavo.bench import roofline
    from octavo.bench.models import resolve_model

    batches = [int(b) for b in args.batches.split(",")]
    spec = resolve_model(None, args.config, "dummy", None)
    llm = LLM(spec.path, load_format="dummy", dtype="bfloat16", max_num_seqs=max(batches),
              max_model_len=args.max_model_len)
    llm.generate([{"prompt_token_ids": list(range(1000, 1000 + args.context))}],
                 SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    runner = llm.llm_engine.model_runner
    buffers = runner.graph_buffers
    blocks = -(-args.context // runner.cache_config.block_size)
    result = {"tag": args.tag, "config": args.config, "context": args.context,
              "block_table_width": buffers.block_tables.shape[1], "batches": {}}
    for batch in batches:
        entry = runner.graphs[(batch, 1)]
        # Each request its own blocks (the cache holds far more than batch x blocks).
        table = torch.arange(batch * blocks, dtype=torch.int32, device=buffers.block_tables.device)
        buffers.block_tables[:batch, :blocks] = table.view(batch, blocks)
        buffers.seq_lens[:batch] = args.context
        buffers.slot_mapping[:batch] = -1  # nothing written
        for _ in range(20):
            entry.graph.replay()
        torch.cuda.synchronize()
        row = {"graph_ms_each": roofline.time_ms(entry.graph.replay, torch.device("cuda"), args.replays, warmup=0),
               "graph_ms_back_to_back": back_to_back_ms(entry.graph, args.replays),
               **kernel_gaps(entry.graph, 10)}
        result["batches"][batch] = row
        print(batch, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "gap_pairs"))
        for pair in row["gap_pairs"][:6] if batch == batches[0] else []:
            print(f"  {pair['us_per_replay']:7.1f} us/replay  x{pair['count_per_replay']:.0f}  "
                  f"{pair['before'][:40]} -> {pair['after'][:40]}")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
