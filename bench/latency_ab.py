"""Paired A/B of `octavo bench latency` runs made in ABBA order on one warm machine (the suite's
fusion-ab phase, or any two engine settings): per batch size, each arm's decode ms/step per run,
the B / A ratio of each A-B pair of neighbouring runs, and their geometric mean with a 90% t
interval (octavo.bench.measure). A ratio below 1 means B's step is shorter.

    python bench/latency_ab.py --a off --b both RESULT.json ...   # tags ARM-ROUND, e.g. off-1 both-2 both-3 off-4

Runs are ordered by their round (the number after the last '-' of the tag); consecutive A and B
runs form a pair (1-2, 3-4, ...), so drift between pairs cancels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from octavo.bench.measure import geometric_mean, t_interval, verdict


def load(paths: list[str]) -> list[dict]:
    runs = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        arm, _, round_text = (doc.get("tag") or "").rpartition("-")
        runs.append({"arm": arm, "round": int(round_text), "path": path,
                     "steps": {row["batch_size"]: row["octavo"]["decode_ms_per_step"] for row in doc["rows"]},
                     "prefill": {row["batch_size"]: row["octavo"]["prefill_ms"] for row in doc["rows"]}})
    return sorted(runs, key=lambda r: r["round"])


def pairs(runs: list[dict], a: str, b: str) -> list[tuple[dict, dict]]:
    """(A run, B run) for each two consecutive runs of the two arms, in round order."""
    found, ordered = [], [r for r in runs if r["arm"] in (a, b)]
    for first, second in zip(ordered[::2], ordered[1::2]):
        if {first["arm"], second["arm"]} != {a, b}:
            raise ValueError(f"rounds {first['round']} and {second['round']} are not one {a} and one {b} run")
        found.append((first, second) if first["arm"] == a else (second, first))
    return found


def compare(runs: list[dict], a: str, b: str, metric: str = "steps") -> list[dict]:
    """Per batch size: both arms' values per pair, the ratios B / A, their mean and interval."""
    matched = pairs(runs, a, b)
    sizes = sorted(set.intersection(*(set(r[metric]) for pair in matched for r in pair)))
    rows = []
    for size in sizes:
        ratios = [rb[metric][size] / ra[metric][size] for ra, rb in matched]
        interval = t_interval(ratios)
        rows.append({"batch_size": size, "a": [ra[metric][size] for ra, _ in matched],
                     "b": [rb[metric][size] for _, rb in matched], "ratios": ratios,
                     "geomean": geometric_mean(ratios), "interval": interval,
                     "verdict": verdict(interval, higher_is_better=False)})
    return rows


def markdown(rows: list[dict], a: str, b: str, what: str) -> str:
    lines = [f"| batch | {a} {what} | {b} {what} | {b} / {a} [90% CI] | verdict |", "|---:|---|---|---:|---|"]
    for row in rows:
        interval = row["interval"]
        span = f" [{interval[0]:.3f}–{interval[1]:.3f}]" if interval else ""
        lines.append(f"| {row['batch_size']} | {' / '.join(f'{v:.3f}' for v in row['a'])} | "
                     f"{' / '.join(f'{v:.3f}' for v in row['b'])} | {row['geomean']:.3f}x{span} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="arm A's tag prefix")
    parser.add_argument("--b", required=True, help="arm B's tag prefix")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    runs = load(args.files)
    for metric, what in (("steps", "ms/step"), ("prefill", "prefill ms")):
        print(markdown(compare(runs, args.a, args.b, metric), args.a, args.b, what))
    return 0


if __name__ == "__main__":
    sys.exit(main())
