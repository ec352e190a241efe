"""Vocabulary compatibility verdicts on tokenizers trained in the test (nothing downloads)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from octavo.operator import check_pair
from octavo.operator.validation import (PairVerdict, VocabInfo, VocabReadError,
                                        check_vocab_compatibility, compare_vocabularies,
                                        read_vocab_info)

pytestmark = pytest.mark.timeout(120)


def info(vocab, vocab_size=None, **special) -> VocabInfo:
    return VocabInfo(path="x", vocab_size=vocab_size, vocab=vocab, special_tokens=special)


# --- the pure comparison ----------------------------------------------------------------------


def test_identical_vocabularies_are_compatible():
    vocab = {"a": 0, "b": 1, "<s>": 2}
    verdict = compare_vocabularies(info(vocab, 3, bos="<s>"), info(dict(vocab), 3, bos="<s>"))
    assert verdict.verdict == "compatible" and verdict.compatible and verdict.reason is None
    assert verdict.differences == ()


def test_larger_draft_embedding_is_padding():
    vocab = {"a": 0, "b": 1}
    verdict = compare_vocabularies(info(vocab, 2), info(vocab, 64))
    assert verdict.verdict == "compatible-with-padding" and verdict.compatible
    assert "padding" in verdict.message


def test_size_mismatch_message_names_sizes_and_fix():
    target = {f"t{i}": i for i in range(128)}
    draft = {f"t{i}": i for i in range(32)}
    verdict = compare_vocabularies(info(target, 128), info(draft, 32))
    assert verdict.verdict == "incompatible" and verdict.reason == "VocabularyMismatch"
    assert verdict.message.startswith("draft vocabulary (32 tokens) differs from target (128): "
                                      "choose a draft from the same tokenizer family")
    assert verdict.differences[0] == "id 32 't32' is in the target only"


def test_same_size_but_shuffled_ids_name_the_first_moved_token():
    verdict = compare_vocabularies(info({"a": 0, "b": 1, "c": 2}), info({"a": 0, "b": 2, "c": 1}))
    assert verdict.verdict == "incompatible"
    assert "maps 2 of 3 tokens differently" in verdict.message
    assert verdict.differences[0] == "token 'b' is id 1 in the target but 2 in the draft"


def test_embedding_smaller_than_tokenizer_is_incompatible():
    vocab = {"a": 0, "b": 1, "c": 2}
    verdict = compare_vocabularies(info(vocab, 3), info(vocab, 2))
    assert verdict.verdict == "incompatible"
    assert "draft's embedding has 2 rows" in verdict.message
    assert verdict.differences == ("id 2 'c' has no embedding row in the draft",)


def test_verdict_json_round_trip_is_the_operator_contract():
    verdict = compare_vocabularies(info({"a": 0}, 1), info({"b": 0}, 1))
    doc = verdict.to_json()
    assert set(doc) >= {"verdict", "compatible", "reason", "message", "target", "draft",
                        "differences"}
    assert doc["target"] == {"path": "x", "vocab_size": 1, "tokenizer_size": 1}
    assert PairVerdict.from_json(json.loads(json.dumps(doc))) == verdict
    with pytest.raises(ValueError):
        PairVerdict.from_json({"verdict": "maybe"})


# --- real tokenizer files -----------------------------------------------------------------------


def test_read_vocab_info_from_saved_tokenizer(vocab_models):
    target = read_vocab_info(str(vocab_models["target"]))
    assert target.vocab_size == target.tokenizer_size == len(target.vocab)
    assert target.special_tokens["bos"] == "<|begin_of_text|>"
    assert target.special_tokens["eos"] == "<|end_of_text|>"
    assert target.vocab["<|begin_of_text|>"] == 0  # special tokens come first when training
    assert "<|eot_id|>" in target.added_tokens


@pytest.mark.parametrize("draft, verdict", [
    ("draft-same", "compatible"),
    ("draft-padded", "compatible-with-padding"),
    ("draft-eos", "compatible"),
    ("draft-other-family", "incompatible"),
    ("draft-other-specials", "incompatible"),
    ("draft-short-embedding", "incompatible"),
])
def test_pairs(vocab_models, draft, verdict):
    result = check_vocab_compatibility(str(vocab_models["target"]), str(vocab_models[draft]))
    assert result.verdict == verdict, result.message
    assert result.target["path"] == str(vocab_models["target"])


def test_other_family_names_sizes_and_missing_specials(vocab_models):
    target = read_vocab_info(str(vocab_models["target"]))
    draft = read_vocab_info(str(vocab_models["draft-other-family"]))
    verdict = compare_vocabularies(target, draft)
    assert verdict.message.startswith(
        f"draft vocabulary ({len(draft.vocab)} tokens) differs from target "
        f"({len(target.vocab)}): choose a draft from the same tokenizer family")
    assert "lacks the target's special tokens: bos '<|begin_of_text|>'" in verdict.message
    assert verdict.differences  # the first differing tokens, named


def test_other_special_tokens_shift_every_id(vocab_models):
    verdict = check_vocab_compatibility(str(vocab_models["target"]),
                                        str(vocab_models["draft-other-specials"]))
    assert verdict.verdict == "incompatible"
    assert "'<|begin_of_text|>'" in verdict.message  # the missing special token is named
    assert any("<|end_of_text|>" in d or "'<s>'" in d for d in verdict.differences)


def test_eos_role_difference_is_a_warning_not_a_block(vocab_models):
    verdict = check_vocab_compatibility(str(vocab_models["target"]), str(vocab_models["draft-eos"]))
    assert verdict.compatible
    assert verdict.warnings == ("eos token differs: target '<|end_of_text|>', draft '<|eot_id|>' "
                                "(the target's is the one that counts)",)


def test_unreadable_models_raise_with_a_fix(vocab_models, tmp_path):
    with pytest.raises(VocabReadError, match="has no tokenizer"):
        check_vocab_compatibility(str(vocab_models["target"]), str(vocab_models["broken"]))
    with pytest.raises(VocabReadError, match="no config.json"):
        read_vocab_info(str(tmp_path))
    with pytest.raises(VocabReadError, match="not a model directory"):
        check_vocab_compatibility(str(vocab_models["target"]), str(tmp_path / "missing"))


def test_hub_ids_resolve_to_config_and_tokenizer_files_only(vocab_models, monkeypatch):
    """The hub path cannot run here (no hub access): check what it asks for."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append((repo_id, revision, cache_dir, allow_patterns))
        return str(vocab_models["draft-same"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    verdict = check_vocab_compatibility(str(vocab_models["target"]), "org/draft-model",
                                        draft_revision="v1", download_dir="/tmp/cache")
    assert verdict.verdict == "compatible" and verdict.draft["path"] == "org/draft-model"
    (repo, revision, cache, patterns), = calls
    assert (repo, revision, cache) == ("org/draft-model", "v1", "/tmp/cache")
    assert "tokenizer.json" in patterns and not any("safetensors" in p or ".bin" in p
                                                    for p in patterns)


def test_validation_module_imports_neither_torch_nor_transformers():
    code = ("import sys, octavo.operator.validation, octavo.operator.main; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60)
    assert out.stdout.strip() == "[]"


# --- the `octavo check-pair` command --------------------------------------------------------------


def run_cli(argv):
    import argparse
    import contextlib
    import io

    parser = argparse.ArgumentParser()
    check_pair.add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = check_pair.run(parser.parse_args(argv))
    return code, out.getvalue()


@pytest.mark.parametrize("draft, code, verdict, reason", [
    ("draft-same", 0, "compatible", None),
    ("draft-padded", 0, "compatible-with-padding", None),
    ("draft-other-family", 1, "incompatible", "VocabularyMismatch"),
    ("broken", 2, "error", "ValidationFailed"),
])
def test_cli_exit_codes_and_json(vocab_models, tmp_path, draft, code, verdict, reason):
    log = tmp_path / "termination-log"
    exit_code, out = run_cli(["--target", str(vocab_models["target"]), "--draft",
                              str(vocab_models[draft]), "--json", "--termination-log", str(log)])
    assert exit_code == code
    doc = json.loads(out)
    assert (doc["verdict"], doc["reason"], doc["compatible"]) == (verdict, reason, code == 0)
    assert doc["draft"]["path"] == str(vocab_models[draft])
    assert json.loads(log.read_text()) == doc  # small enough to be written whole


def test_cli_human_output(vocab_models):
    code, out = run_cli(["--target", str(vocab_models["target"]),
                         "--draft", str(vocab_models["draft-other-family"])])
    assert code == 1 and out.startswith("incompatible: draft vocabulary (")


def test_termination_message_fits_kubernetes_limit():
    doc = {"verdict": "incompatible", "compatible": False, "reason": "VocabularyMismatch",
           "message": "m" * 6000, "target": {"path": "t"}, "draft": {"path": "d"},
           "differences": [f"token {i} " * 20 for i in range(200)], "warnings": ["w" * 100]}
    text = check_pair.fit_termination_message(doc)
    assert len(text.encode()) <= 4096
    parsed = json.loads(text)
    assert parsed["verdict"] == "incompatible" and parsed["reason"] == "VocabularyMismatch"


def test_demo_names_resolve_to_the_packaged_models(vocab_models, monkeypatch):
    """`octavo-demo` / `octavo-demo-draft` (examples/demo-speculative.yaml) are directories
    inside the runtime package, found through octavo.runtime.demo."""
    from octavo.runtime import demo

    monkeypatch.setitem(demo.DEMO_MODELS, demo.DEMO_TARGET_NAME, vocab_models["target"])
    monkeypatch.setitem(demo.DEMO_MODELS, demo.DEMO_DRAFT_NAME, vocab_models["draft-padded"])
    verdict = check_vocab_compatibility("octavo-demo", "octavo-demo-draft")
    assert verdict.verdict == "compatible-with-padding"
    assert (verdict.target["path"], verdict.draft["path"]) == ("octavo-demo", "octavo-demo-draft")
