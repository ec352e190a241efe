"""Structured outputs in the engine: the bitmask op against references (CPU), the compiler's cache
and errors, and constrained requests through every engine path that could desynchronise a
grammar from its tokens (n > 1, logprobs, stop strings, preemption, asynchronous scheduling,
speculative decoding), with outputs checked against the constraint itself (re, json)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.runtime.sampling_params import GuidedDecodingParams, StructuredOutputsParams
from octavo.runtime.structured.bitmask import apply_token_bitmask, apply_token_bitmask_reference
from tiny_models import PROMPTS

REGEX = r"[a-e]{2,5}-[0-9]{1,3}"
SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 6},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["word", "n"]}


@pytest.mark.parametrize("vocab", [5, 32, 97, 384])
def test_bitmask_matches_the_references(vocab):
    import xgrammar as xgr

    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=generator)
    words = (vocab + 31) // 32
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, words), generator=generator, dtype=torch.int64).to(torch.int32)
    rows = [4, 0, 2]  # constrained rows, in any order; rows 1, 3, 5 stay untouched
    ours, reference, library = logits.clone(), logits.clone(), logits.clone()
    apply_token_bitmask(ours, bitmask, torch.tensor(rows))
    apply_token_bitmask_reference(reference, bitmask, rows)
    full = torch.full((6, words), -1, dtype=torch.int32)
    full[rows] = bitmask
    xgr.apply_token_bitmask_inplace(library, full, indices=rows)
    assert torch.equal(ours, reference) and torch.equal(ours, library)
    assert torch.equal(ours[[1, 3, 5]], logits[[1, 3, 5]])
    assert torch.isinf(ours[rows]).any()  # something was masked: the test can fail


def test_bitmask_with_no_rows_changes_nothing():
    logits = torch.randn(2, 40)
    before = logits.clone()
    apply_token_bitmask(logits, torch.zeros((0, 2), dtype=torch.int32), torch.tensor([], dtype=torch.long))
    assert torch.equal(logits, before)


def test_compiler_caches_by_spec_and_names_errors():
    from tiny_models import build_tokenizer
    from octavo.runtime.structured.compiler import GrammarCompiler, GrammarError

    tokenizer = build_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    try:
        first = compiler.submit(StructuredOutputsParams(json=SCHEMA))
        same = compiler.submit(StructuredOutputsParams(json=json.dumps(SCHEMA)))  # the same schema as text
        assert same is first and first.result(30) is not None
        assert compiler.submit(StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)) is not first
        with pytest.raises(GrammarError, match="invalid regex: .*parenthesis"):
            compiler.submit(StructuredOutputsParams(regex="a(b")).result(30)
        with pytest.raises(GrammarError, match="invalid JSON schema: .*nonsense"):
            compiler.submit(StructuredOutputsParams(json={"type": "nonsense"})).result(30)
        with pytest.raises(GrammarError, match="invalid grammar: .*foo"):
            compiler.submit(StructuredOutputsParams(grammar='root ::= foo')).result(30)
        with pytest.raises(GrammarError, match="whitespace_pattern"):
            compiler.submit(StructuredOutputsParams(json=SCHEMA, whitespace_pattern=r"[ ]?")).result(30)
    finally:
        compiler.shutdown()


def check(spec: StructuredOutputsParams, text: str, finish_reason: str) -> None:
    """The output matches its constraint (whole when it stopped)."""
    if finish_reason != "stop":
        return
    if spec.regex is not None:
        assert re.fullmatch(spec.regex, text), text
    elif spec.choice is not None:
        assert text in spec.choice
    elif spec.json is not None:
        value = json.loads(text)
        assert set(value) == {"word", "n"} and 0 <= value["n"] <= 99 and len(value["word"]) <= 6, value


SPECS = [StructuredOutputsParams(regex=REGEX), StructuredOutputsParams(choice=["alpha", "beta gamma", "d\"e"]),
         StructuredOutputsParams(json=SCHEMA)]


def constrained_params():
    """Greedy, sampled, n > 1, logprobs and stop strings, each under a grammar, and plain rows."""
    params = []
    for i, spec in enumerate(SPECS):
        params += [SamplingParams(temperature=0.0, max_tokens=80, structured_outputs=spec),
                   SamplingParams(temperature=1.0, seed=i, n=3, max_tokens=80, logprobs=2, guided_decoding=spec),
                   SamplingParams(temperature=0.9, seed=7 + i, max_tokens=80, stop=["zz"], structured_outputs=spec)]
    params.append(SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    return params


def run(model_dir, prompts_params, **settings):
    llm = LLM(model=str(model_dir), dtype="float32", **settings)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(prompts_params))]
    outputs = llm.generate(prompts, prompts_params, use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests() and not llm.llm_engine.constrained
    return llm, outputs


def summary(outputs):
    return [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outputs]


def test_constrained_outputs_match_their_constraint(llama_dir):
    params = constrained_params()
    _, outputs = run(llama_dir, params, num_gpu_blocks=256)
    finished = 0
    for p, output in zip(params, outputs):
        assert output.error is None
        for choice in output.outputs:
            if p.structured_outputs is not None:
                check(p.structured_outputs, choice.text, choice.finish_reason)
                finished += choice.finish_reason == "stop"
                if p.logprobs is not None:  # the masked distribution: every chosen token had mass
                    assert all(step[t].logprob > float("-inf") for t, step in zip(choice.token_ids, choice.logprobs))
    assert finished >= 10  # most grammars finish within 80 tokens: the checks above ran


@pytest.mark.parametrize("settings", [
    {"num_gpu_blocks": 14, "enable_prefix_caching": False},  # preemption by recompute
    {"num_gpu_blocks": 256, "async_scheduling": True},
    {"num_gpu_blocks": 14, "async_scheduling": True, "enable_prefix_caching": False},  # both
    {"num_gpu_blocks": 256, "speculative_config": {"method": "ngram", "num_speculative_tokens": 3,
                                                   "adaptive": False}},
])
def test_constrained_outputs_do_not_depend_on_the_engine_path(llama_dir, settings):
    params = constrained_params()
    _, plain = run(llama_dir, params, num_gpu_blocks=256)
    llm, other = run(llama_dir, params, **settings)
    assert summary(other) == summary(plain)
    if settings["num_gpu_blocks"] == 14:
        assert llm.llm_engine.stats.num_preemptions > 0  # the path under test was taken


def test_a_grammar_that_cannot_finish_ends_with_length(llama_dir):
    _, [out] = run(llama_dir, [SamplingParams(max_tokens=3, structured_outputs=StructuredOutputsParams(json=SCHEMA))],
                   num_gpu_blocks=256)
    assert out.outputs[0].finish_reason == "length" and len(out.outputs[0].token_ids) == 3


def test_a_grammar_that_fails_to_compile_fails_its_request_alone(llama_dir):
    params = [SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(regex="a(")),
              SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)]
    _, [bad, good] = run(llama_dir, params, num_gpu_blocks=256)
    assert "invalid regex" in bad.error
    assert good.error is None and len(good.outputs[0].token_ids) == 5


def test_guided_decoding_alias_and_ignore_eos_stop_when_the_grammar_ends(llama_dir):
    spec = GuidedDecodingParams(choice=["yes", "no"])
    _, [out] = run(llama_dir, [SamplingParams(max_tokens=30, ignore_eos=True, guided_decoding=spec)],
                   num_gpu_blocks=256)
    choice = out.outputs[0]
    assert choice.text in ("yes", "no") and choice.finish_reason == "stop"


def test_min_tokens_does_not_hold_back_a_finished_grammar(llama_dir):
    spec = StructuredOutputsParams(choice=["yes", "no"])
    _, [out] = run(llama_dir, [SamplingParams(max_tokens=30, min_tokens=10, structured_outputs=spec)],
                   num_gpu_blocks=256)
    assert out.error is None and out.outputs[0].text in ("yes", "no") and out.outputs[0].finish_reason == "stop"
