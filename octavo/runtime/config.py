"""Engine arguments (vLLM's names) and the validated configs the engine is built from.

EngineArgs is what users write; `EngineArgs.create_config()` resolves it against the model's
config.json and the device into an EngineConfig, failing early with errors that name the fix.

torch is imported only where a config is resolved: the operator, which has no torch, builds
`octavo serve` command lines from EngineArgs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("octavo")

# dtype names -> the torch dtype each means (by attribute name, so that naming them needs no torch)
_DTYPES = {
    "float32": "float32", "float": "float32", "fp32": "float32",
    "float16": "float16", "half": "float16", "fp16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
DTYPES = ("auto", *_DTYPES)
LOAD_FORMATS = ("auto", "safetensors", "dummy")
BLOCK_SIZES = (8, 16, 32, 64, 128)


def dtype_name(dtype: str, default: str) -> str:
    """The torch name a dtype flag means ("half" -> "float16"); `default` for "auto" (or anything
    not a dtype name), where the checkpoint decides."""
    return _DTYPES.get(dtype, default)


def resolve_dtype(dtype: str | torch.dtype, config_dtype: Any, device: torch.device) -> torch.dtype:
    """"auto" takes the checkpoint's dtype; half precision on a CPU becomes float32 (CPU matmuls
    in fp16 are slow or missing). An explicit float16 on a CPU is kept, with a warning that
    says so (vLLM casts it; octavo runs what was asked and names the faster choice)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(sorted(_DTYPES))}; got {dtype!r}")
        chosen = getattr(torch, _DTYPES[dtype])
        if device.type == "cpu" and chosen == torch.float16:
            logger.warning("dtype %s: running float16 on a CPU, where its matmuls are slow and less exact; "
                           "pass dtype float32 (or auto) for a CPU", dtype)
        return chosen
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, _DTYPES.get(config_dtype, "float32"))
    chosen = config_dtype if isinstance(config_dtype, torch.dtype) else torch.float32
    if device.type == "cpu" and chosen == torch.float16:
        logger.info("dtype auto: the checkpoint is float16; using float32 on the CPU")
        chosen = torch.float32
    return chosen


@dataclass
class ModelConfig:
    model: str  # local directory the weights and tokenizer are read from
    hf_config: Any  # transformers PretrainedConfig
    dtype: torch.dtype
    max_model_len: int
    load_format: str
    seed: int
    tokenizer: str
    served_model_name: str
    revision: str | None = None
    partial_checkpoint: bool = False  # dummy weights, except the tensors the directory's safetensors hold

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else ""

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size


@dataclass
class CacheConfig:
    block_size: int
    gpu_memory_utilization: float
    num_gpu_blocks: int | None  # explicit override; otherwise sized from memory
    kv_cache_memory_bytes: int | None
    enable_prefix_caching: bool


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    # Admission holds back this share of the running requests' remaining output (scheduler.py).
    kv_reserve_ratio: float = 0.0
    kv_reserve_clip_tokens: int = 4096  # a request's remaining output counts at most this much


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1


DEFAULT_MAX_NUM_SEQS = 256  # max_num_seqs when none is given (usage_defaults may widen it for the LLM class)
DEFAULT_NUM_SPECULATIVE_TOKENS = 4  # the cap on k when none is given (adaptive k picks below it)


@dataclass
class SpeculativeConfig:
    """What proposes draft tokens and how adaptive k chooses how many.

    `method` names the proposer (a module of octavo.runtime.spec.proposers); `num_speculative_tokens` is
    the most a step drafts. The rest are adaptive k's knobs (spec/controller.py says why each)."""

    method: str
    num_speculative_tokens: int
    model: str | None = None  # the draft model's directory (method "draft_model")
    draft_tensor_parallel_size: int = 1
    draft_model_config: ModelConfig | None = None
    prompt_lookup_min: int = 1  # n-gram: shortest suffix matched in the context
    prompt_lookup_max: int = 4  # n-gram: longest suffix matched
    adaptive: bool = True  # False: always draft num_speculative_tokens
    min_gain: float = 0.05  # speculate only where predicted to beat plain decoding by this much
    decide_every: int = 16  # steps a decision holds
    window: int = 64  # step-time samples kept per batch-size bucket and k (a low quantile needs a burst to pass)
    plain_quantile: float = 0.1  # plain step times are read low (noise only adds time)
    spec_quantile: float = 0.5  # speculative ones at the median (so noise errs towards plain)
    probe_steps: int = 4  # steps of a probe of the arm not chosen (the first is no sample)
    probe_budget: float = 0.01  # probes take at most this share of a bucket's time


