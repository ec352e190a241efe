"""Can this draft model propose tokens for this target? A vocabulary compatibility verdict.

Speculative decoding hands the draft's token ids to the target for verification, so both must
mean the same thing by every id: the same token -> id mapping, including added and special
tokens. The draft's embedding may be larger than the tokenizer (padding rows nobody samples),
and that is still a usable pair.

Shared by the `octavo check-pair` command (the operator's validation Job) and the engine, which
refuses an incompatible pair at start-up with the same function. This module imports neither
torch nor transformers at import time: the operator image has no torch, and tokenizer loading
is imported only inside the functions that need it.

    verdict = check_vocab_compatibility("meta-llama/Meta-Llama-3.1-70B-Instruct",
                                        "meta-llama/Meta-Llama-3.1-8B-Instruct")
    if not verdict.compatible:
        raise ValueError(verdict.message)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["compatible", "compatible-with-padding", "incompatible", "error"]

REASON_MISMATCH = "VocabularyMismatch"
REASON_FAILED = "ValidationFailed"
SPECIAL_ROLES = ("bos", "eos", "pad", "unk")
FAMILY_FIX = "choose a draft from the same tokenizer family"

# What the comparison needs from a hub repository: never the weights.
TOKENIZER_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json",
    "merges.txt", "*.tiktoken",
]
_MAX_LISTED = 5  # differing tokens named per kind of difference


class VocabReadError(ValueError):
    """A model's config or tokenizer could not be read (missing, unreachable or malformed)."""


@dataclass(frozen=True)
class VocabInfo:
    """What decides whether two models share a vocabulary.

    `vocab_size` is config.json's (the embedding's rows, possibly padded beyond the tokenizer);
    `vocab` is the tokenizer's token -> id mapping, added tokens included.
    """

    path: str
    vocab_size: int | None
    vocab: Mapping[str, int] = field(repr=False)
    special_tokens: Mapping[str, str | None] = field(default_factory=dict)
    added_tokens: Mapping[str, int] = field(default_factory=dict, repr=False)

    @property
    def tokenizer_size(self) -> int:
        """Ids the tokenizer can produce: one past the largest id it maps to."""
        return max(self.vocab.values(), default=-1) + 1

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "vocab_size": self.vocab_size,
                "tokenizer_size": self.tokenizer_size}


