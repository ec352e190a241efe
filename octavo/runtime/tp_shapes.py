"""Whether a model can be split tensor_parallel_size ways: checked from its config alone, before
any worker process starts (EngineArgs.create_config), and the even split every sharded layer
makes. A leaf module: the config imports it, and it imports nothing of the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from octavo.runtime.models.registry import supports_tensor_parallel

if TYPE_CHECKING:
    import torch

    from octavo.runtime.config import ModelConfig


def divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by tensor_parallel_size ({parts}): "
                         f"choose a tensor_parallel_size that divides it")
    return total // parts


def check_tensor_parallel(model_config: "ModelConfig", tp: int, device: "torch.device", what: str = "model") -> None:
    """Refuse a model or device that cannot be split tp ways, naming the fix."""
    if tp == 1:
        return
    if not supports_tensor_parallel(model_config.architecture):
        raise ValueError(f"{model_config.architecture} ({what}) does not support tensor_parallel_size > 1 "
                         f"(the Llama family does): use tensor_parallel_size=1")
    hf = model_config.hf_config
    heads = hf.num_attention_heads
    kv_heads = getattr(hf, "num_key_value_heads", None) or heads
    divide(heads, tp, f"{what}: num_attention_heads")
    if kv_heads >= tp:
        divide(kv_heads, tp, f"{what}: num_key_value_heads")
    elif tp % kv_heads:
        raise ValueError(f"{what}: tensor_parallel_size ({tp}) must be a multiple of num_key_value_heads "
                         f"({kv_heads}) when larger, so each KV head is replicated on whole ranks")
    divide(hf.intermediate_size, tp, f"{what}: intermediate_size")
    import torch

    if device.type == "cuda" and torch.cuda.device_count() < tp:
        raise ValueError(f"tensor_parallel_size={tp} needs {tp} GPUs but {torch.cuda.device_count()} are visible: "
                         "lower it or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
