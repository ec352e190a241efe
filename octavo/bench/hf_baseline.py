"""The anchor: HF transformers `generate` on the same model shape and requests, run as a user
would: random weights of the same dtype, sdpa attention, greedy, fixed output length
(min_new_tokens = max_new_tokens), static batches left-padded to their longest prompt, each
generating as many tokens as its longest request needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from octavo.bench.measure import DeviceClock, progress
from octavo.bench.workload import BenchRequest, batches

logger = logging.getLogger("octavo")


@dataclass
class GenerateTiming:
    prefill_ms: float  # from the call to the first generated token (prefill + first sample)
    step_ms: list[float]  # each later token
    total_ms: float


class HFModel:
    """An HF transformers model of the given config with random weights."""

    def __init__(self, model_dir: str, dtype: Any, device: Any, seed: int = 0) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device = torch.device(device)
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        torch.manual_seed(seed)
        with torch.device(self.device):
            try:
                self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
            except ValueError:  # e.g. BLOOM: transformers has no sdpa path for it
                logger.info("HF baseline: %s has no sdpa attention in transformers; using eager", config.model_type)
                self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
        self.model.eval()
        self.pad_token_id = config.pad_token_id if isinstance(getattr(config, "pad_token_id", None), int) else 0
        self.clock = DeviceClock(self.device)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> GenerateTiming:
        """One static batch: left-padded prompts, exactly new_tokens tokens each, greedy."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        clock = self.clock
        stamps: list[float] = []

        class StepClock(StoppingCriteria):
            # Called once per generated token; never stops (min_new_tokens pins the length).
            def __call__(self, input_ids, scores, **kwargs):
                stamps.append(clock.now())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt):] = 1
        start = clock.now()
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device),
                                      attention_mask=attention_mask.to(self.device), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.pad_token_id, use_cache=True,
                                      stopping_criteria=StoppingCriteriaList([StepClock()]))
        end = clock.now()
        if out.shape[1] - width != new_tokens:
            raise RuntimeError(f"HF generate produced {out.shape[1] - width} tokens, expected {new_tokens}")
        return GenerateTiming(prefill_ms=((stamps[0] if stamps else end) - start) * 1e3,
                              step_ms=[(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])],
                              total_ms=(end - start) * 1e3)


def latency(model: HFModel, batch: list[BenchRequest], num_iters: int) -> list[GenerateTiming]:
    """Time `num_iters` runs of one static batch (after a two-token warm-up of the same shape)."""
    prompts = [r.prompt_token_ids for r in batch]
    model.generate(prompts, 2)
    return [model.generate(prompts, max(r.output_len for r in batch)) for _ in range(num_iters)]


def throughput(model: HFModel, requests: list[BenchRequest], batch_size: int) -> dict:
    """Run `requests` in consecutive static batches; only the tokens each request asked for count as
    output (what a padded batch generates beyond that is waste, reported separately)."""
    groups = batches(requests, batch_size)
    model.generate([r.prompt_token_ids for r in groups[0]], 2)  # warm-up
    records = []
    total_ms = 0.0
    bar = progress(len(requests), "HF generate (static batches)", unit="req")
    try:
        for index, group in enumerate(groups):
            new_tokens = max(r.output_len for r in group)
            timing = model.generate([r.prompt_token_ids for r in group], new_tokens)
            records += [{"batch": index, "prompt_len": r.prompt_len, "output_len": r.output_len,
                         "generated_tokens": new_tokens, "batch_size": len(group),
                         "batch_prefill_ms": timing.prefill_ms, "batch_ms": timing.total_ms,
                         "e2e_ms": timing.total_ms, "ttft_ms": timing.prefill_ms}
                        for r in group]
            total_ms += timing.total_ms
            bar.update(len(group))
    finally:
        bar.close()
    prompt_tokens = sum(r.prompt_len for r in requests)
    output_tokens = sum(r.output_len for r in requests)
    elapsed = total_ms / 1e3
    return {"num_requests": len(requests), "batch_size": batch_size, "num_batches": len(groups), "elapsed_s": elapsed,
            "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "generated_tokens_incl_padding": sum(rec["generated_tokens"] for rec in records),
            "requests_per_s": len(requests) / elapsed, "output_tokens_per_s": output_tokens / elapsed,
            "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed, "records": records}
