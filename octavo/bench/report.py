"""Results out: the raw JSON (every record and the summary), a Markdown table with ratios to the
anchors measured in the same run, and PNG charts for sweeps (one line per configuration)."""

from __future__ import annotations

import json
import math
import os
from importlib import import_module
from typing import Any

from octavo.bench.env import device_slug

# The goals (H100, llama-3.1-8b config, dummy weights, bf16), checked in every report that
# measured the quantity; elsewhere they are context, not a verdict.
GOAL_OUTPUT_TPS = 12_000
GOAL_TPS_VS_HF = 25.0
GOAL_TPOT_C1_OVER_STEP = 1.15


def file_stem(result: dict) -> str:
    """<date>-<kind>-<model>-<device>[-<tag>], e.g. 2026-11-22-throughput-llama-3.1-8b-h100."""
    env = result["env"]
    parts = [env["date"], result["kind"], result["model"]["name"], device_slug(env["device"]), result.get("tag")]
    return "-".join(p.replace("/", "_").replace(" ", "_") for p in parts if p)


def write_json(result: dict, path: str) -> None:
    """Written to a temporary file first, so a run killed mid-write leaves the last whole copy."""
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=lambda v: None if isinstance(v, float) else str(v))
        f.write("\n")
    os.replace(path + ".tmp", path)


def partial_writer(out_dir: str):
    """A callback that saves a result in progress as <stem>.partial.json, so a run stopped by a time
    limit still leaves what it measured; write_all removes it."""
    def save(result: dict) -> None:
        os.makedirs(out_dir, exist_ok=True)
        write_json(result, os.path.join(out_dir, f"{file_stem(result)}.partial.json"))

    return save