PROFILER_DIR_ENVS = ("OCTAVO_TORCH_PROFILER_DIR", "VLLM_TORCH_PROFILER_DIR")  # vLLM's older way to turn it on


@dataclass
class ProfilerConfig:
    """The torch profiler behind start_profile / stop_profile, with vLLM's ProfilerConfig names.
    Iterations are engine steps: after start_profile, `delay_iterations` steps run unrecorded, then
    at most `max_iterations` are recorded (0: until stop_profile), so a trace can cover a steady
    state without growing to the whole run."""

    profiler: str | None = None  # "torch", or None for none
    torch_profiler_dir: str = ""
    torch_profiler_with_stack: bool = False  # vLLM's default is True; stacks make traces ~10x larger
    torch_profiler_record_shapes: bool = False
    torch_profiler_use_gzip: bool = True
    delay_iterations: int = 0
    max_iterations: int = 0

    def __post_init__(self) -> None:
        if self.profiler not in (None, "torch"):
            raise ValueError(f"profiler must be 'torch' or unset, got {self.profiler!r}")
        if self.profiler == "torch" and not self.torch_profiler_dir:
            raise ValueError("profiler 'torch' needs torch_profiler_dir (where traces are written)")
        if self.torch_profiler_dir and self.profiler != "torch":
            raise ValueError("torch_profiler_dir is only used with profiler 'torch'")
        for name in ("delay_iterations", "max_iterations"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")

    @classmethod
    def resolve(cls, settings: dict | None) -> "ProfilerConfig | None":
        """From --profiler-config (JSON), else from $OCTAVO_TORCH_PROFILER_DIR or
        $VLLM_TORCH_PROFILER_DIR; None when neither asks for a profiler."""
        if settings:
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(settings) - known)
            if unknown:
                raise ValueError(f"profiler_config key(s) {', '.join(unknown)} not supported; "
                                 f"known: {', '.join(sorted(known))}")
            config = cls(**settings)
            return config if config.profiler else None
        directory = next((os.environ[env] for env in PROFILER_DIR_ENVS if os.environ.get(env)), None)
        return cls(profiler="torch", torch_profiler_dir=directory) if directory else None


@dataclass
class StructuredOutputsConfig:
    """Constrained decoding, with vLLM's StructuredOutputsConfig names. One backend (xgrammar;
    "auto" means it); `max_whitespace` (octavo's): the longest whitespace run JSON may hold between
    tokens, so a model fond of spaces cannot spend max_tokens on them (16 fits pretty-printed JSON
    nested 7 levels deep at a 2-space indent); 0 = no limit."""

    backend: str = "xgrammar"
    disable_any_whitespace: bool = False  # the server-wide default of the request field of that name
    disable_additional_properties: bool = False
    disable_fallback: bool = False  # one backend: nothing to fall back to
    max_whitespace: int = 16
    reasoning_parser: str = ""

    BACKENDS = ("auto", "xgrammar")

    def __post_init__(self) -> None:
        if self.backend not in self.BACKENDS:
            raise ValueError(f"structured outputs backend {self.backend!r} is not available: octavo's is xgrammar "
                             "(use 'xgrammar' or 'auto')")
        self.backend = "xgrammar"
        if not isinstance(self.max_whitespace, int) or self.max_whitespace < 0:
            raise ValueError(f"max_whitespace must be an integer >= 0, got {self.max_whitespace!r}")
        if self.reasoning_parser:
            raise ValueError("reasoning_parser is not supported (octavo has no reasoning parsers): leave it out")

    @classmethod
    def resolve(cls, settings: dict | None, backend: str | None = None) -> "StructuredOutputsConfig":
        """From --structured-outputs-config (JSON) and vLLM's older --guided-decoding-backend."""
        settings = dict(settings or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"structured_outputs_config key(s) {', '.join(unknown)} not supported; "
                             f"known: {', '.join(sorted(known))}")
        if backend is not None:
            settings.setdefault("backend", backend)
        return cls(**settings)


