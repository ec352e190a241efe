"""`octavo fetch-model`: fetch hf:// model sources into a directory (the model cache claim).

    octavo fetch-model --source hf://org/name[@rev] --dest DIR [--source ... --dest ...]
                       [--result PATH]

The operator's download Job runs it once per cache; every replica then mounts the claim
read-only. huggingface_hub's snapshot_download does the work (resumable, revision-pinned; with
HF_HUB_OFFLINE=1 it only checks that the files are already there). The token comes from
$HF_TOKEN (the Job reads it from spec.model.hubTokenSecretRef). A JSON result ({"phase",
"files", "bytes", "models": [...], "message"}) goes to --result, which the Job points at its
termination log: the operator reads it from the pod's termination message.

Exit 0: everything fetched; 1: a fetch failed (the result says why); 2: usage.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from octavo.operator import model_source as ms

# Kubernetes keeps at most 4096 bytes of a termination message.
MAX_RESULT_BYTES = 4000
# A complete snapshot directory carries this marker, written last: a restarted Job (or a pod
# that finds the cache already filled) skips what is there.
DONE_MARKER = ".octavo-fetched.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", required=True, metavar="hf://ORG/NAME[@REV]",
                        help="a hub source to fetch (repeatable, paired with --dest)")
    parser.add_argument("--dest", action="append", required=True, metavar="DIR",
                        help="where that source's files go (repeatable)")
    parser.add_argument("--result", metavar="PATH", default=None,
                        help="write the JSON result here too (the Job: /dev/termination-log)")


def directory_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under path, not counting the hub's own bookkeeping (.cache)."""
    files = size = 0
    for item in path.rglob("*"):
        if item.is_file() and ".cache" not in item.relative_to(path).parts:
            files += 1
            size += item.stat().st_size
    return files, size


def fetch_one(source: ms.ModelSource, dest: Path, download: Any = None) -> dict[str, Any]:
    """Fetch one hub source into dest (skipped when its marker says it is complete)."""
    marker = dest / DONE_MARKER
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("model") == source.location and done.get("revision") == source.revision:
            return {**done, "cached": True}
    if download is None:
        from huggingface_hub import snapshot_download as download
    dest.mkdir(parents=True, exist_ok=True)
    download(repo_id=source.location, revision=source.revision, local_dir=str(dest),
             token=os.environ.get("HF_TOKEN") or None)
    files, size = directory_size(dest)
    record = {"model": source.location, "revision": source.revision, "files": files,
              "bytes": size}
    marker.write_text(json.dumps(record))
    return record


def fetch(pairs: list[tuple[str, str]], download: Any = None) -> dict[str, Any]:
    """Fetch every (source, dest) pair; the result document (phase Succeeded or Failed)."""
    models: list[dict[str, Any]] = []
    for text, dest in pairs:
        try:
            source = ms.parse(text)
            if source.kind != ms.HF:
                raise ms.SourceError(f"{text!r} is not an hf:// source: only hub models are "
                                     "fetched; pvc:// and oci:// are mounted as they are")
            models.append(fetch_one(source, Path(dest), download))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the result's message
            message = f"{text}: {type(exc).__name__}: {exc}"
            return {"phase": "Failed", "message": message[:1500], "models": models,
                    **_totals(models)}
    return {"phase": "Succeeded", "message": f"{len(models)} model(s) in the cache",
            "models": models, **_totals(models)}


def _totals(models: list[dict[str, Any]]) -> dict[str, int]:
    return {"files": sum(int(m.get("files", 0)) for m in models),
            "bytes": sum(int(m.get("bytes", 0)) for m in models)}


def encode_result(document: dict[str, Any]) -> str:
    """The result as JSON within a termination message's size (per-model details go first)."""
    text = json.dumps(document)
    if len(text.encode()) > MAX_RESULT_BYTES:
        text = json.dumps({k: v for k, v in document.items() if k != "models"})
    return text[:MAX_RESULT_BYTES]


def run(args: argparse.Namespace) -> int:
    if len(args.source) != len(args.dest):
        print(f"octavo fetch-model: {len(args.source)} --source but {len(args.dest)} --dest: "
              "give one --dest per --source")
        return 2
    document = fetch(list(zip(args.source, args.dest, strict=True)))
    text = encode_result(document)
    print(text)
    if args.result:
        Path(args.result).write_text(text)
    return 0 if document["phase"] == "Succeeded" else 1