def write_all(result: dict, out_dir: str) -> list[str]:
    """JSON + Markdown (+ PNG for sweeps) under out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, file_stem(result))
    if os.path.exists(stem + ".partial.json"):
        os.remove(stem + ".partial.json")
    write_json(result, stem + ".json")
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    return [stem + ".json", stem + ".md", *plot(result, stem)]


# ---- Markdown ----------------------------------------------------------------------------------
def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if not isinstance(value, float):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if 0 < abs(value) < 1 and digits < 3 else f"{value:,.{digits}f}"


def ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}x"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def p3(stats: dict, digits: int = 1) -> str:
    """"p50/p90/p99" of a summary."""
    return "/".join(num(stats[q], digits) for q in ("p50", "p90", "p99"))


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def header(result: dict, title: str) -> str:
    env, model, device = result["env"], result["model"], result["env"]["device"]
    versions = env.get("versions", {})
    commit = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    what = f" ({model['dtype']}, {model.get('load_format')} weights)" if model.get("dtype") else ""
    lines = [f"## {title}: {model['name']}{what} on {device.get('name')}", "", f"`{env['command']}`", "",
             f"{env['time_utc']} · commit {commit} · torch {versions.get('torch')} · triton "
             f"{versions.get('triton')} · transformers {versions.get('transformers')}", ""]
    roofline = result.get("roofline")
    if roofline:
        line = (f"Roofline (this run): copy {num(roofline['copy_bandwidth_gbps'])} GB/s, matmul "
                f"{num(roofline['matmul_tflops'])} TFLOP/s ({roofline['matmul_dtype']} {roofline['matmul_size']}^3)")
        if "decode_floor_bs1_ms" in roofline:
            line += (f"; batch-1 decode floor {roofline['decode_floor_bs1_ms']:.2f} ms/token "
                     f"({roofline['weight_bytes'] / 1e9:.2f} GB of weights / copy bandwidth)")
        lines += [line + ".", ""]
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    kind = result["kind"]
    if kind in ("latency", "throughput", "serve"):
        body = globals()[f"{kind}_markdown"](result)
    elif kind in ("spec", "kernels"):
        body = import_module(f"octavo.bench.{kind}").markdown(result)
    else:
        raise ValueError(f"unknown result kind {kind!r}")
    if result.get("profile"):
        body += "\n" + import_module("octavo.bench.profile").markdown(result["profile"])
    checks = goals(result)
    if checks:
        body += "\nGoals (set for H100, llama-3.1-8b, dummy weights, bf16):\n\n" + "".join(
            f"- {'met' if g['met'] else 'NOT met'}: {g['name']} (measured {g['measured']})\n" for g in checks)
    return body


def latency_markdown(result: dict) -> str:
    rows, settings = result["rows"], result["settings"]
    has_hf, has_floor = any(row.get("hf") for row in rows), any(row.get("floor") for row in rows)
    has_spec = any(row["octavo"].get("speculation") for row in rows)
    head = ["batch", "prompt", "output", "prefill ms", "ms/step", "tok/s"] + (["acceptance"] if has_spec else [])
    head += ["HF prefill ms", "HF ms/step", "HF tok/s", "HF step / octavo step"] if has_hf else []
    head += ["floor ms/step", "octavo / floor"] if has_floor else []
    cells = []
    for row in rows:
        ours, hf = row["octavo"], row.get("hf") or {}
        cells.append([str(row["batch_size"]), str(row["input_len"]), str(row["output_len"]), num(ours["prefill_ms"]),
                      num(ours["decode_ms_per_step"], 2), num(ours["output_tokens_per_s"])]
                     + ([f"{ours['speculation']['acceptance']:.3f}" if ours.get("speculation") else "—"]
                        if has_spec else [])
                     + ([num(hf.get("prefill_ms")), num(hf.get("decode_ms_per_step"), 2),
                         num(hf.get("output_tokens_per_s")), ratio(row["ratios"].get("hf_step_over_octavo_step"))]
                        if has_hf else [])
                     + ([num(row["floor"]["floor_ms"], 2), ratio(row["ratios"].get("octavo_step_over_floor"))]
                        if has_floor else []))
    step = ("(end - prefill) / (output tokens - 1), the device synchronized at the start and end of a run only"
            if settings.get("decode_timing") == "end-to-end" else "median decode step (device synchronized)")
    note = (f"\nms/step: {step}, median over {settings['num_iters']} runs after "
            f"{settings['num_iters_warmup']} warm-up; prefill: until every request has its first token; tok/s: "
            "batch x output tokens / end-to-end time.")
    if has_spec:
        note += (" With a draft, ms/step is per output token (a verification emits several) and acceptance is "
                 "accepted / drafted tokens over the timed runs.")
    if has_hf:
        note += (f" HF: transformers `generate`, sdpa, greedy, fixed length, {settings['hf_num_iters']} run(s) "
                 "after a warm-up, same batch shape.")
    if has_floor:
        note += " Floor: max(weights + K/V bytes / copy bandwidth, 2 x params x batch / matmul peak) at mean context."
        model, all_reduce = result.get("model", {}), (result.get("roofline") or {}).get("all_reduce_ms")
        if all_reduce:
            note += (f" Tensor parallel {model.get('tensor_parallel_size')}: one rank's weights and K/V, plus "
                     f"{model.get('collectives_per_step')} collectives a step at the all-reduce time measured on "
                     "the group (ms: " + ", ".join(f"batch {bs} {ms:.4f}" for bs, ms in all_reduce.items()) + ").")
    return header(result, "Latency") + table(head, cells) + note + "\n"


def throughput_markdown(result: dict) -> str:
    ours, hf, settings = result["octavo"], result.get("hf"), result["settings"]

    def cells(run: dict, vs: str) -> list[str]:
        return [str(run["num_requests"]), num(run["prompt_tokens"]), num(run["output_tokens"]), num(run["elapsed_s"]),
                num(run["requests_per_s"], 2), num(run["output_tokens_per_s"]), num(run["total_tokens_per_s"]), vs]

    rows = [["octavo"] + cells(ours, ratio(result["ratios"].get("output_tps_vs_hf")))]
    if hf:
        rows.append([f"HF transformers, static batches of {hf['batch_size']}"] + cells(hf, "1.00x"))
    (lo, hi), (olo, ohi) = settings["input_len_range"], settings["output_len_range"]
    text = header(result, "Offline throughput") + table(
        ["engine", "requests", "prompt tokens", "output tokens", "time s", "req/s", "output tok/s", "total tok/s",
         "output tok/s vs HF"], rows)
    text += (f"\n{settings['num_prompts']} requests, prompt {lo}..{hi} and output {olo}..{ohi} tokens (uniform, "
             f"seed {settings['seed']}, ignore_eos), all submitted at once. octavo: TTFT p50 "
             f"{num(ours['ttft_ms']['p50'])} ms, end-to-end p50 {num(ours['e2e_ms']['p50'])} ms, "
             f"{ours['num_errors']} errors, {ours['num_preemptions']} preemptions.")
    floor = result.get("floor")
    if floor:
        text += (f" Roofline floor for this workload: {floor['floor_s']:.1f} s ({floor['bound']}-bound: compute "
                 f"{floor['compute_s']:.1f} s at the matmul peak, memory {floor['memory_s']:.1f} s for weights at "
                 f"max_num_seqs={floor['max_num_seqs']} and every K/V read at copy bandwidth), i.e. at most "
                 f"{num(floor['ceiling_output_tokens_per_s'])} output tok/s; octavo reaches "
                 f"{result['ratios']['octavo_over_ceiling']:.0%} of it.")
    if hf:
        text += (f" HF ran the first {hf['subset_size']} of the {settings['num_prompts']} requests"
                 + (" and its tokens/s is extrapolated to all of them" if hf["extrapolated"] else "")
                 + f" (left-padded static batches, each generating its longest output: "
                 f"{num(hf['generated_tokens_incl_padding'])} tokens generated for {num(hf['output_tokens'])} "
                 "asked for; only the asked-for tokens count).")
    return text + "\n"


def serve_markdown(result: dict) -> str:
    settings = result["settings"]
    columns = [("output tok/s", lambda s: num(s["output_tokens_per_s"])),
               ("per-user tok/s p50", lambda s: num(s["per_user_tokens_per_s"]["p50"])),
               ("TTFT p50/p90/p99 ms", lambda s: p3(s["ttft_ms"])),
               ("TPOT p50/p90/p99 ms", lambda s: p3(s["tpot_ms"], 2)),
               ("ITL p50/p90/p99 ms", lambda s: p3(s["itl_ms"], 2)),
               ("E2E p50/p90/p99 ms", lambda s: p3(s["e2e_ms"]))]
    if any(s.get("spec") for s in result["levels"]):
        columns += [(name, lambda s, key=key, d=d: num(s["spec"][key], d) if s.get("spec") else "—")
                    for name, key, d in (("acceptance", "acceptance_rate", 3),
                                         ("tokens / verification", "tokens_per_verification", 2),
                                         ("mean k", "drafts_per_verification", 2))]
    rows = [[str(s["concurrency"]), str(s["num_requests"]), str(s["num_errors"])] + [f(s) for _, f in columns]
            for s in result["levels"]]
    head = ["concurrency", "requests", "errors"] + [name for name, _ in columns]
    text = header(result, "Serving sweep") + table(head, rows)
    text += (f"\nStreaming /v1/completions at {settings['base_url']}"
             + (" (launched by the benchmark)" if settings["launched"] else "")
             + f", prompt {settings['input_len_range'] or settings['input_len']}, output "
             f"{settings['output_len_range'] or settings['output_len']} tokens, ignore_eos, temperature "
             f"{settings.get('temperature', 0.0)}"
             + (f", prompts cut from {settings['prompt_text']}" if settings.get("prompt_text") else "")
             + "; c requests always in flight. TPOT = (E2E - TTFT) / (tokens - 1); "
             "per-user tok/s = 1 / TPOT; ITL = gaps between streamed chunks."
             + (f" Draft {settings['speculative_model']}, k <= {settings.get('num_speculative_tokens')}; acceptance "
                "= accepted / drafted tokens over the level (the server's /metrics counters), tokens / verification "
                "= tokens emitted per verified request-step, mean k = drafts per verified request-step."
                if settings.get("speculative_model") else "")
             + (f" Levels skipped (time budget): {settings['skipped_levels']}." if settings.get("skipped_levels")
                else "")
             + (" The dummy model was given a synthetic word-level tokenizer of its vocabulary size (id i -> "
                "\"w<i>\"), so the server detokenizes and streams text per token as for a real model."
                if settings.get("synthetic_tokenizer") else "") + "\n")
    anchor = result.get("anchor")
    if anchor:
        text += (f"\nAnchor: octavo latency mode, batch 1, prompt {anchor['input_len']}, output "
                 f"{anchor['output_len']}: {anchor['decode_ms_per_step']:.2f} ms/step in process; TPOT p50 at "
                 f"concurrency 1 over it: {ratio(result['ratios'].get('tpot_c1_over_latency_bs1_step'))}.\n")
    return text


def goals(result: dict) -> list[dict]:
    """The issue's goals, checked only on the run they were set for (CUDA, llama-3.1-8b unchanged)."""
    model, ratios = result["model"], result.get("ratios", {})
    if model["name"] != "llama-3.1-8b" or model.get("hf_overrides") or result["env"]["device"].get("type") != "cuda":
        return []
    checks = []
    if result["kind"] == "throughput":
        tps, vs = result["octavo"]["output_tokens_per_s"], ratios.get("output_tps_vs_hf")
        checks.append({"name": f"offline output tok/s >= {GOAL_OUTPUT_TPS:,}", "measured": num(tps),
                       "met": tps >= GOAL_OUTPUT_TPS})
        if vs is not None:
            checks.append({"name": f"offline output tok/s >= {GOAL_TPS_VS_HF:.0f}x HF transformers",
                           "measured": ratio(vs), "met": vs >= GOAL_TPS_VS_HF})
    if result["kind"] == "serve":
        checks.append({"name": "no request errors in the sweep", "measured": f"{result['total_errors']} errors",
                       "met": result["total_errors"] == 0})
        step = ratios.get("tpot_c1_over_latency_bs1_step")
        if step is not None:
            checks.append({"name": f"TPOT at concurrency 1 <= {GOAL_TPOT_C1_OVER_STEP}x latency-mode batch-1 step",
                           "measured": ratio(step), "met": step <= GOAL_TPOT_C1_OVER_STEP})
    return checks