@dataclass
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device: torch.device
    enforce_eager: bool
    async_scheduling: bool = True
    piecewise_cuda_graphs: bool = False
    speculative_config: SpeculativeConfig | None = None
    disable_log_stats: bool = True
    profiler_config: ProfilerConfig | None = None
    structured_outputs_config: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)


# vLLM's compilation_config["cudagraph_mode"] values octavo takes; the piecewise ones add piecewise graphs.
CUDAGRAPH_MODES = ("NONE", "FULL_DECODE_ONLY", "FULL", "PIECEWISE", "FULL_AND_PIECEWISE")
PIECEWISE_MODES = ("PIECEWISE", "FULL_AND_PIECEWISE")


# Unset: piecewise graphs too (vLLM's default). On an H100 they cut the served TTFT p50 of the 8B shape
# to 0.77x (c = 16) and 0.79x (c = 64) at equal or better tok/s and TPOT, and leave offline throughput
# as it was (bench/results/2026-12-07-piecewise-h100.md).
DEFAULT_CUDAGRAPH_MODE = "FULL_AND_PIECEWISE"


def cudagraph_mode(compilation_config: dict | None) -> str:
    """compilation_config's cudagraph_mode (upper-cased; unset: DEFAULT_CUDAGRAPH_MODE), or a ValueError
    naming the values. Octavo's whole-step graphs hold decode and uniform steps under every mode but NONE."""
    mode = (compilation_config or {}).get("cudagraph_mode") or DEFAULT_CUDAGRAPH_MODE
    if not isinstance(mode, str) or mode.upper() not in CUDAGRAPH_MODES:
        raise ValueError(f"compilation_config's cudagraph_mode must be one of {', '.join(CUDAGRAPH_MODES)}; "
                         f"got {mode!r}")
    return mode.upper()


FLAG_TYPES = (bool, int, float, str, dict, list)  # what a flag can hold; a dict is JSON, a list is strings


@dataclass(frozen=True)
class EngineFlag:
    """A dataclass field as a command-line flag: vLLM's `--kebab-case` of its name. A bool is
    `--name` / `--no-name`; a dict is one JSON argument; a list is one or more strings."""

    name: str
    type: type  # one of FLAG_TYPES
    default: Any
    help: str
    choices: tuple | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    int_key: str | None = None  # a dict flag: a bare integer N reads as {int_key: N} (vLLM's -O3)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def argv(self, value: Any) -> list[str]:
        """The arguments that set this flag to `value`."""
        if self.type is bool:
            return [self.option if value else "--no-" + self.option[2:]]
        if value is None:
            raise ValueError(f"{self.name}=None cannot be written as a flag (its default is {self.default!r})")
        if self.type is dict:
            return [self.option, json.dumps(value)]
        if self.type is list:
            return [self.option, *map(str, value)]
        return [self.option, str(value)]


def _flag_type(hint: Any) -> Any:
    """`int | None` -> int; `dict[str, Any]` -> dict; anything else as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    return typing.get_origin(hint) or hint


def _arg(default: Any, help: str, **flag: Any) -> Any:
    """A flag field: its default and its flag's help (with `choices`, `aliases`, `metavar`, or
    `cli=False` for a field that is no flag). A list default is copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **flag})
    return field(default=default, metadata={"help": help, **flag})


