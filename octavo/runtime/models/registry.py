"""Architecture name (config.json "architectures") -> model class. A plain dict: the one place
that says what octavo can serve."""

from __future__ import annotations

import importlib

_MODELS: dict[str, tuple[str, str]] = {
    "BloomForCausalLM": ("octavo.runtime.models.bloom", "BloomForCausalLM"),
    "GPT2LMHeadModel": ("octavo.runtime.models.gpt2", "GPT2LMHeadModel"),
    "LlamaForCausalLM": ("octavo.runtime.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("octavo.runtime.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("octavo.runtime.models.llama", "LlamaForCausalLM"),
}


# Architectures whose model class shards its layers (supports_tensor_parallel): known without
# importing the models, so the config checks a split before anything heavy loads.
TENSOR_PARALLEL = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


def supports_tensor_parallel(architecture: str) -> bool:
    return architecture in TENSOR_PARALLEL


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def model_class(architecture: str):
    if architecture not in _MODELS:
        raise ValueError(f"architecture {architecture or '(none in config.json)'!r} is not supported; "
                         f"supported: {', '.join(supported_architectures())}")
    module_name, class_name = _MODELS[architecture]
    return getattr(importlib.import_module(module_name), class_name)
