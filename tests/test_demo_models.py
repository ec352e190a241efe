"""The embedded demo pair (octavo/runtime/demo): what ships, that it loads, that it writes text,
and that it works as a speculative pair.

The first group needs only transformers. The engine tests skip only while the module they need
does not exist yet (not when it exists and fails to import: that is a failure).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from octavo.runtime.demo import (DEMO_DRAFT_DIR, DEMO_DRAFT_NAME, DEMO_TARGET_DIR, DEMO_TARGET_NAME,
                                 resolve_demo)

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja")
SHIPPED_BYTES_LIMIT = 16 * 1024 * 1024  # both models, so the wheel stays small
PROMPT = "HAMLET.\nTo be, or not to be,"
CHAT = [{"role": "system", "content": "A scene from Hamlet."},
        {"role": "user", "content": "What news from Rome?"}]


def needs(module: str):
    """Skip while `module` is not written yet; import errors of an existing module still fail."""
    try:
        missing = importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # a parent package is missing
        missing = True
    return pytest.mark.skipif(missing, reason=f"{module} does not exist yet")


@pytest.fixture(autouse=True)
def few_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(min(2, saved))
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_TARGET_DIR)


@pytest.fixture(scope="module")
def hf_target():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEMO_TARGET_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_draft():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEMO_DRAFT_DIR, dtype=torch.float32).eval()


def assert_non_trivial(token_ids: list[int], text: str) -> None:
    """Text, not a degenerate loop: several distinct tokens, none dominating, mostly letters."""
    assert len(token_ids) >= 16, f"only {len(token_ids)} tokens: {text!r}"
    counts = Counter(token_ids)
    assert len(counts) >= 8, f"only {len(counts)} distinct tokens: {text!r}"
    assert counts.most_common(1)[0][1] <= len(token_ids) // 3, f"one token dominates: {text!r}"
    letters = sum(c.isalpha() for c in text)
    assert letters >= len(text) // 2, f"mostly not letters: {text!r}"
    assert len(set(text.split())) >= 5, f"fewer than 5 distinct words: {text!r}"


# ---- what ships ---------------------------------------------------------------------------------


def test_resolve_demo_names():
    assert resolve_demo(DEMO_TARGET_NAME) == DEMO_TARGET_DIR
    assert resolve_demo(DEMO_DRAFT_NAME) == DEMO_DRAFT_DIR
    assert resolve_demo("octavo-demo-") is None
    assert resolve_demo("org/octavo-demo") is None
    assert resolve_demo(None) is None


def test_demo_module_imports_nothing_heavy():
    code = ("import sys, octavo.runtime.demo as d; heavy = {'torch', 'transformers', 'tokenizers'} "
            "& set(sys.modules); assert not heavy, heavy; print(d.DEMO_TARGET_DIR)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(DEMO_TARGET_DIR)


@pytest.mark.parametrize("model_dir", [DEMO_TARGET_DIR, DEMO_DRAFT_DIR], ids=["target", "draft"])
def test_model_files_present(model_dir):
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    assert not missing, f"{model_dir} lacks {missing}: run tools/train_demo.py"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["num_key_value_heads"] < config["num_attention_heads"], "the demo exercises GQA"


def test_shipped_size_is_small():
    total = sum(f.stat().st_size for d in (DEMO_TARGET_DIR, DEMO_DRAFT_DIR) for f in d.iterdir() if f.is_file())
    assert total <= SHIPPED_BYTES_LIMIT, f"demo models take {total} bytes"


def test_data_card_and_report_match_the_weights(hf_target, hf_draft):
    demo_dir = DEMO_TARGET_DIR.parent
    assert (demo_dir / "DATA_CARD.md").is_file()
    report = json.loads((demo_dir / "training_report.json").read_text())
    assert report["target"]["parameters"] == sum(p.numel() for p in hf_target.parameters())
    assert report["draft"]["parameters"] == sum(p.numel() for p in hf_draft.parameters())


# ---- transformers only --------------------------------------------------------------------------


def test_both_load_and_draft_is_several_times_smaller(hf_target, hf_draft):
    target_params = sum(p.numel() for p in hf_target.parameters())
    draft_params = sum(p.numel() for p in hf_draft.parameters())
    assert 1_000_000 < target_params < 10_000_000
    assert target_params >= 3 * draft_params
    assert hf_target.config.vocab_size == hf_draft.config.vocab_size


def test_pair_shares_one_tokenizer(tokenizer):
    from transformers import AutoTokenizer

    draft_tokenizer = AutoTokenizer.from_pretrained(DEMO_DRAFT_DIR)
    assert (DEMO_TARGET_DIR / "tokenizer.json").read_bytes() == (DEMO_DRAFT_DIR / "tokenizer.json").read_bytes()
    assert tokenizer.get_vocab() == draft_tokenizer.get_vocab()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tokenizer, name) == getattr(draft_tokenizer, name)
    text = "O Romeo, Romeo! wherefore art thou Romeo?"
    assert tokenizer(text)["input_ids"] == draft_tokenizer(text)["input_ids"]


def test_tokenizer_round_trips_and_special_tokens(tokenizer):
    text = "Friends, Romans, countrymen — lend me your ears; 1599 ünïcödé."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # plain prompts start like training documents
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: nothing is unknown
    assert len(tokenizer) == 4096
    for token in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ("<|bos|><|system|>\nA scene from Hamlet.<|eos|>"
                    "<|user|>\nWhat news from Rome?<|eos|><|assistant|>\n")
    # The template is also in tokenizer_config.json, for readers that do not look for the .jinja.
    config = json.loads((DEMO_TARGET_DIR / "tokenizer_config.json").read_text())
    assert config["chat_template"] == (DEMO_TARGET_DIR / "chat_template.jinja").read_text()
    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_greedy_generation_is_text(hf_target, tokenizer):
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    out = hf_target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=48, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.size(1):].tolist()
    assert_non_trivial(new, tokenizer.decode(new, skip_special_tokens=True))


def test_draft_generation_is_text(hf_draft, tokenizer):
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = hf_draft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                            temperature=0.8, max_new_tokens=48, min_new_tokens=48,
                            pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.size(1):].tolist()
    assert_non_trivial(new, tokenizer.decode(new, skip_special_tokens=True))


def test_chat_reply_ends_with_eos(hf_target, tokenizer):
    """Trained on dialogue in the chat format, the target ends its turn instead of running on."""
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = hf_target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=96, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.size(1):].tolist()
    assert new[-1] == tokenizer.eos_token_id, tokenizer.decode(new)
    assert sum(c.isalpha() for c in tokenizer.decode(new, skip_special_tokens=True)) >= 5


def test_draft_agrees_with_target_often(hf_target, hf_draft, tokenizer):
    """Greedy next-token agreement on a passage: the pair is worth speculating with."""
    passage = ("FIRST CITIZEN.\nBefore we proceed any further, hear me speak.\n\nALL.\nSpeak, speak.\n\n"
               "FIRST CITIZEN.\nYou are all resolved rather to die than to famish?\n")
    ids = tokenizer(passage, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        same = (hf_target(input_ids=ids).logits.argmax(-1) == hf_draft(input_ids=ids).logits.argmax(-1))
    assert same.float().mean().item() >= 0.4


# ---- through the engine -------------------------------------------------------------------------


def greedy_token_ids(llm, prompts: list[str], max_tokens: int) -> list[list[int]]:
    from octavo import SamplingParams

    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                           use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


SPEC_PROMPTS = [PROMPT, "KING.\nWhat news from France?\n\nMESSENGER.\n", "O, she doth teach the torches"]


@pytest.fixture(scope="module")
def engine_target_ids():
    from octavo import LLM

    llm = LLM(model=str(DEMO_TARGET_DIR))
    return greedy_token_ids(llm, SPEC_PROMPTS, 40)


@needs("octavo.runtime.llm")
def test_engine_serves_demo_by_default():
    from octavo import LLM, SamplingParams

    llm = LLM()  # no model: the embedded demo target
    assert llm.llm_engine.config.model_config.model == str(DEMO_TARGET_DIR)
    tokenizer = llm.get_tokenizer()
    out = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True), use_tqdm=False)
    completion = out[0].outputs[0]
    assert_non_trivial(list(completion.token_ids), completion.text)
    assert completion.text == tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)


@needs("octavo.runtime.llm")
def test_engine_matches_transformers_greedy(engine_target_ids, hf_target, tokenizer):
    ids = tokenizer(SPEC_PROMPTS[0], return_tensors="pt")["input_ids"]
    out = hf_target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=40, min_new_tokens=40, pad_token_id=tokenizer.pad_token_id)
    expected = out[0, ids.size(1):].tolist()
    got = engine_target_ids[0]
    # fp16 weights run in fp32 on both sides; allow a late divergence from a near tie only.
    agree = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(expected))
    assert agree >= 24, f"engine and transformers part at token {agree}: {got} vs {expected}"


@needs("octavo.runtime.llm")
@needs("octavo.runtime.spec")
@pytest.mark.parametrize("k", [3, 5])
def test_greedy_spec_equals_target_only(engine_target_ids, k):
    from octavo import LLM

    llm = LLM(model=str(DEMO_TARGET_DIR), speculative_model=str(DEMO_DRAFT_DIR), num_speculative_tokens=k)
    assert greedy_token_ids(llm, SPEC_PROMPTS, 40) == engine_target_ids


@needs("octavo.operator.check_pair")
def test_check_pair_says_compatible():
    result = subprocess.run([sys.executable, "-m", "octavo.cli", "check-pair", "--target", str(DEMO_TARGET_DIR),
                             "--draft", str(DEMO_DRAFT_DIR), "--json"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["compatible"] is True
    assert verdict["verdict"] == "compatible"


@needs("octavo.operator.check_pair")
def test_check_pair_accepts_demo_names():
    result = subprocess.run([sys.executable, "-m", "octavo.cli", "check-pair", "--target", DEMO_TARGET_NAME,
                             "--draft", DEMO_DRAFT_NAME, "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