class CliArgs:
    """A dataclass whose public fields are command-line flags of the same name (`cli_flags()`),
    unless a field's metadata says `cli=False`; `engine_flags.add_engine_args` builds the
    parser from them and `to_cli_args` writes them back. EngineArgs and the server's own
    ServerArgs are both, so one generator makes every `octavo serve` flag."""

    @classmethod
    def cli_flags(cls) -> list[EngineFlag]:
        """The fields that are flags: every public field whose metadata does not say `cli=False`.
        A flag field must have help text and a type in FLAG_TYPES."""
        hints = typing.get_type_hints(cls)
        flags = []
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or f.metadata.get("cli", True) is False:
                continue
            kind = _flag_type(hints[f.name])
            if kind not in FLAG_TYPES:
                raise TypeError(f"{cls.__name__}.{f.name}: a flag holds one of "
                                f"{', '.join(t.__name__ for t in FLAG_TYPES)}, not {hints[f.name]}; "
                                "change its type or give it metadata cli=False")
            if not f.metadata.get("help"):
                raise TypeError(f"{cls.__name__}.{f.name} has no help text: declare it with "
                                "field(default=..., metadata={'help': ...})")
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            flags.append(EngineFlag(f.name, kind, default, f.metadata["help"], f.metadata.get("choices"),
                                    tuple(f.metadata.get("aliases", ())), f.metadata.get("metavar"),
                                    f.metadata.get("int_key")))
        return flags

    def to_cli_args(self) -> list[str]:
        """The flags that reproduce these arguments, non-default values only (what the operator
        and the bench launcher pass to `octavo serve`); `engine_flags.engine_args_from_namespace`
        of them parsed gives these arguments back. A non-flag field away from its default is
        an error rather than a silent loss."""
        defaults = type(self)()
        argv: list[str] = []
        flags = type(self).cli_flags()
        for flag in flags:
            value = getattr(self, flag.name)
            if value != getattr(defaults, flag.name):
                argv += flag.argv(value)
        named = {flag.name for flag in flags}
        for f in dataclasses.fields(self):
            if f.name not in named and getattr(self, f.name) != getattr(defaults, f.name):
                raise ValueError(f"{f.name} is no flag ({f.metadata.get('help', 'private')}): leave it unset "
                                 "in arguments meant for a command line")
        return argv


