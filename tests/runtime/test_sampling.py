"""Sampling through the engine: seeds, n > 1, stop conditions, logprobs, penalties."""

from __future__ import annotations

import pytest
import torch

from hf_reference import hf_logits
from octavo import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks=256, seed=0)


def texts(outputs):
    return [c.token_ids for o in outputs for c in o.outputs]


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=1234)
    alone = llm.generate("Machine learning is", params, use_tqdm=False)
    again = llm.generate("Machine learning is", params, use_tqdm=False)
    others = SamplingParams(temperature=1.0, max_tokens=16)
    mixed = llm.generate(["Paged attention", "Machine learning is", "Kubernetes"], [others, params, others],
                         use_tqdm=False)
    assert texts(alone) == texts(again) == [mixed[1].outputs[0].token_ids]
    different = llm.generate("Machine learning is", SamplingParams(temperature=1.0, max_tokens=16, seed=99),
                             use_tqdm=False)
    assert texts(different) != texts(alone)


def test_n_samples_share_the_prompt_blocks(llama_dir):
    llm = LLM(model=str(llama_dir), dtype="float32", num_gpu_blocks=256, enable_prefix_caching=False)
    prompt = "Paged attention stores keys and values in fixed-size blocks, like virtual memory pages."
    out = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=7), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert all(len(c.token_ids) > 0 for c in out.outputs)
    kv = llm.llm_engine.kv_cache
    block = kv.block_size
    prompt_len = len(out.prompt_token_ids)
    assert kv.prefix_hits == 2 * ((prompt_len - 1) // block) * block  # the two siblings reused the prompt


def test_stop_string_ends_the_text_before_it(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    full = llm.generate("Machine learning is", greedy, use_tqdm=False)[0].outputs[0].text
    stop = full[10:13]
    assert stop and full.find(stop) == 10
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop])
    out = llm.generate("Machine learning is", params, use_tqdm=False)[0].outputs[0]
    assert out.text == full[:10]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    kept = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop], include_stop_str_in_output=True)
    assert llm.generate("Machine learning is", kept, use_tqdm=False)[0].outputs[0].text == full[:13]


def test_stop_token_ids_min_tokens_and_max_tokens(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    tokens = llm.generate("Kubernetes operators", greedy, use_tqdm=False)[0].outputs[0].token_ids
    stop_id = tokens[4]
    first = tokens.index(stop_id)
    out = llm.generate("Kubernetes operators", SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                                               stop_token_ids=[stop_id]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == tokens[: first + 1] and out.finish_reason == "stop" and out.stop_reason == stop_id
    length = llm.generate("Kubernetes operators", greedy, use_tqdm=False)[0].outputs[0]
    assert len(length.token_ids) == 12 and length.finish_reason == "length"


def test_min_tokens_masks_end_of_sequence(llm):
    eos = llm.get_tokenizer().eos_token_id
    params = SamplingParams(temperature=1.0, max_tokens=8, min_tokens=8, seed=3, stop_token_ids=[eos])
    for seed in range(5):
        params.seed = seed
        out = llm.generate("Paged", params, use_tqdm=False)[0].outputs[0]
        assert len(out.token_ids) == 8 and eos not in out.token_ids


def test_logprobs_match_transformers(llm, llama_dir):
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    out = llm.generate("Machine learning is", params, use_tqdm=False)[0]
    completion = out.outputs[0]
    full = out.prompt_token_ids + completion.token_ids
    reference = torch.log_softmax(hf_logits(llama_dir, full), dim=-1)
    prompt_len = len(out.prompt_token_ids)
    for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
        row = reference[prompt_len - 1 + i]
        assert entry[token].logprob == pytest.approx(row[token].item(), abs=1e-4)
        assert entry[token].rank == 1  # greedy picks the best
        top = torch.topk(row, 5)
        for token_id, value in zip(top.indices.tolist(), top.values.tolist()):
            assert entry[token_id].logprob == pytest.approx(value, abs=1e-4)
    assert completion.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs)), abs=1e-4)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == prompt_len
    for position in range(1, prompt_len):
        token = out.prompt_token_ids[position]
        expected = reference[position - 1, token].item()
        assert out.prompt_logprobs[position][token].logprob == pytest.approx(expected, abs=1e-4)


def test_penalties_change_greedy_choices(llm):
    base = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = llm.generate("the the the", base, use_tqdm=False)[0].outputs[0].token_ids
    penalised = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, repetition_penalty=2.0,
                               frequency_penalty=2.0)
    out = llm.generate("the the the", penalised, use_tqdm=False)[0].outputs[0].token_ids
    assert out != plain
    assert max(out.count(t) for t in set(out)) <= max(plain.count(t) for t in set(plain))


@pytest.mark.parametrize("field,value,needle", [
    ("temperature", -1.0, "temperature"), ("top_p", 0.0, "top_p"), ("top_k", -5, "top_k"),
    ("n", 0, "n must"), ("max_tokens", 0, "max_tokens"), ("min_p", 1.5, "min_p"),
    ("logprobs", 50, "logprobs"), ("presence_penalty", 3.0, "presence_penalty"),
])
def test_invalid_sampling_params_name_the_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**{field: value})


def test_too_long_prompt_fails_alone(llm):
    long_prompt = {"prompt_token_ids": [5] * 600}  # max_model_len is 512
    outputs = llm.generate([long_prompt, "Machine learning is"], SamplingParams(max_tokens=4), use_tqdm=False)
    assert outputs[0].error and "max_model_len" in outputs[0].error
    assert outputs[1].error is None and len(outputs[1].outputs[0].token_ids) == 4


def test_unknown_architecture_names_the_supported_ones(tmp_path, llama_dir):
    import json

    config = json.loads((llama_dir / "config.json").read_text())
    config["architectures"] = ["MysteryForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        LLM(model=str(tmp_path), load_format="dummy", num_gpu_blocks=8)


def test_vllm_example_runs_unchanged(llama_dir):
    from octavo import LLM, SamplingParams

    llm = LLM(model=str(llama_dir))
    sampling_params = SamplingParams(temperature=0.8, top_p=0.90, max_tokens=50)
    answer = llm.generate("Machine Learning is", sampling_params)
    assert isinstance(answer[0].outputs[0].text, str)
    assert 1 <= len(answer[0].outputs[0].token_ids) <= 50


def test_chat_uses_the_template(llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)[0]
    tokenizer = llm.get_tokenizer()
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False).endswith(expected)
    assert 1 <= len(out.outputs[0].token_ids) <= 5
