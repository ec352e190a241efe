"""Which drafts the engine takes: an incompatible vocabulary is refused at start with the
validator's message; a padded vocabulary (either side) is accepted and changes nothing."""

from __future__ import annotations

import shutil

import pytest

from spec_helpers import pad_vocabulary
from spec_helpers import make_llm, spec_totals, token_ids
from octavo import LLM, SamplingParams

validation = pytest.importorskip("octavo.operator.validation")

PROMPTS = ["Machine learning is", "The quick brown fox jumps over", "def add(a, b):"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


def test_incompatible_pair_is_refused_with_the_validators_message(pair, tiny_vocab_pair):
    target, _ = pair
    other = tiny_vocab_pair[1]  # a 24-token word-level vocabulary
    verdict = validation.check_vocab_compatibility(str(target), str(other))
    assert verdict.verdict == "incompatible"
    with pytest.raises(ValueError) as error:
        LLM(str(target), speculative_model=str(other), num_speculative_tokens=2, dtype="float32", max_model_len=64)
    assert str(error.value) == verdict.message
    assert "choose a draft from the same tokenizer family" in str(error.value)


def test_unreadable_draft_vocabulary_is_refused(pair, tmp_path):
    target, draft = pair
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(draft / name, bare / name)
    with pytest.raises(ValueError, match="cannot check the draft's vocabulary"):
        LLM(str(target), speculative_model=str(bare), num_speculative_tokens=2, dtype="float32")


def test_dict_form_of_the_arguments(pair):
    target, draft = pair
    llm = LLM(str(target), dtype="float32", num_gpu_blocks=64,
              speculative_config={"model": str(draft), "num_speculative_tokens": 2})
    assert llm.llm_engine.config.speculative_config.num_speculative_tokens == 2


@pytest.mark.parametrize("padded_side", ["draft", "target"])
def test_padded_vocabulary_pairs_are_accepted(pair, spec_root, padded_side):
    target, draft = pair
    padded = pad_vocabulary(draft if padded_side == "draft" else target, spec_root / f"padded-{padded_side}", 400)
    verdict = validation.check_vocab_compatibility(str(target), str(padded))
    assert verdict.verdict == "compatible-with-padding"
    new_target, new_draft = (target, padded) if padded_side == "draft" else (padded, draft)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False)
    expected = token_ids(make_llm(new_target).generate(PROMPTS, params, use_tqdm=False))
    llm = make_llm(new_target, new_draft)
    assert token_ids(llm.generate(PROMPTS, params, use_tqdm=False)) == expected
    reference = make_llm(target, draft)
    reference.generate(PROMPTS, params, use_tqdm=False)
    assert spec_totals(llm) == spec_totals(reference)  # padding changes no decision