@dataclass
class EngineArgs(CliArgs):
    """Arguments with vLLM's names. Unknown vLLM arguments that mean nothing here are accepted
    where listed in `_ACCEPTED_NOOPS` and logged. Each public field is a command-line flag of the
    same name (`cli_flags()`), unless its metadata says `cli=False`."""

    model: str | None = _arg(None, "model directory, demo name or hub id; unset: the embedded demo model")
    tokenizer: str | None = _arg(None, "tokenizer directory or hub id; unset: the model's")
    revision: str | None = _arg(None, "hub revision of the model (branch, tag or commit); "
                                "unset: the default branch")
    tokenizer_revision: str | None = _arg(None, "hub revision of the tokenizer; unset: the default branch")
    # Not a flag: `octavo serve --served-model-name` takes several names and gives the engine the first.
    served_model_name: str | None = _arg(None, "the model's name in outputs; octavo serve sets it from "
                                         "--served-model-name", cli=False)
    dtype: str = _arg("auto", "weight and activation dtype; auto: the checkpoint's (float32 on a CPU for a "
                      "float16 checkpoint)", choices=DTYPES)
    seed: int = _arg(0, "seed of the generator that requests without a seed of their own share")
    max_model_len: int | None = _arg(None, "context length in tokens; unset: the model's maximum")
    max_num_seqs: int | None = _arg(None, "most sequences in one step's batch; unset: 256 (the offline LLM class "
                                    "on a GPU of 70 GiB or more: 1024)")
    max_num_batched_tokens: int | None = _arg(None, "most tokens in one step; unset: 8192 with chunked prefill, "
                                              "else max_model_len (at least 2048)")
    enable_chunked_prefill: bool = _arg(True, "cut long prompts into chunks that share steps with decodes")
    kv_reserve_ratio: float | None = _arg(None, "when admitting a prompt, keep free KV blocks for this share of "
                                          "every running request's remaining max_tokens (at most 4096 each), "
                                          "so that requests admitted together finish without preemption; 0: "
                                          "admit whatever fits now, as vLLM; unset: 0 (the offline LLM class on "
                                          "a GPU of 70 GiB or more: 0.5)")
    block_size: int = _arg(16, "tokens per KV cache block", choices=BLOCK_SIZES)
    gpu_memory_utilization: float = _arg(0.90, "fraction of GPU memory for weights, activations and the KV cache")
    num_gpu_blocks_override: int | None = _arg(None, "KV cache blocks; unset: sized from free memory")
    kv_cache_memory_bytes: int | None = _arg(None, "KV cache bytes; unset: sized from free memory")
    enable_prefix_caching: bool = _arg(True, "reuse the KV blocks of prompt prefixes already computed")
    load_format: str = _arg("auto", "how weights load; dummy: random weights of the model's shapes",
                            choices=LOAD_FORMATS)
    model_loader_extra_config: dict | None = _arg(None, "vLLM's, as JSON; octavo reads one key: partial_checkpoint "
                                                  "(true, with load_format dummy: the tensors that the model "
                                                  "directory's *.safetensors hold are loaded, every other weight "
                                                  "is random; for the draft model too); unset: no extra config")
    download_dir: str | None = _arg(None, "where hub downloads are cached; unset: the hub's cache")
    device: str = _arg("auto", "auto, cuda, cuda:N or cpu; auto: cuda if there is one")
    tensor_parallel_size: int = _arg(1, "GPUs the model is sharded over", aliases=("-tp",))
    enforce_eager: bool = _arg(False, "never capture CUDA graphs")
    compilation_config: dict | None = _arg(None, "vLLM's, as JSON; octavo reads its cudagraph_mode: "
                                           "FULL_AND_PIECEWISE (unset: whole-step graphs for decode, "
                                           "speculative and one-request prefill steps, and piecewise graphs, "
                                           "attention outside, for the other steps up to 2048 tokens), "
                                           "FULL_DECODE_ONLY (the whole-step graphs alone), NONE (eager); its "
                                           "other keys, and -O's level (-O3), are accepted and ignored",
                                           aliases=("-O",), int_key="level")
    async_scheduling: bool = _arg(True, "schedule and launch each step before the last one's tokens are read "
                                        "back, so host work overlaps the GPU (not with tensor parallelism, which "
                                        "runs steps in order; under speculation, plain steps)")
    enable_multiprocessing: bool | None = _arg(None, "run the scheduler, model and sampler (the engine core) in a "
                                               "process of their own while this one tokenizes, detokenizes "
                                               "and streams; unset: $OCTAVO_ENABLE_MULTIPROCESSING or "
                                               "$VLLM_ENABLE_V1_MULTIPROCESSING, else on for `octavo serve`, off (in "
                                               "process) for LLM and AsyncLLMEngine")
    speculative_model: str | None = _arg(None, "draft model for speculative decoding (directory, demo name or hub "
                                         "id), or [ngram] for prompt lookup; unset: no speculation")
    num_speculative_tokens: int | None = _arg(None, "most tokens a step drafts (adaptive k picks up to it); "
                                              f"unset: {DEFAULT_NUM_SPECULATIVE_TOKENS}")
    speculative_draft_tensor_parallel_size: int | None = _arg(None, "GPUs the draft model is sharded over; unset: 1")
    speculative_config: dict | None = _arg(None, "speculative decoding as JSON, vLLM's form, e.g. "
                                           '\'{"model": "DRAFT", "num_speculative_tokens": 4}\' or '
                                           '\'{"method": "ngram"}\'; its keys win over the flags above; unset: '
                                           'the flags alone')
    ngram_prompt_lookup_max: int | None = _arg(None, "n-gram proposer: longest suffix matched; "
                                               f"unset: {SpeculativeConfig.prompt_lookup_max}")
    ngram_prompt_lookup_min: int | None = _arg(None, "n-gram proposer: shortest suffix matched; "
                                               f"unset: {SpeculativeConfig.prompt_lookup_min}")
    profiler_config: dict | None = _arg(None, "the torch profiler behind start_profile/stop_profile (and the "
                                        "server's POST /start_profile, /stop_profile) as JSON, vLLM's form, e.g. "
                                        '\'{"profiler": "torch", "torch_profiler_dir": "/tmp/prof", '
                                        '"delay_iterations": 100, "max_iterations": 20}\'; unset: '
                                        "$VLLM_TORCH_PROFILER_DIR, else no profiler")
    trust_remote_code: bool = _arg(False, "vLLM's; accepted, but octavo runs no remote code (only built-in "
                                   "architectures load)")
    use_v2_block_manager: bool = _arg(True, "vLLM's; accepted, octavo has one block manager")
    structured_outputs_config: dict | None = _arg(None, "structured outputs (constrained decoding) as JSON, vLLM's "
                                                  'form, e.g. \'{"backend": "xgrammar", "disable_any_whitespace": '
                                                  'true}\'; octavo\'s key max_whitespace caps whitespace runs in JSON '
                                                  f"(unset: {StructuredOutputsConfig.max_whitespace}; 0: no cap)")
    guided_decoding_backend: str | None = _arg(None, "vLLM's older name for structured_outputs_config's backend "
                                               "(xgrammar or auto); unset: xgrammar")
    disable_log_stats: bool = _arg(True, "vLLM's; accepted, changes nothing (statistics are on /metrics)")
    # Not a flag: free-form settings for code that builds EngineArgs (the engine reads none).
    extra: dict = field(default_factory=dict, metadata={"help": "free-form settings for code", "cli": False})

    # vLLM arguments accepted for compatibility; they change nothing here.
    _ACCEPTED_NOOPS = {
        "trust_remote_code": "octavo never executes remote code; only built-in architectures load",
        "use_v2_block_manager": "octavo has one block manager (paged, prefix-caching)",
    }

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in kwargs.items() if k in names}
        unknown = {k: v for k, v in kwargs.items() if k not in names}
        if "num_gpu_blocks" in unknown:
            known["num_gpu_blocks_override"] = unknown.pop("num_gpu_blocks")
        for name in sorted(unknown):
            logger.warning("engine argument %s=%r is not used by octavo and is ignored", name, unknown[name])
        return cls(**known)

    def resolved_device(self) -> torch.device:
        """The device `device` names ("auto": cuda if there is one)."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _log_noops(self) -> None:
        if self.trust_remote_code:
            logger.info("trust_remote_code=True accepted: %s", self._ACCEPTED_NOOPS["trust_remote_code"])
        if not self.use_v2_block_manager:
            logger.info("use_v2_block_manager=False accepted: %s", self._ACCEPTED_NOOPS["use_v2_block_manager"])
        ignored = sorted(set(self.compilation_config or {}) - {"cudagraph_mode"})
        if ignored:
            logger.info("compilation_config %s accepted without effect: octavo runs no torch.compile (only "
                        "cudagraph_mode is read)", ", ".join(ignored))
        if self.enforce_eager and self.resolved_device().type == "cpu":
            logger.info("enforce_eager=True accepted: the CPU path never uses CUDA graphs")

    # speculative_config's keys: vLLM's names, and adaptive k's knobs, as SpeculativeConfig has them.
    _SPEC_KEYS = frozenset(f.name for f in dataclasses.fields(SpeculativeConfig)) - {"draft_model_config"}

    def speculative_settings(self) -> dict[str, Any] | None:
        """SpeculativeConfig fields from the flat arguments and the dict form (the dict wins), or
        None without speculation. vLLM's spellings: `speculative_model="[ngram]"` or
        `{"method": "ngram"}` for prompt lookup, a model path for a draft model."""
        spec = dict(self.speculative_config or {})
        unknown = sorted(set(spec) - set(self._SPEC_KEYS))
        if unknown:
            raise ValueError(f"speculative_config key(s) {', '.join(unknown)} not supported; "
                             f"known: {', '.join(sorted(self._SPEC_KEYS))}")
        settings = {key: value for key, value in spec.items() if value is not None}
        model = settings.get("model") or self.speculative_model
        method = settings.get("method") or ("ngram" if model in ("[ngram]", "ngram") else "draft_model" if model else None)
        if method is None:
            if settings:
                raise ValueError("speculative_config needs a 'model' (a draft model) or 'method': 'ngram'")
            return None
        from octavo.runtime.spec import methods

        if method not in methods():
            raise ValueError(f"speculative method must be one of {', '.join(methods())}; got {method!r}")
        settings["method"] = method
        settings["model"] = model if method == "draft_model" else None
        if method == "draft_model" and not model:
            raise ValueError("speculative method 'draft_model' needs a draft model (speculative_config['model'])")
        k = next((v for v in (settings.get("num_speculative_tokens"), self.num_speculative_tokens) if v is not None),
                 DEFAULT_NUM_SPECULATIVE_TOKENS)
        if not 1 <= int(k) <= 16:
            raise ValueError(f"num_speculative_tokens must be in 1..16, got {k!r}")
        settings["num_speculative_tokens"] = int(k)
        draft_tp = settings.get("draft_tensor_parallel_size") or self.speculative_draft_tensor_parallel_size or 1
        settings["draft_tensor_parallel_size"] = int(draft_tp)
        for key, flat in (("prompt_lookup_max", self.ngram_prompt_lookup_max),
                          ("prompt_lookup_min", self.ngram_prompt_lookup_min)):
            if flat is not None:
                settings.setdefault(key, flat)
        low = settings.get("prompt_lookup_min", SpeculativeConfig.prompt_lookup_min)
        high = settings.get("prompt_lookup_max", SpeculativeConfig.prompt_lookup_max)
        if not 1 <= low <= high:
            raise ValueError(f"prompt_lookup_min ({low}) and prompt_lookup_max ({high}) must satisfy 1 <= min <= max")
        return settings

    def create_config(self) -> EngineConfig:
        self._log_noops()
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {self.load_format!r}")
        self._partial_checkpoint()
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}; got {self.block_size}")
        max_num_seqs = self.max_num_seqs if self.max_num_seqs is not None else DEFAULT_MAX_NUM_SEQS
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        kv_reserve_ratio = self.kv_reserve_ratio if self.kv_reserve_ratio is not None else 0.0
        if not 0.0 <= kv_reserve_ratio <= 1.0:
            raise ValueError(f"kv_reserve_ratio must be in [0, 1], got {kv_reserve_ratio}")
        device = self.resolved_device()
        model_config = self._model_config(self.model, self.tokenizer, self.revision, device)
        from octavo.runtime.tp_shapes import check_tensor_parallel

        # Before any worker process starts: a shape that cannot split fails here, naming the fix.
        check_tensor_parallel(model_config, self.tensor_parallel_size, device)
        max_model_len = model_config.max_model_len
        max_batched = self.max_num_batched_tokens or max(8192 if self.enable_chunked_prefill else max_model_len, 2048)
        if not self.enable_chunked_prefill and max_batched < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({max_batched}) is smaller than max_model_len ({max_model_len}) "
                "with chunked prefill off: raise it or enable chunked prefill")
        graph_mode = cudagraph_mode(self.compilation_config)
        spec_config = None
        settings = self.speculative_settings()
        if settings is not None:
            spec_config = SpeculativeConfig(**settings)
            if spec_config.method == "draft_model":
                draft_tp = spec_config.draft_tensor_parallel_size
                spec_config.draft_model_config = self._model_config(spec_config.model, None, None, device,
                                                                    max_model_len=max_model_len)
                spec_config.model = spec_config.draft_model_config.model
                if not 1 <= draft_tp <= self.tensor_parallel_size:
                    raise ValueError(f"speculative_draft_tensor_parallel_size ({draft_tp}) must be between 1 and "
                                     f"tensor_parallel_size ({self.tensor_parallel_size})")
                check_tensor_parallel(spec_config.draft_model_config, draft_tp, device, what="draft model")
        return EngineConfig(
            model_config=model_config,
            cache_config=CacheConfig(
                block_size=self.block_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                num_gpu_blocks=self.num_gpu_blocks_override,
                kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                enable_prefix_caching=self.enable_prefix_caching,
            ),
            scheduler_config=SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_batched,
                max_model_len=max_model_len,
                enable_chunked_prefill=self.enable_chunked_prefill,
                kv_reserve_ratio=kv_reserve_ratio,
            ),
            parallel_config=ParallelConfig(tensor_parallel_size=self.tensor_parallel_size),
            device=device,
            enforce_eager=self.enforce_eager or graph_mode == "NONE",
            piecewise_cuda_graphs=graph_mode in PIECEWISE_MODES,
            async_scheduling=self.async_scheduling,
            speculative_config=spec_config,
            disable_log_stats=self.disable_log_stats,
            profiler_config=ProfilerConfig.resolve(self.profiler_config),
            structured_outputs_config=StructuredOutputsConfig.resolve(self.structured_outputs_config,
                                                                      self.guided_decoding_backend),
        )

    def _partial_checkpoint(self) -> bool:
        """model_loader_extra_config's one key, checked: a typo or a key meant for another loader
        would otherwise load something other than what was asked for."""
        extra = self.model_loader_extra_config or {}
        if not isinstance(extra, dict):
            raise ValueError(f"model_loader_extra_config must be a JSON object, got {extra!r}")
        unknown = sorted(set(extra) - {"partial_checkpoint"})
        if unknown:
            raise ValueError(f"model_loader_extra_config key(s) {', '.join(unknown)} not supported; octavo reads "
                             "partial_checkpoint")
        partial = extra.get("partial_checkpoint", False)
        if not isinstance(partial, bool):
            raise ValueError(f"model_loader_extra_config partial_checkpoint must be true or false, got {partial!r}")
        if partial and self.load_format != "dummy":
            raise ValueError("model_loader_extra_config partial_checkpoint needs load_format dummy (the weights a "
                             f"checkpoint lacks are random); got load_format {self.load_format!r}")
        return partial

    def _model_config(self, model: str | None, tokenizer: str | None, revision: str | None,
                      device: torch.device, max_model_len: int | None = None) -> ModelConfig:
        from octavo.runtime.loader import load_hf_config, resolve_model_path

        name = model
        path = resolve_model_path(model, revision=revision, download_dir=self.download_dir,
                                  load_format=self.load_format)
        hf_config = load_hf_config(path)
        config_dtype = getattr(hf_config, "torch_dtype", None) or getattr(hf_config, "dtype", None)
        dtype = resolve_dtype(self.dtype, config_dtype, device)
        limit = derive_max_model_len(hf_config)
        wanted = max_model_len or self.max_model_len
        if wanted is not None and wanted > limit and not uses_alibi(hf_config):
            raise ValueError(f"max_model_len ({wanted}) exceeds the model's maximum ({limit} positions)")
        tokenizer_path = resolve_model_path(tokenizer, revision=self.tokenizer_revision,
                                            download_dir=self.download_dir) if tokenizer else path
        return ModelConfig(
            model=path, hf_config=hf_config, dtype=dtype, max_model_len=wanted or limit,
            load_format=self.load_format, seed=self.seed, tokenizer=tokenizer_path,
            served_model_name=self.served_model_name or name or path, revision=revision,
            partial_checkpoint=self._partial_checkpoint(),
        )


def uses_alibi(hf_config: Any) -> bool:
    """ALiBi models have no position table: any max_model_len is theirs to choose."""
    return getattr(hf_config, "model_type", "") == "bloom"


def derive_max_model_len(hf_config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048  # ALiBi models (BLOOM) name no limit


@dataclass
class AsyncEngineArgs(EngineArgs):
    """EngineArgs for AsyncLLMEngine (same fields, vLLM's name)."""

    disable_log_requests: bool = _arg(True, "vLLM's; accepted, changes nothing")
