"""Where a served engine's host time goes: `octavo bench serve --launch` at one concurrency with
the engine thread under cProfile (OCTAVO_ENGINE_PROFILE), without and with a draft model, then
the functions with the most own time per engine step, side by side.

Why a served engine: in a server the event loop streams tokens in the same process, and its
Python shares the GIL with the engine's steps; an in-process loop (bench/spec_overhead.py) does
not show what that costs.

    python bench/served_profile.py --out /tmp/r/served           # the demo pair, concurrency 1
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pstats
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, label: str, speculative: bool) -> dict:
    out = Path(args.out) / label
    out.mkdir(parents=True, exist_ok=True)
    profile = out / "engine.pstats"
    command = [sys.executable, "-m", "octavo.cli", "bench", "serve", "--model", args.target, "--launch",
               "--concurrency", str(args.concurrency), "--input-len", "128", "--output-len", "128",
               "--num-prompts", str(args.num_prompts), "--prompt-text", args.prompt_text, "--out", str(out)]
    if speculative:
        command += ["--speculative-model", args.draft, "--num-speculative-tokens", str(args.k)]
    env = dict(os.environ, OCTAVO_ENGINE_PROFILE=str(profile))
    subprocess.run(command, check=True, env=env, cwd=REPO)
    result = json.loads(Path(sorted(glob.glob(str(out / "*.json")))[-1]).read_text())
    return {"label": label, "profile": profile, "result": result}


def per_step(stats: pstats.Stats) -> tuple[int, dict[str, float]]:
    """(engine steps, own microseconds per step by function). A step is a call of time.sleep: the
    engine thread yields once after every step with outputs. (Python 3.12's cProfile sees every
    thread, so the event loop's work is in the table too.)"""
    own = {f"{Path(f).name}:{line}({name})": tt for (f, line, name), (_, _calls, tt, _ct, _) in stats.stats.items()}
    steps = next((calls for (f, _, name), (_, calls, *_rest) in stats.stats.items()
                  if f == "~" and name == "<built-in method time.sleep>"), 0)
    steps = max(steps, 1)
    return steps, {name: 1e6 * tt / steps for name, tt in own.items()}


def main() -> None:
    from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=str(DEMO_TARGET_DIR))
    parser.add_argument("--draft", default=str(DEMO_DRAFT_DIR))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--prompt-text", help="default: the held-out text of bench/spec_sweep.py")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.prompt_text is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from spec_sweep import write_held_out_text

        args.prompt_text = str(write_held_out_text(Path(args.out)))
    runs = [run(args, "no-spec", False), run(args, "spec", True)]
    (steps_a, a), (steps_b, b) = (per_step(pstats.Stats(str(r["profile"]))) for r in runs)
    lines = [f"no-spec: {steps_a} steps, {sum(a.values()):.0f} us profiled per step",
             f"spec: {steps_b} steps, {sum(b.values()):.0f} us profiled per step",
             "own us per step: spec - no-spec, no-spec, spec, function"]
    rows = sorted(((b.get(n, 0.0) - a.get(n, 0.0), n) for n in set(a) | set(b)), reverse=True)
    lines += [f"{d:8.1f} {a.get(n, 0.0):8.1f} {b.get(n, 0.0):8.1f}  {n}" for d, n in rows[: args.top]]
    text = "\n".join(lines)
    print(text)
    (Path(args.out) / "served-profile.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
