"""`octavo check-pair`: is a draft model's vocabulary the target's?

    octavo check-pair --target T --draft D [--json] [--termination-log PATH]

Exit status: 0 compatible (also with padding), 1 incompatible, 2 error (a model could not be
read). The operator's validation Job runs it with `--termination-log /dev/termination-log`, so
the JSON verdict becomes the pod's termination message.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_COMPATIBLE = 0
EXIT_INCOMPATIBLE = 1
EXIT_ERROR = 2
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True,
                        help="target model: local directory, demo name or hub id")
    parser.add_argument("--draft", required=True,
                        help="draft model: local directory, demo name or hub id")
    parser.add_argument("--target-revision", default=None, help="hub revision of the target")
    parser.add_argument("--draft-revision", default=None, help="hub revision of the draft")
    parser.add_argument("--download-dir", default=None,
                        help="hub cache for config and tokenizer files (never weights)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--termination-log", metavar="PATH", default=None,
                        help="also write the JSON verdict here, cut to 4096 bytes (Kubernetes' "
                             "termination message, e.g. /dev/termination-log)")


def fit_termination_message(document: dict[str, Any],
                            limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON no longer than `limit` bytes: drops listed differences and warnings from
    the end, then shortens the message, so the verdict itself always survives."""
    doc = dict(document)
    doc["differences"] = list(doc.get("differences") or [])
    doc["warnings"] = list(doc.get("warnings") or [])

    def encode() -> bytes:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    while len(encode()) > limit and (doc["warnings"] or doc["differences"]):
        (doc["warnings"] if doc["warnings"] else doc["differences"]).pop()
    while len(encode()) > limit and len(doc.get("message", "")) > 40:
        doc["message"] = doc["message"][: len(doc["message"]) // 2] + "..."
    return encode().decode("utf-8")


def _human(document: dict[str, Any]) -> str:
    lines = [f"{document['verdict']}: {document['message']}"]
    for side in ("target", "draft"):
        info = document[side]
        lines.append(f"  {side}: {info.get('path')} (vocab_size {info.get('vocab_size')}, "
                     f"tokenizer {info.get('tokenizer_size')} ids)")
    lines += [f"  - {d}" for d in document.get("differences", [])]
    lines += [f"  note: {w}" for w in document.get("warnings", [])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from octavo.operator.validation import PairVerdict, VocabReadError, check_vocab_compatibility

    try:
        verdict = check_vocab_compatibility(args.target, args.draft,
                                            target_revision=args.target_revision,
                                            draft_revision=args.draft_revision,
                                            download_dir=args.download_dir)
    except VocabReadError as exc:
        verdict = PairVerdict.error(str(exc), args.target, args.draft)
    document = verdict.to_json()

    if args.termination_log:
        try:
            with open(args.termination_log, "w", encoding="utf-8") as f:
                f.write(fit_termination_message(document))
        except OSError as exc:
            print(f"cannot write the termination log {args.termination_log}: {exc}",
                  file=sys.stderr)
    print(json.dumps(document, indent=2) if args.json else _human(document))
    if verdict.verdict == "error":
        return EXIT_ERROR
    return EXIT_COMPATIBLE if verdict.compatible else EXIT_INCOMPATIBLE
