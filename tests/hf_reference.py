"""Reference outputs from transformers (fp32) for the token-exact checks: on the CPU by default, on
the device for the CUDA-only tests (which pass a device and, where it matters, an attention
implementation).

One copy on purpose: a reference run with other generation settings than the engine's (say,
`min_new_tokens`, which forbids EOS where the engine under ignore_eos emits it) reports a mismatch
that is not the engine's."""

from __future__ import annotations

import torch

_MODELS: dict = {}


def hf_model(model_dir, device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """The checkpoint in transformers, float32, cached per (directory, device, attention)."""
    from transformers import AutoModelForCausalLM

    key = (str(model_dir), str(device), attn_implementation)
    if key not in _MODELS:
        options = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **options)
        _MODELS[key] = model.to(device).eval()
    return _MODELS[key]


def forget_models() -> None:
    """Drop the cached models (a device script frees their memory before the engine runs)."""
    _MODELS.clear()


def hf_greedy(model_dir, prompts_ids: list[list[int]], max_new_tokens: int, ignore_eos: bool = False,
              device: str | torch.device = "cpu", attn_implementation: str | None = None,
              with_margins: bool = False):
    """transformers' greedy continuation of each prompt (run one at a time: no padding effects),
    stopped at EOS like the engine unless ignore_eos, in which case EOS is a token like any other.

    with_margins: also return, per prompt, the top-1/top-2 logit gap at every generated step (how
    close the trajectory comes to a tie)."""
    model = hf_model(model_dir, device, attn_implementation)
    eos = None if ignore_eos else model.config.eos_token_id
    model.generation_config.eos_token_id = eos
    outputs, margins = [], []
    for ids in prompts_ids:
        prompt = torch.tensor([ids], device=device)
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=0,
                                 output_scores=with_margins, return_dict_in_generate=True)
        outputs.append(out.sequences[0, len(ids):].tolist())
        if with_margins:
            top2 = torch.stack(out.scores)[:, 0].float().topk(2, dim=-1).values
            margins.append((top2[:, 0] - top2[:, 1]).tolist())
    return (outputs, margins) if with_margins else outputs


def hf_logits(model_dir, token_ids: list[int]) -> torch.Tensor:
    model = hf_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def hf_prompt_logprobs(model_dir, ids: list[int]) -> torch.Tensor:
    """log p(ids[i + 1] | ids[:i + 1]) for every i, float32."""
    logprobs = torch.log_softmax(hf_logits(model_dir, ids)[:-1], dim=-1)
    return logprobs.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
