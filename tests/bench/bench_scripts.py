"""The bench/ scripts as the tests use them: loaded as modules, or run end to end in smoke mode."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_bench_script(name: str):
    """bench/<name>.py as a module (registered in sys.modules: dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_smoke(name: str, out: Path, *args: str, timeout: float) -> tuple[Path, dict]:
    """`python bench/<name>.py --smoke ARGS --out OUT --tag test` must succeed: its result file and
    what it holds."""
    command = [sys.executable, str(REPO / "bench" / f"{name}.py"), "--smoke", *args, "--out", str(out),
               "--tag", "test"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models on shared cores: one thread each is fastest
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    (result,) = out.glob(f"*-{name.replace('_', '-')}-*-test.json")
    return result, json.loads(result.read_text())
