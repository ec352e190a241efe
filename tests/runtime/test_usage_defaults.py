"""Defaults by usage (#21): the offline LLM class widens its batch on a large GPU only, and never
over what the caller set; the server and smaller devices keep the engine's batch defaults, and the
server runs its engine core apart unless told otherwise."""

from __future__ import annotations

from octavo.runtime.config import DEFAULT_MAX_NUM_SEQS, EngineArgs
from octavo.runtime.usage_defaults import (OFFLINE_LARGE_GPU, apply_offline_defaults, apply_server_defaults,
                                          offline_defaults)


def test_only_a_large_gpu_gets_the_wide_offline_batch():
    assert offline_defaults("cuda", 79.6) == OFFLINE_LARGE_GPU == {"max_num_seqs": 1024, "max_num_batched_tokens": 16384,
                                                              "kv_reserve_ratio": 0.5}
    assert offline_defaults("cuda", 139.8) == OFFLINE_LARGE_GPU
    assert offline_defaults("cuda", 39.4) == {}  # an A100-40GB, an L40S: the engine's defaults
    assert offline_defaults("cpu", None) == {}


def test_applying_fills_only_what_the_caller_left_unset(monkeypatch):
    import torch

    args = EngineArgs(device="cpu")
    apply_offline_defaults(args)
    assert args.max_num_seqs is None and args.max_num_batched_tokens is None  # 256 / 8192 when resolved
    assert args.kv_reserve_ratio is None  # 0 when resolved

    class H100:
        total_memory = 80 * 2**30

    monkeypatch.setattr(EngineArgs, "resolved_device", lambda self: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    args = EngineArgs(max_num_seqs=64)
    apply_offline_defaults(args)
    assert (args.max_num_seqs, args.max_num_batched_tokens, args.kv_reserve_ratio) == (64, 16384, 0.5)


def test_an_unset_max_num_seqs_resolves_to_the_engine_default(llama_dir):
    config = EngineArgs(model=str(llama_dir), device="cpu").create_config()
    assert config.scheduler_config.max_num_seqs == DEFAULT_MAX_NUM_SEQS == 256
    assert config.async_scheduling  # on by default; the engine turns it off under speculation or TP


def test_the_server_runs_its_engine_core_apart_unless_the_flag_or_the_environment_choose():
    unset = EngineArgs(model="m")
    apply_server_defaults(unset, environ={})
    assert unset.enable_multiprocessing is True
    for flag in (False, True):
        chosen = EngineArgs(model="m", enable_multiprocessing=flag)
        apply_server_defaults(chosen, environ={})
        assert chosen.enable_multiprocessing is flag
    for name in ("OCTAVO_ENABLE_MULTIPROCESSING", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        from_env = EngineArgs(model="m")
        apply_server_defaults(from_env, environ={name: "0"})
        assert from_env.enable_multiprocessing is None  # multiprocessing_enabled reads the variable: off