# ---- charts ------------------------------------------------------------------------------------
def save_chart(path: str, xlabel: str, panels: list, title: str = "") -> str:
    """Panels side by side on log2-x axes (batch sizes, concurrency levels in plain numbers), ticks
    at the first line's x. A panel is (y label, title, lines); a line (label, xs, ys, plot keywords)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (ylabel, panel_title, lines) in zip(axes[0], panels):
        axis.set_xscale("log", base=2)
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.grid(True, alpha=0.3)
        for label, xs, ys, style in lines:
            axis.plot(xs, ys, label=label, **style)
        axis.set_xticks(lines[0][1])
        axis.set(xlabel=xlabel, ylabel=ylabel, title=panel_title)
        axis.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(result: dict, stem_path: str) -> list[str]:
    if result["kind"] == "serve":
        return plot_serve([("octavo" + (f" ({result['tag']})" if result.get("tag") else ""), result["levels"])],
                          stem_path)
    if result["kind"] == "latency" and len(result["rows"]) > 1:
        return [plot_latency(result, stem_path)]
    return []


def plot_serve(configurations: list[tuple[str, list[dict]]], stem_path: str) -> list[str]:
    """The three sweep charts: tokens/s, generation time and TTFT against concurrency."""
    charts = [("tps", "tokens/s", [("total output tok/s", lambda s: s["output_tokens_per_s"]),
                                   ("per-user tok/s (p50)", lambda s: s["per_user_tokens_per_s"]["p50"])]),
              ("generation-time", "end-to-end latency (s)", [("p50", lambda s: s["e2e_ms"]["p50"] / 1e3),
                                                              ("p90", lambda s: s["e2e_ms"]["p90"] / 1e3)]),
              ("ttft", "TTFT (ms)", [("p50", lambda s: s["ttft_ms"]["p50"]), ("p99", lambda s: s["ttft_ms"]["p99"])])]
    paths = []
    for name, ylabel, series in charts:
        panels = [(ylabel, what, [(label, [s["concurrency"] for s in levels], [value(s) for s in levels],
                                   {"marker": "o"}) for label, levels in configurations]) for what, value in series]
        paths.append(save_chart(f"{stem_path}-{name}.png", "concurrency (requests in flight)", panels))
    return paths


def plot_latency(result: dict, stem_path: str) -> str:
    rows, settings = result["rows"], result["settings"]
    xs, hf_rows = [row["batch_size"] for row in rows], [row for row in rows if row.get("hf")]
    panels = []
    for key, ylabel in (("decode_ms_per_step", "ms per decode step"), ("output_tokens_per_s", "output tokens/s")):
        lines = [("octavo", xs, [r["octavo"][key] for r in rows], {"marker": "o"})]
        if hf_rows:
            lines.append(("HF transformers", [r["batch_size"] for r in hf_rows], [r["hf"][key] for r in hf_rows],
                          {"marker": "s"}))
        panels.append((ylabel, "", lines))
    if any(r.get("floor") for r in rows):
        panels[0][2].append(("roofline floor", xs, [r["floor"]["floor_ms"] for r in rows], {"linestyle": "--"}))
    return save_chart(f"{stem_path}.png", "batch size", panels, f"latency: {result['model']['name']}, prompt "
                      f"{settings['input_len']}, output {settings['output_len']}")


# ---- several results ---------------------------------------------------------------------------
def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def combined(results: list[dict], out_dir: str | None) -> tuple[str, list[str]]:
    """Markdown of every result, and (for two or more serve results) the sweep charts with one line
    per result, labelled by its tag or model."""
    serves = [r for r in results if r["kind"] == "serve"]
    paths: list[str] = []
    if out_dir and len(serves) > 1:
        os.makedirs(out_dir, exist_ok=True)
        paths = plot_serve([(r.get("tag") or r["model"]["name"], r["levels"]) for r in serves],
                           os.path.join(out_dir, "serve-comparison"))
    return "\n".join(markdown(r) for r in results), paths