@dataclass(frozen=True)
class PairVerdict:
    verdict: Verdict
    message: str
    target: dict[str, Any]
    draft: dict[str, Any]
    differences: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool:
        return self.verdict in ("compatible", "compatible-with-padding")

    @property
    def reason(self) -> str | None:
        if self.verdict == "incompatible":
            return REASON_MISMATCH
        if self.verdict == "error":
            return REASON_FAILED
        return None

    def to_json(self) -> dict[str, Any]:
        """The `octavo check-pair --json` document that the operator parses."""
        return {
            "verdict": self.verdict,
            "compatible": self.compatible,
            "reason": self.reason,
            "message": self.message,
            "target": dict(self.target),
            "draft": dict(self.draft),
            "differences": list(self.differences),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PairVerdict:
        verdict = data.get("verdict")
        if verdict not in ("compatible", "compatible-with-padding", "incompatible", "error"):
            raise ValueError(f"not a check-pair verdict: {verdict!r}")
        return cls(
            verdict=verdict,
            message=str(data.get("message", "")),
            target=dict(data.get("target") or {}),
            draft=dict(data.get("draft") or {}),
            differences=tuple(str(d) for d in data.get("differences") or ()),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
        )

    @classmethod
    def error(cls, message: str, target: str, draft: str) -> PairVerdict:
        """The verdict when a model could not be read: no judgement on the pair."""
        return cls(verdict="error", message=message, target={"path": target, "vocab_size": None,
                   "tokenizer_size": None}, draft={"path": draft, "vocab_size": None,
                   "tokenizer_size": None})


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise VocabReadError(f"cannot parse {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _config_vocab_size(config: Mapping[str, Any]) -> int | None:
    for source in (config, config.get("text_config") or {}):
        size = source.get("vocab_size")
        if isinstance(size, int) and size > 0:
            return size
    return None


def _load_vocab(model_dir: str) -> tuple[dict[str, int], dict[str, int]]:
    """(token -> id for every token, added tokens -> id) from the model's tokenizer files."""
    tokenizer_json = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(tokenizer_json):
        # The fast path: the `tokenizers` library reads tokenizer.json in milliseconds, with no
        # transformers import.
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(tokenizer_json)
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise VocabReadError(f"cannot load {tokenizer_json}: {exc}") from exc
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        added = {tok["content"]: int(tok["id"])
                 for tok in _read_json(tokenizer_json).get("added_tokens", [])
                 if isinstance(tok, Mapping) and "content" in tok and "id" in tok}
        return vocab, added
    if not any(os.path.isfile(os.path.join(model_dir, name))
               for name in ("tokenizer.model", "vocab.json", "tokenizer_config.json")):
        raise VocabReadError(f"{model_dir} has no tokenizer (tokenizer.json, tokenizer.model or "
                             "vocab.json): point at a Hugging Face model directory")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds; the message is what matters
        raise VocabReadError(f"cannot load the tokenizer in {model_dir}: "
                             f"{type(exc).__name__}: {exc}") from exc
    vocab = dict(tokenizer.get_vocab())
    added = {str(tok): int(i) for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    return vocab, added


def read_vocab_info(model_dir: str) -> VocabInfo:
    """Read the vocabulary of a local Hugging Face-format model directory."""
    if not os.path.isdir(model_dir):
        raise VocabReadError(f"{model_dir} is not a directory")
    config = _read_json(os.path.join(model_dir, "config.json"))
    if not config:
        raise VocabReadError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    vocab, added = _load_vocab(model_dir)
    if not vocab:
        raise VocabReadError(f"the tokenizer in {model_dir} has an empty vocabulary")

    # Special tokens by role: the tokenizer's own files first, then config.json's ids.
    tok_config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    special_map = _read_json(os.path.join(model_dir, "special_tokens_map.json"))
    by_id = {i: t for t, i in vocab.items()}
    special: dict[str, str | None] = {}
    for role in SPECIAL_ROLES:
        text = (_token_text(tok_config.get(f"{role}_token"))
                or _token_text(special_map.get(f"{role}_token")))
        if text is None:
            token_id = config.get(f"{role}_token_id")
            if isinstance(token_id, list):
                token_id = token_id[0] if token_id else None
            text = by_id.get(token_id) if isinstance(token_id, int) else None
        special[role] = text
    return VocabInfo(path=model_dir, vocab_size=_config_vocab_size(config), vocab=vocab,
                     special_tokens=special, added_tokens=added)


def _quote(token: str) -> str:
    return repr(token) if len(token) <= 40 else repr(token[:37] + "...")


def _token_at(vocab: Mapping[str, int], token_id: int) -> str:
    for tok, i in vocab.items():
        if i == token_id:
            return tok
    return "?"


def compare_vocabularies(target: VocabInfo, draft: VocabInfo) -> PairVerdict:
    """The verdict for a pair whose vocabularies are already read. Pure: no files, no network."""
    t_vocab, d_vocab = target.vocab, draft.vocab
    t_size, d_size = target.tokenizer_size, draft.tokenizer_size
    moved = sorted((t_vocab[tok], tok) for tok in t_vocab.keys() & d_vocab.keys()
                   if t_vocab[tok] != d_vocab[tok])
    only_target = sorted((t_vocab[tok], tok) for tok in t_vocab.keys() - d_vocab.keys())
    only_draft = sorted((d_vocab[tok], tok) for tok in d_vocab.keys() - t_vocab.keys())

    differences: list[str] = []
    for token_id, tok in moved[:_MAX_LISTED]:
        differences.append(f"token {_quote(tok)} is id {token_id} in the target but "
                           f"{d_vocab[tok]} in the draft")
    for token_id, tok in only_target[:_MAX_LISTED]:
        differences.append(f"id {token_id} {_quote(tok)} is in the target only")
    for token_id, tok in only_draft[:_MAX_LISTED]:
        differences.append(f"id {token_id} {_quote(tok)} is in the draft only")

    warnings: list[str] = []
    for role in SPECIAL_ROLES:
        t_tok, d_tok = target.special_tokens.get(role), draft.special_tokens.get(role)
        if t_tok != d_tok and t_tok is not None and d_tok is not None:
            warnings.append(f"{role} token differs: target {_quote(t_tok)}, draft "
                            f"{_quote(d_tok)} (the target's is the one that counts)")

    summary = {"target": target.summary(), "draft": draft.summary()}
    if moved or only_target or only_draft:
        if len(t_vocab) != len(d_vocab):
            message = (f"draft vocabulary ({len(d_vocab)} tokens) differs from target "
                       f"({len(t_vocab)}): {FAMILY_FIX}")
        else:
            count = len(moved) + len(only_target)
            message = (f"draft tokenizer maps {count} of {len(t_vocab)} tokens differently from "
                       f"the target: {FAMILY_FIX}")
        special_diffs = [f"{role} {_quote(target.special_tokens[role] or '')}"
                         for role in SPECIAL_ROLES
                         if target.special_tokens.get(role) is not None
                         and target.special_tokens[role] not in d_vocab]
        if special_diffs:
            message += f" (the draft lacks the target's special tokens: {', '.join(special_diffs)})"
        return PairVerdict("incompatible", f"{message}; first difference: {differences[0]}",
                           differences=tuple(differences), warnings=tuple(warnings), **summary)

    # Same mapping. Each model's embedding must still cover every id the tokenizer produces.
    for side, info in (("target", target), ("draft", draft)):
        if info.vocab_size is not None and info.vocab_size < info.tokenizer_size:
            first_uncovered = min(i for i in t_vocab.values() if i >= info.vocab_size)
            return PairVerdict(
                "incompatible",
                f"the {side}'s embedding has {info.vocab_size} rows (config.json vocab_size) but "
                f"the shared tokenizer produces ids up to {info.tokenizer_size - 1}: pick a "
                f"{side} whose vocab_size covers its tokenizer",
                differences=(f"id {first_uncovered} {_quote(_token_at(t_vocab, first_uncovered))} "
                             f"has no embedding row in the {side}",),
                warnings=tuple(warnings), **summary)
    if target.vocab_size is not None and draft.vocab_size is not None \
            and target.vocab_size != draft.vocab_size:
        return PairVerdict(
            "compatible-with-padding",
            f"same token mapping ({t_size} ids); embedding rows differ (target "
            f"{target.vocab_size}, draft {draft.vocab_size}) only by padding that no token uses",
            warnings=tuple(warnings), **summary)
    return PairVerdict("compatible", f"same token mapping ({t_size} ids) and vocab_size "
                       f"({target.vocab_size if target.vocab_size is not None else d_size})",
                       warnings=tuple(warnings), **summary)


def resolve_model_dir(source: str, revision: str | None = None,
                      download_dir: str | None = None) -> str:
    """A local directory for `source`: an embedded demo model's name, a local directory, or a
    hub id (only its config and tokenizer files are downloaded)."""
    if not source:
        raise VocabReadError("no model given")
    try:
        from octavo.runtime.demo import resolve_demo
    except ImportError:  # an image without the runtime package: no demo models in it
        resolve_demo = None
    demo_dir = resolve_demo(source) if resolve_demo is not None else None
    if demo_dir is not None:
        return str(demo_dir)
    if os.path.isdir(source):
        return os.path.abspath(source)
    if os.path.exists(source) or source.startswith(("/", "./", "../")):
        raise VocabReadError(f"{source} is not a model directory (it should hold config.json "
                             "and the tokenizer files)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=source, revision=revision, cache_dir=download_dir,
                                 allow_patterns=TOKENIZER_FILES)
    except Exception as exc:  # hub errors differ by version and cause; the message matters
        raise VocabReadError(f"cannot read model {source!r}: not a local directory, and the hub "
                             f"lookup failed ({type(exc).__name__}: {exc}); check the name, the "
                             "revision and HF_TOKEN for gated models") from exc


def check_vocab_compatibility(target_dir_or_id: str, draft_dir_or_id: str, *,
                              target_revision: str | None = None,
                              draft_revision: str | None = None,
                              download_dir: str | None = None) -> PairVerdict:
    """Read both models' vocabularies (local directories, demo names or hub ids) and compare
    them. Raises VocabReadError when either model cannot be read."""
    target_dir = resolve_model_dir(target_dir_or_id, target_revision, download_dir)
    draft_dir = resolve_model_dir(draft_dir_or_id, draft_revision, download_dir)
    verdict = compare_vocabularies(read_vocab_info(target_dir), read_vocab_info(draft_dir))
    # Report the names the caller gave, not cache paths.
    return PairVerdict(verdict.verdict, verdict.message,
                       target={**verdict.target, "path": target_dir_or_id},
                       draft={**verdict.draft, "path": draft_dir_or_id},
                       differences=verdict.differences, warnings=verdict.warnings)
