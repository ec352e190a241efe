"""bench/latency_ab.py: ABBA latency runs paired into ratios with an interval."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "latency_ab.py"
SPEC = importlib.util.spec_from_file_location("latency_ab", PATH)
latency_ab = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(latency_ab)


def write(tmp_path, tag: str, steps: dict) -> str:
    path = tmp_path / f"{tag}.json"
    path.write_text(json.dumps({"tag": tag, "rows": [
        {"batch_size": bs, "octavo": {"decode_ms_per_step": ms, "prefill_ms": 10.0}} for bs, ms in steps.items()]}))
    return str(path)


def test_abba_runs_pair_up_and_a_clear_gain_is_named(tmp_path, capsys):
    files = [write(tmp_path, "off-1", {1: 6.00, 4: 6.30}), write(tmp_path, "both-2", {1: 5.60, 4: 6.31}),
             write(tmp_path, "both-3", {1: 5.62, 4: 6.27}), write(tmp_path, "off-4", {1: 6.02, 4: 6.29})]
    rows = latency_ab.compare(latency_ab.load(files), "off", "both")
    one, four = rows
    assert one["ratios"] == pytest.approx([5.60 / 6.00, 5.62 / 6.02]) and one["verdict"] == "better"
    assert one["interval"][1] < 1.0 and four["verdict"] == "no difference measured"
    assert latency_ab.main(["--a", "off", "--b", "both", *files]) == 0
    assert "| 1 | 6.000 / 6.020 | 5.600 / 5.620 | 0.933x [" in capsys.readouterr().out


def test_runs_that_do_not_alternate_are_refused(tmp_path):
    files = [write(tmp_path, "off-1", {1: 6.0}), write(tmp_path, "off-2", {1: 6.0})]
    with pytest.raises(ValueError, match="not one off and one both run"):
        latency_ab.compare(latency_ab.load(files), "off", "both")
