"""Results out: the raw JSON (every record and the summary), a Markdown table with ratios to the
anchors measured in the same run, and PNG charts for sweeps (one line per configuration)."""

from __future__ import annotations

import json
import math
import os
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


def partial_writer(out_dir: str):
    """A callback that saves a result in progress as <stem>.partial.json, so a run stopped by a time
    limit still leaves what it measured; write_all removes it."""
    def save(result: dict) -> None:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{file_stem(result)}.partial.json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1, default=_jsonable)
        os.replace(path + ".tmp", path)

    return save


def write_all(result: dict, out_dir: str, stem: str | None = None) -> list[str]:
    """JSON + Markdown (+ PNG for sweeps) under out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    stem = stem or file_stem(result)
    partial = os.path.join(out_dir, f"{stem}.partial.json")
    if os.path.exists(partial):
        os.remove(partial)
    paths = []
    json_path = os.path.join(out_dir, f"{stem}.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=_jsonable)
        f.write("\n")
    paths.append(json_path)
    md_path = os.path.join(out_dir, f"{stem}.md")
    with open(md_path, "w") as f:
        f.write(markdown(result))
    paths.append(md_path)
    paths.extend(plot(result, os.path.join(out_dir, stem)))
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


# ---- Markdown ----------------------------------------------------------------------------------
def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float) and 0 < abs(value) < 1 and digits < 3:
        return f"{value:.3g}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def header(result: dict, title: str) -> str:
    env = result["env"]
    model = result["model"]
    versions = env.get("versions", {})
    device = env["device"]
    commit = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    what = f" ({model['dtype']}, {model.get('load_format')} weights)" if model.get("dtype") else ""
    lines = [
        f"## {title}: {model['name']}{what} on {device.get('name')}",
        "",
        f"`{env['command']}`",
        "",
        f"{env['time_utc']} · commit {commit} · torch {versions.get('torch')} · triton {versions.get('triton')} · "
        f"transformers {versions.get('transformers')}",
        "",
    ]
    roofline = result.get("roofline")
    if roofline:
        line = (f"Roofline (this run): copy {_num(roofline['copy_bandwidth_gbps'])} GB/s, matmul "
                f"{_num(roofline['matmul_tflops'])} TFLOP/s ({roofline['matmul_dtype']} {roofline['matmul_size']}^3)")
        if "decode_floor_bs1_ms" in roofline:
            line += (f"; batch-1 decode floor {roofline['decode_floor_bs1_ms']:.2f} ms/token "
                     f"({roofline['weight_bytes'] / 1e9:.2f} GB of weights / copy bandwidth)")
        lines += [line + ".", ""]
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    kind = result["kind"]
    if kind == "latency":
        body = latency_markdown(result)
    elif kind == "throughput":
        body = throughput_markdown(result)
    elif kind == "serve":
        body = serve_markdown(result)
    elif kind in ("spec", "kernels"):
        from importlib import import_module

        body = import_module(f"octavo.bench.{kind}").markdown(result)
    else:
        raise ValueError(f"unknown result kind {kind!r}")
    if result.get("profile"):
        from octavo.bench import profile

        body += "\n" + profile.markdown(result["profile"])
    checks = goals(result)
    if checks:
        body += "\nGoals (set for H100, llama-3.1-8b, dummy weights, bf16):\n\n"
        body += "".join(f"- {'met' if g['met'] else 'NOT met'}: {g['name']} (measured {g['measured']})\n"
                        for g in checks)
    return body


def latency_markdown(result: dict) -> str:
    has_hf = any(row.get("hf") for row in result["rows"])
    has_floor = any(row.get("floor") for row in result["rows"])
    head = ["batch", "prompt", "output", "prefill ms", "ms/step", "tok/s"]
    if has_hf:
        head += ["HF prefill ms", "HF ms/step", "HF tok/s", "HF step / octavo step"]
    if has_floor:
        head += ["floor ms/step", "octavo / floor"]
    rows = []
    for row in result["rows"]:
        ours = row["octavo"]
        cells = [str(row["batch_size"]), str(row["input_len"]), str(row["output_len"]), _num(ours["prefill_ms"]),
                 _num(ours["decode_ms_per_step"], 2), _num(ours["output_tokens_per_s"])]
        if has_hf:
            hf = row.get("hf") or {}
            cells += [_num(hf.get("prefill_ms")), _num(hf.get("decode_ms_per_step"), 2),
                      _num(hf.get("output_tokens_per_s")), _ratio(row["ratios"].get("hf_step_over_octavo_step"))]
        if has_floor:
            cells += [_num(row["floor"]["floor_ms"], 2), _ratio(row["ratios"].get("octavo_step_over_floor"))]
        rows.append(cells)
    settings = result["settings"]
    note = (f"\nms/step: median decode step (device synchronized) over {settings['num_iters']} runs after "
            f"{settings['num_iters_warmup']} warm-up; prefill: until every request has its first token; tok/s: "
            "batch x output tokens / end-to-end time.")
    if has_hf:
        note += (f" HF: transformers `generate`, sdpa, greedy, fixed length, {settings['hf_num_iters']} run(s) "
                 "after a warm-up, same batch shape.")
    if has_floor:
        note += " Floor: max(weights + K/V bytes / copy bandwidth, 2 x params x batch / matmul peak) at mean context."
    return header(result, "Latency") + table(head, rows) + note + "\n"


def throughput_markdown(result: dict) -> str:
    ours, hf = result["octavo"], result.get("hf")
    settings = result["settings"]
    head = ["engine", "requests", "prompt tokens", "output tokens", "time s", "req/s", "output tok/s",
            "total tok/s", "output tok/s vs HF"]
    rows = [["octavo", str(ours["num_requests"]), _num(ours["prompt_tokens"]), _num(ours["output_tokens"]),
             _num(ours["elapsed_s"]), _num(ours["requests_per_s"], 2), _num(ours["output_tokens_per_s"]),
             _num(ours["total_tokens_per_s"]), _ratio(result["ratios"].get("output_tps_vs_hf"))]]
    if hf:
        rows.append([f"HF transformers, static batches of {hf['batch_size']}", str(hf["num_requests"]),
                     _num(hf["prompt_tokens"]), _num(hf["output_tokens"]), _num(hf["elapsed_s"]),
                     _num(hf["requests_per_s"], 2), _num(hf["output_tokens_per_s"]), _num(hf["total_tokens_per_s"]),
                     "1.00x"])
    lo, hi = settings["input_len_range"]
    olo, ohi = settings["output_len_range"]
    text = header(result, "Offline throughput") + table(head, rows)
    text += (f"\n{settings['num_prompts']} requests, prompt {lo}..{hi} and output {olo}..{ohi} tokens (uniform, "
             f"seed {settings['seed']}, ignore_eos), all submitted at once. octavo: TTFT p50 "
             f"{_num(ours['ttft_ms']['p50'])} ms, end-to-end p50 {_num(ours['e2e_ms']['p50'])} ms, "
             f"{ours['num_errors']} errors, {ours['num_preemptions']} preemptions.")
    floor = result.get("floor")
    if floor:
        text += (f" Roofline floor for this workload: {floor['floor_s']:.1f} s ({floor['bound']}-bound: compute "
                 f"{floor['compute_s']:.1f} s at the matmul peak, memory {floor['memory_s']:.1f} s for weights at "
                 f"max_num_seqs={floor['max_num_seqs']} and every K/V read at copy bandwidth), i.e. at most "
                 f"{_num(floor['ceiling_output_tokens_per_s'])} output tok/s; octavo reaches "
                 f"{result['ratios']['octavo_over_ceiling']:.0%} of it.")
    if hf:
        text += (f" HF ran the first {hf['subset_size']} of the {settings['num_prompts']} requests"
                 + (" and its tokens/s is extrapolated to all of them" if hf["extrapolated"] else "")
                 + f" (left-padded static batches, each generating its longest output: "
                 f"{_num(hf['generated_tokens_incl_padding'])} tokens generated for {_num(hf['output_tokens'])} "
                 "asked for; only the asked-for tokens count).")
    return text + "\n"


SERVE_COLUMNS = [
    ("output tok/s", lambda s: _num(s["output_tokens_per_s"])),
    ("per-user tok/s p50", lambda s: _num(s["per_user_tokens_per_s"]["p50"])),
    ("TTFT p50/p90/p99 ms", lambda s: "/".join(_num(s["ttft_ms"][q]) for q in ("p50", "p90", "p99"))),
    ("TPOT p50/p90/p99 ms", lambda s: "/".join(_num(s["tpot_ms"][q], 2) for q in ("p50", "p90", "p99"))),
    ("ITL p50/p90/p99 ms", lambda s: "/".join(_num(s["itl_ms"][q], 2) for q in ("p50", "p90", "p99"))),
    ("E2E p50/p90/p99 ms", lambda s: "/".join(_num(s["e2e_ms"][q]) for q in ("p50", "p90", "p99"))),
]


SPEC_COLUMNS = [
    ("acceptance", lambda p: _num(p["acceptance_rate"], 3)),
    ("tokens / verification", lambda p: _num(p["tokens_per_verification"], 2)),
    ("mean k", lambda p: _num(p["drafts_per_verification"], 2)),
]


def serve_markdown(result: dict) -> str:
    settings = result["settings"]
    speculative = any(s.get("spec") for s in result["levels"])
    columns = SERVE_COLUMNS + ([(name, lambda s, f=f: f(s["spec"]) if s.get("spec") else "—")
                                for name, f in SPEC_COLUMNS] if speculative else [])
    head = ["concurrency", "requests", "errors"] + [name for name, _ in columns]
    rows = [[str(s["concurrency"]), str(s["num_requests"]), str(s["num_errors"])] + [f(s) for _, f in columns]
            for s in result["levels"]]
    lengths = (f"prompt {settings['input_len_range'] or settings['input_len']}, "
               f"output {settings['output_len_range'] or settings['output_len']} tokens")
    text = header(result, "Serving sweep") + table(head, rows)
    text += (f"\nStreaming /v1/completions at {settings['base_url']}"
             + (" (launched by the benchmark)" if settings["launched"] else "")
             + f", {lengths}, ignore_eos, temperature {settings.get('temperature', 0.0)}"
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
    if result.get("hf_levels"):
        head = ["concurrency", "HF output tok/s", "HF per-user tok/s", "HF TTFT ms", "HF TPOT ms", "HF E2E ms",
                "octavo output tok/s vs HF"]
        vs = result["ratios"].get("output_tps_vs_hf", {})
        rows = [[str(h["concurrency"]), _num(h["output_tokens_per_s"]), _num(h["per_user_tokens_per_s"]["p50"]),
                 _num(h["ttft_ms"]["p50"]), _num(h["tpot_ms"]["p50"], 2), _num(h["e2e_ms"]["p50"]),
                 _ratio(vs.get(str(h["concurrency"])))] for h in result["hf_levels"]]
        text += "\nHF transformers baseline: one static batch of the level's first c requests per level.\n\n"
        text += table(head, rows)
    anchor = result.get("anchor")
    if anchor:
        ratio = result["ratios"].get("tpot_c1_over_latency_bs1_step")
        text += (f"\nAnchor: octavo latency mode, batch 1, prompt {anchor['input_len']}, output "
                 f"{anchor['output_len']}: {anchor['decode_ms_per_step']:.2f} ms/step in process; TPOT p50 at "
                 f"concurrency 1 over it: {_ratio(ratio)}.\n")
    return text


def goals(result: dict) -> list[dict]:
    """The issue's goals, checked only on the run they were set for (a CUDA device, the
    llama-3.1-8b config unchanged)."""
    checks: list[dict] = []
    model = result["model"]
    if (model["name"] != "llama-3.1-8b" or model.get("hf_overrides")
            or result["env"]["device"].get("type") != "cuda"):
        return checks
    if result["kind"] == "throughput":
        tps = result["octavo"]["output_tokens_per_s"]
        checks.append({"name": f"offline output tok/s >= {GOAL_OUTPUT_TPS:,}", "measured": _num(tps),
                       "met": tps >= GOAL_OUTPUT_TPS})
        vs = result["ratios"].get("output_tps_vs_hf")
        if vs is not None:
            checks.append({"name": f"offline output tok/s >= {GOAL_TPS_VS_HF:.0f}x HF transformers",
                           "measured": _ratio(vs), "met": vs >= GOAL_TPS_VS_HF})
    if result["kind"] == "serve":
        checks.append({"name": "no request errors in the sweep", "measured": f"{result['total_errors']} errors",
                       "met": result["total_errors"] == 0})
        ratio = result["ratios"].get("tpot_c1_over_latency_bs1_step")
        if ratio is not None:
            checks.append({"name": f"TPOT at concurrency 1 <= {GOAL_TPOT_C1_OVER_STEP}x latency-mode batch-1 step",
                           "measured": _ratio(ratio), "met": ratio <= GOAL_TPOT_C1_OVER_STEP})
    return checks


# ---- charts ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log2_axis(axis, ticks: list[int], xlabel: str) -> None:
    """An x axis over powers of two (batch sizes, concurrency levels), labelled in plain numbers."""
    import matplotlib.ticker

    axis.set_xscale("log", base=2)
    axis.set_xticks(ticks)
    axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.set_xlabel(xlabel)
    axis.grid(True, alpha=0.3)


def plot(result: dict, stem_path: str) -> list[str]:
    if result["kind"] == "serve":
        return plot_serve([(serve_label(result), result["levels"])]
                          + ([("HF transformers (static batch of c)", result["hf_levels"])]
                             if result.get("hf_levels") else []), stem_path)
    if result["kind"] == "latency" and len(result["rows"]) > 1:
        return [plot_latency(result, stem_path)]
    return []


def serve_label(result: dict) -> str:
    return "octavo" + (f" ({result['tag']})" if result.get("tag") else "")


def plot_serve(configurations: list[tuple[str, list[dict]]], stem_path: str) -> list[str]:
    """The three sweep charts: tokens/s, generation time and TTFT against concurrency."""
    plt = _pyplot()
    charts = [
        ("tps", "tokens/s", [("total output tok/s", lambda s: s["output_tokens_per_s"]),
                             ("per-user tok/s (p50)", lambda s: s["per_user_tokens_per_s"]["p50"])]),
        ("generation-time", "end-to-end latency (s)", [("p50", lambda s: s["e2e_ms"]["p50"] / 1e3),
                                                        ("p90", lambda s: s["e2e_ms"]["p90"] / 1e3)]),
        ("ttft", "TTFT (ms)", [("p50", lambda s: s["ttft_ms"]["p50"]), ("p99", lambda s: s["ttft_ms"]["p99"])]),
    ]
    paths = []
    for name, ylabel, series in charts:
        fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.2), squeeze=False)
        for axis, (what, value) in zip(axes[0], series):
            for label, levels in configurations:
                xs = [s["concurrency"] for s in levels]
                axis.plot(xs, [value(s) for s in levels], marker="o", label=label)
            log2_axis(axis, [s["concurrency"] for s in configurations[0][1]], "concurrency (requests in flight)")
            axis.set_ylabel(ylabel)
            axis.set_title(what)
            axis.legend()
        fig.tight_layout()
        path = f"{stem_path}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_latency(result: dict, stem_path: str) -> str:
    plt = _pyplot()
    rows = result["rows"]
    xs = [row["batch_size"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(xs, [r["octavo"]["decode_ms_per_step"] for r in rows], marker="o", label="octavo")
    right.plot(xs, [r["octavo"]["output_tokens_per_s"] for r in rows], marker="o", label="octavo")
    if any(r.get("hf") for r in rows):
        hf_rows = [r for r in rows if r.get("hf")]
        left.plot([r["batch_size"] for r in hf_rows], [r["hf"]["decode_ms_per_step"] for r in hf_rows], marker="s",
                  label="HF transformers")
        right.plot([r["batch_size"] for r in hf_rows], [r["hf"]["output_tokens_per_s"] for r in hf_rows],
                   marker="s", label="HF transformers")
    if any(r.get("floor") for r in rows):
        left.plot(xs, [r["floor"]["floor_ms"] for r in rows], linestyle="--", label="roofline floor")
    for axis, ylabel in ((left, "ms per decode step"), (right, "output tokens/s")):
        log2_axis(axis, xs, "batch size")
        axis.set_ylabel(ylabel)
        axis.legend()
    fig.suptitle(f"latency: {result['model']['name']}, prompt {result['settings']['input_len']}, "
                 f"output {result['settings']['output_len']}")
    fig.tight_layout()
    path = f"{stem_path}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- several results ---------------------------------------------------------------------------
def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def combined(results: list[dict], out_dir: str | None, stem: str = "serve-comparison") -> tuple[str, list[str]]:
    """Markdown of every result, and (for two or more serve results) the sweep charts with one line
    per result, labelled by its tag or model."""
    text = "\n".join(markdown(r) for r in results)
    serves = [r for r in results if r["kind"] == "serve"]
    paths: list[str] = []
    if out_dir and len(serves) > 1:
        os.makedirs(out_dir, exist_ok=True)
        configurations = [(r.get("tag") or r["model"]["name"], r["levels"]) for r in serves]
        paths = plot_serve(configurations, os.path.join(out_dir, stem))
    return text, paths
