"""Reference outputs from transformers for the token-exact tests."""

from __future__ import annotations

import torch


_MODELS: dict = {}


def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    key = str(model_dir)
    if key not in _MODELS:
        _MODELS[key] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _MODELS[key]


def hf_greedy(model_dir, prompts_ids: list[list[int]], max_new_tokens: int,
              ignore_eos: bool = False) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (run one at a time: no padding effects),
    stopped at EOS like the engine unless ignore_eos."""
    model = hf_model(model_dir)
    eos = None if ignore_eos else model.config.eos_token_id
    model.generation_config.eos_token_id = eos
    outputs = []
    for ids in prompts_ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=0)
        outputs.append(out[0, len(ids):].tolist())
    return outputs


def hf_logits(model_dir, token_ids: list[int]) -> torch.Tensor:
    model = hf_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()
