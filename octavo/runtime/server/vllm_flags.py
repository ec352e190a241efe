"""`vllm serve` flags that are not octavo's own, so that a command line written for vLLM either
runs or stops at once with one line that names the flag and why.

ACCEPTED: flags that tune how vLLM does something octavo does its own way; results do not
change, so they are taken and logged. UNSUPPORTED: flags for features octavo lacks; each has the
values that ask for nothing (`--kv-cache-dtype auto`, `--pipeline-parallel-size 1`), which pass.
Every other vLLM setting octavo has is an EngineArgs or ServerArgs field of the same name.

Imports nothing heavy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class VllmFlag:
    name: str  # vLLM's name, as its dest (`kv_cache_dtype`)
    takes: str  # "bool" (--x / --no-x), "value" (one argument) or "values" (one or more)
    reason: str  # ACCEPTED: why it changes nothing here; UNSUPPORTED: what octavo lacks and what to do
    neutral: tuple = ()  # UNSUPPORTED values that ask for nothing octavo lacks (as written on the command line)
    aliases: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return f"vllm__{self.name}"


_LORA = "octavo serves no LoRA adapters: serve a merged checkpoint"
_REASONING = "octavo has no reasoning parsers"
_POOLING = "octavo serves generative models only (no pooling, embedding or scoring runners)"
_MULTIMODAL = "octavo serves text-only models"
_KV_TRANSFER = "octavo has no KV cache transfer or disaggregated prefill"

ACCEPTED = (
    VllmFlag("swap_space", "value", "octavo preempts by recomputation, so it keeps no CPU swap space"),
    VllmFlag("max_seq_len_to_capture", "value", "octavo's decode CUDA graphs cover every context length"),
    VllmFlag("disable_custom_all_reduce", "bool",
             "octavo's all-reduce is NCCL's (its one-shot path is off unless OCTAVO_SYMM_ALL_REDUCE_BYTES is set)"),
    VllmFlag("disable_async_output_proc", "bool", "octavo builds outputs in its engine step"),
    VllmFlag("max_parallel_loading_workers", "value", "octavo loads safetensors shards one after another"),
    VllmFlag("enable_log_requests", "bool", "octavo logs each request at --log-level debug"),
    VllmFlag("max_log_len", "value", "octavo logs no prompt text"),
    VllmFlag("enable_tokenizer_info_endpoint", "bool", "octavo always serves /tokenizer_info"),
    VllmFlag("enable_request_id_headers", "bool", "octavo always returns X-Request-Id"),
    VllmFlag("disable_frontend_multiprocessing", "bool",
             "octavo's HTTP server and engine client share one process (its engine core runs apart)"),
    VllmFlag("prefix_caching_hash_algo", "value", "octavo hashes prefix blocks with blake2b"),
    VllmFlag("ignore_patterns", "values", "octavo downloads config, tokenizer and safetensors files only"),
    VllmFlag("disable_mm_preprocessor_cache", "bool", "octavo serves text-only models"),
)

UNSUPPORTED = (
    VllmFlag("quantization", "value", "octavo loads unquantized weights (float32, float16, bfloat16)",
             aliases=("-q",)),
    VllmFlag("kv_cache_dtype", "value", "octavo's KV cache holds the model's dtype; pass auto or drop the flag",
             neutral=("auto",)),
    VllmFlag("calculate_kv_scales", "bool", "octavo has no fp8 KV cache", neutral=(False,)),
    VllmFlag("cpu_offload_gb", "value", "octavo keeps every weight on the GPU", neutral=("0",)),
    VllmFlag("pipeline_parallel_size", "value", "octavo shards with tensor parallelism only: use "
             "--tensor-parallel-size", neutral=("1",), aliases=("-pp",)),
    VllmFlag("data_parallel_size", "value", "octavo runs one engine per server: run more replicas instead",
             neutral=("1",), aliases=("-dp",)),
    VllmFlag("enable_expert_parallel", "bool", "octavo has no mixture-of-experts models", neutral=(False,)),
    VllmFlag("distributed_executor_backend", "value", "octavo starts its own worker processes (mp)",
             neutral=("mp", "uni")),
    VllmFlag("num_scheduler_steps", "value", "octavo schedules every step (no multi-step scheduling)",
             neutral=("1",)),
    VllmFlag("enable_lora", "bool", _LORA, neutral=(False,)),
    VllmFlag("max_loras", "value", _LORA),
    VllmFlag("max_lora_rank", "value", _LORA),
    VllmFlag("max_cpu_loras", "value", _LORA),
    VllmFlag("lora_modules", "values", _LORA),
    VllmFlag("fully_sharded_loras", "bool", _LORA, neutral=(False,)),
    VllmFlag("enable_prompt_adapter", "bool", "octavo serves no prompt adapters", neutral=(False,)),
    VllmFlag("tool_parser_plugin", "value", "octavo loads no tool parser plugins: use --tool-call-parser "
             "llama3_json or hermes", neutral=("",)),
    VllmFlag("reasoning_parser", "value", _REASONING, neutral=("",)),
    VllmFlag("enable_reasoning", "bool", _REASONING, neutral=(False,)),
    VllmFlag("task", "value", _POOLING, neutral=("auto", "generate")),
    VllmFlag("runner", "value", _POOLING, neutral=("auto", "generate")),
    VllmFlag("convert", "value", _POOLING, neutral=("auto", "none")),
    VllmFlag("attention_backend", "value", "octavo has one attention implementation (its paged Triton kernels)"),
    VllmFlag("tokenizer_mode", "value", "octavo loads the Hugging Face tokenizer (auto)", neutral=("auto", "hf")),
    VllmFlag("config_format", "value", "octavo reads Hugging Face config.json (auto)", neutral=("auto", "hf")),
    VllmFlag("model_impl", "value", "octavo runs its own model implementations (auto)", neutral=("auto",)),
    VllmFlag("speculative_max_model_len", "value", "the draft runs at the target's max_model_len"),
    VllmFlag("spec_decoding_acceptance_method", "value", "octavo verifies drafts by exact rejection sampling",
             neutral=("rejection_sampler",)),
    VllmFlag("num_lookahead_slots", "value", "octavo sizes draft slots itself", neutral=("0",)),
    VllmFlag("hf_token", "value", "give the hub token in the HF_TOKEN environment variable"),
    VllmFlag("hf_overrides", "value", "octavo reads config.json as it is"),
    VllmFlag("rope_scaling", "value", "octavo reads rope scaling from config.json"),
    VllmFlag("rope_theta", "value", "octavo reads rope_theta from config.json"),
    VllmFlag("disable_sliding_window", "bool", "octavo applies a model's sliding window as configured",
             neutral=(False,)),
    VllmFlag("logits_processor_pattern", "value", "octavo runs no custom logits processors"),
    VllmFlag("limit_mm_per_prompt", "value", _MULTIMODAL),
    VllmFlag("mm_processor_kwargs", "value", _MULTIMODAL),
    VllmFlag("enable_sleep_mode", "bool", "octavo has no sleep mode", neutral=(False,)),
    VllmFlag("kv_transfer_config", "value", _KV_TRANSFER),
    VllmFlag("kv_events_config", "value", _KV_TRANSFER),
    VllmFlag("scheduling_policy", "value", "octavo schedules first come, first served (fcfs)", neutral=("fcfs",)),
    VllmFlag("preemption_mode", "value", "octavo preempts by recomputation", neutral=("recompute",)),
    VllmFlag("long_prefill_token_threshold", "value", "octavo has one chunked-prefill policy", neutral=("0",)),
    VllmFlag("max_num_partial_prefills", "value", "octavo has one chunked-prefill policy", neutral=("1",)),
    VllmFlag("worker_cls", "value", "octavo's workers are its own", neutral=("auto",)),
    VllmFlag("worker_extension_cls", "value", "octavo's workers are its own", neutral=("",)),
    VllmFlag("otlp_traces_endpoint", "value", "octavo exports no OpenTelemetry traces (its metrics are on /metrics)"),
    VllmFlag("collect_detailed_traces", "value", "octavo exports no OpenTelemetry traces"),
    VllmFlag("skip_tokenizer_init", "bool", "octavo always loads the tokenizer", neutral=(False,)),
    VllmFlag("tokenizer_pool_size", "value", "octavo tokenizes in the server process", neutral=("0",)),
    VllmFlag("response_role", "value", "octavo answers as the assistant role", neutral=("assistant",)),
    VllmFlag("return_tokens_as_token_ids", "bool", "set return_tokens_as_token_ids per request instead",
             neutral=(False,)),
    VllmFlag("chat_template_content_format", "value", "octavo renders message content as a string",
             neutral=("auto", "string")),
    VllmFlag("enable_prompt_tokens_details", "bool", "usage carries no prompt_tokens_details", neutral=(False,)),
    VllmFlag("enable_force_include_usage", "bool", "ask for usage with stream_options.include_usage",
             neutral=(False,)),
    VllmFlag("enable_server_load_tracking", "bool", "octavo reports load on /metrics", neutral=(False,)),
    VllmFlag("middleware", "values", "octavo loads no middleware: put it in a proxy in front"),
    VllmFlag("ssl_ciphers", "value", "octavo uses the ssl module's default ciphers"),
    VllmFlag("enable_ssl_refresh", "bool", "restart the server to load new certificates", neutral=(False,)),
    VllmFlag("api_server_count", "value", "octavo runs one API server per engine", neutral=("1",)),
    VllmFlag("headless", "bool", "octavo always runs its API server", neutral=(False,)),
)


def add_vllm_flags(parser: argparse.ArgumentParser) -> None:
    """Register both tables: accepted flags are listed in --help; refused ones are recognised
    (so their values are consumed and the error can name them) but not listed."""
    group = parser.add_argument_group(
        "vLLM flags octavo takes without effect",
        "accepted so that vLLM command lines run; each changes nothing here and is logged at start. vLLM flags "
        "for features octavo lacks (LoRA, quantization, pipeline parallelism, ...) stop the server with one line "
        "that names the flag")
    for flag in ACCEPTED:
        _add(group, flag, f"vLLM's; accepted: {flag.reason} (default: unset)")
    for flag in UNSUPPORTED:
        _add(group, flag, argparse.SUPPRESS)


def _add(group, flag: VllmFlag, help: str) -> None:
    # The underscore spelling (production-stack writes --max_loras) works but is not listed.
    spellings = [([flag.option, *flag.aliases], help, None)]
    if "_" in flag.name:
        spellings.append(([f"--{flag.name}"], argparse.SUPPRESS, argparse.SUPPRESS))
    for options, shown, default in spellings:
        if flag.takes == "bool":
            negative = "--no_" + flag.name if "_" in options[0] else "--no-" + options[0][2:]
            group.add_argument(*options, dest=flag.dest, action="store_const", const=True, default=default,
                               help=shown)
            group.add_argument(negative, dest=flag.dest, action="store_const", const=False, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
        else:
            group.add_argument(*options, dest=flag.dest, default=default, help=shown,
                               nargs="+" if flag.takes == "values" else None, metavar=flag.name.upper())


def bool_names() -> list[str]:
    """The boolean flags among both tables (for `--name=false`)."""
    return [flag.name for flag in (*ACCEPTED, *UNSUPPORTED) if flag.takes == "bool"]


def _given(ns: argparse.Namespace, flag: VllmFlag):
    return getattr(ns, flag.dest, None)


def unsupported_flag(ns: argparse.Namespace) -> str | None:
    """One line naming the first refused flag the command line sets, or None."""
    for flag in UNSUPPORTED:
        value = _given(ns, flag)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if len(values) == 1 and values[0] in flag.neutral:
            continue
        if flag.takes == "bool":
            shown = flag.option
        else:
            shown = f"{flag.option} {' '.join(map(str, values))}"
        return f"{shown} is not supported: {flag.reason}"
    return None


def accepted_notes(ns: argparse.Namespace) -> list[str]:
    """A log line for each accepted flag the command line sets."""
    return [f"{flag.option} accepted without effect: {flag.reason}" for flag in ACCEPTED
            if _given(ns, flag) not in (None, False)]
