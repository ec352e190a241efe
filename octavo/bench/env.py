"""What every result file records: date, exact command, device, library versions, git commit."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = re.compile(r"[0-9a-f]{40}")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _commit_from_files() -> str | None:
    """HEAD read from .git's files, for copies of a checkout whose object store did not travel."""
    git_dir = REPO_ROOT / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        ref = head.removeprefix("ref: ").strip()
        if SHA.fullmatch(head):
            return head
        if (git_dir / ref).is_file():
            head = (git_dir / ref).read_text().strip()
        else:
            head = next((line.split()[0] for line in (git_dir / "packed-refs").read_text().splitlines()
                         if line.split()[1:] == [ref]), head)
    except OSError:
        return None
    return head if SHA.fullmatch(head) else None


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout. OCTAVO_GIT_COMMIT overrides; without a working git
    repository the commit is read from .git's files and dirtiness is unknown."""
    if os.environ.get("OCTAVO_GIT_COMMIT"):
        return os.environ["OCTAVO_GIT_COMMIT"], None
    try:
        found = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=10)
        if found.returncode != 0 or not SHA.fullmatch(found.stdout.strip()):
            return _commit_from_files(), None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10).stdout
        return found.stdout.strip(), bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return _commit_from_files(), None


def device_info(device: str | None = None) -> dict:
    """The accelerator the run used (or the CPU), by name."""
    cpu = {"type": "cpu", "name": platform.processor() or platform.machine()}
    try:
        import torch
    except ImportError:
        return cpu
    if not torch.cuda.is_available() or not (device is None or str(device).startswith(("cuda", "auto"))):
        return {**cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    return {"type": "cuda", "name": props.name, "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda}


def device_slug(info: dict) -> str:
    """Short device name for file names: "NVIDIA H100 80GB HBM3" -> "h100"."""
    if info.get("type") != "cuda":
        return "cpu"
    words = info.get("name", "").replace("-", " ").lower().split()
    return next((w for w in words if w not in ("nvidia", "tesla", "geforce", "rtx") and any(c.isdigit() for c in w)),
                "cuda")


def command_line(args: Any) -> str:
    """The `octavo bench MODE ...` that produced a result: from sys.argv when it holds the mode, else
    (called in process, as the tests do) rebuilt from the parsed flags that differ from their defaults.
    Without parsed flags (a script of bench/): the command line as run."""
    argv = list(sys.argv)
    if args is None:
        return shlex.join(argv)
    mode = getattr(args, "bench_command", None)
    if mode and mode in argv[1:3]:
        return shlex.join(["octavo", "bench"] + argv[argv.index(mode):])
    words = ["octavo", "bench", mode]
    for action in args._bench_parser._actions:  # argparse keeps no public list of a parser's options
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.help == argparse.SUPPRESS or value in (None, action.default):
            continue
        if isinstance(value, bool):  # a store_true flag, or --x / --no-x
            words.append(action.option_strings[0] if value else action.option_strings[-1])
        else:
            flag = next((o for o in reversed(action.option_strings) if o.startswith("--")), action.option_strings[0])
            words += [flag, ",".join(map(str, value)) if isinstance(value, list) else
                      json.dumps(value) if isinstance(value, dict) else str(value)]
    return shlex.join(words)


def environment(device: str | None = None, args: Any = None) -> dict:
    commit, dirty = git_commit()
    now = _dt.datetime.now(_dt.timezone.utc)
    return {"date": now.strftime("%Y-%m-%d"), "time_utc": now.isoformat(timespec="seconds"),
            "command": command_line(args), "cwd": os.getcwd(), "git_commit": commit, "git_dirty": dirty,
            "device": device_info(device), "python": platform.python_version(), "platform": platform.platform(),
            "versions": {name: _version(name)
                         for name in ("octavo", "torch", "triton", "transformers", "httpx", "aiohttp")},
            "knobs": kernel_knobs()}


def kernel_knobs() -> dict:
    """The OCTAVO_* environment switches of the run (kernel paths, traces), so an A/B of one is
    told apart by its result files, not only by their tags."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("OCTAVO_") and k != "OCTAVO_GIT_COMMIT"}


def settings(args: Any, **more: Any) -> dict:
    """Every flag of the run as parsed (the engine's included), then `more`."""
    return {**{k: v for k, v in vars(args).items() if not k.startswith("_") and k != "bench_command"}, **more}
