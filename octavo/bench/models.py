"""Which model a benchmark runs, and the octavo engine built for it: `--config NAME` (a public
config.json in bench/configs, or a path to one) with random weights, so no checkpoint or tokenizer
is needed; `--model DIR` as it is; `--hf-overrides JSON` changes config fields (implies dummy)."""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("octavo")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "bench" / "configs"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclasses.dataclass
class ModelSpec:
    path: str  # directory holding config.json (and weights unless dummy)
    label: str  # config name or directory name, for reports
    load_format: str
    overrides: dict = dataclasses.field(default_factory=dict)
    config_source: str | None = None  # the config.json it was made from, if any
    temporary: bool = False  # a directory this process made (and may add files to)

    def describe(self, **facts: Any) -> dict:
        """The result's "model" entry."""
        return {"name": self.label, "config_source": self.config_source, "load_format": self.load_format,
                "hf_overrides": self.overrides, **facts}


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def config_file(name_or_path: str) -> Path:
    for path in (Path(name_or_path), CONFIG_DIR / f"{name_or_path}.json"):
        if path.suffix == ".json" and path.is_file():
            return path
    raise ValueError(f"no model config {name_or_path!r}: name one of {', '.join(available_configs()) or '(none)'}"
                     f" in {CONFIG_DIR}, or give a path to a config.json file")


def dummy_model(source: Path, label: str, overrides: dict, load_format: str | None, why: str) -> ModelSpec:
    """A temporary directory (removed at exit) holding `source` with `overrides` as config.json."""
    if load_format not in (None, "auto", "dummy"):
        raise ValueError(f"{why}: use --load-format dummy (got {load_format!r})")
    directory = tempfile.mkdtemp(prefix="octavo-bench-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    Path(directory, "config.json").write_text(json.dumps({**json.loads(source.read_text()), **overrides}, indent=2))
    return ModelSpec(directory, label, "dummy", overrides, str(source), temporary=True)


def resolve_model(model: str | None, config: str | None, load_format: str | None,
                  hf_overrides: str | None) -> ModelSpec:
    try:
        overrides = json.loads(hf_overrides) if hf_overrides else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hf-overrides must be a JSON object, e.g. '{{\"num_hidden_layers\": 2}}': {exc}") from exc
    if not isinstance(overrides, dict):
        raise ValueError(f"--hf-overrides must be a JSON object, got {type(overrides).__name__}")
    if bool(model) == bool(config):
        raise ValueError("give exactly one of --model DIR (a local model directory) or --config NAME "
                         f"(one of {', '.join(available_configs())}, with random weights)")
    if config:
        source = config_file(config)
        return dummy_model(source, source.stem, overrides, load_format, "--config has no weights")
    from octavo.runtime.demo import resolve_demo

    model = str(resolve_demo(model) or model)  # octavo-demo, octavo-demo-draft
    source = Path(model, "config.json")
    if not source.is_file():
        raise ValueError(f"--model {model!r} is not a directory holding config.json")
    label = Path(model).resolve().name
    if overrides:
        return dummy_model(source, label, overrides, load_format,
                           "--hf-overrides changes the model's shape, so its weights cannot load")
    return ModelSpec(os.path.abspath(model), label, load_format or "auto", {}, str(source))


def build_llm(args: Any, spec: ModelSpec, **changes: Any):
    """The octavo engine for the model from the engine flags, with `changes` (EngineArgs fields)."""
    from octavo.bench.cli import engine_args
    from octavo.runtime.llm import LLM

    return LLM(**dataclasses.asdict(engine_args(args, model=spec.path, load_format=spec.load_format, **changes)))


def model_facts(llm: Any) -> dict:
    """Shape facts the roofline needs, read off the loaded model: one rank's under tensor
    parallelism (its shard of the weights, its KV heads), and the collectives a decode step waits
    for there (an all-reduce after each layer's two row-parallel projections and the embedding,
    the logits' gather)."""
    import torch

    engine = llm.llm_engine
    config = engine.config.model_config
    num_params, weight_bytes = engine.model_size()
    hf = config.hf_config
    tp = engine.config.parallel_config.tensor_parallel_size
    kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    kv_heads = max(kv_heads // tp, 1)  # this rank's (fewer KV heads than ranks: each holds one)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    element = torch.tensor([], dtype=config.dtype).element_size()
    return {"architecture": config.architecture, "dtype": str(config.dtype).replace("torch.", ""),
            "num_params": num_params, "weight_bytes": weight_bytes, "tensor_parallel_size": tp,
            "collectives_per_step": 2 * hf.num_hidden_layers + 2 if tp > 1 else 0,
            "kv_bytes_per_token": 2 * hf.num_hidden_layers * kv_heads * head_dim * element,
            "num_layers": hf.num_hidden_layers, "hidden_size": hf.hidden_size, "vocab_size": hf.vocab_size,
            "max_model_len": engine.max_model_len, "num_kv_blocks": engine.kv_cache.num_blocks,
            "block_size": engine.kv_cache.block_size, "device": str(engine.config.device)}


def release() -> None:
    """Collect garbage and return cached device memory, so the next model fits (the caller drops
    its own references first)."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        logger.info("device memory after release: %.1f GiB allocated by torch, %.1f of %.1f GiB free",
                    torch.cuda.memory_allocated() / 2**30, free / 2**30, total / 2**30)


def has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def write_synthetic_tokenizer(directory: str, vocab_size: int, eos_token_id: Any = None) -> None:
    """A word-level tokenizer of the model's vocabulary size in which id i decodes to "w<i>", so a
    dummy model's server detokenizes and streams text per token as for a real model (detokenizing
    is part of what a serving benchmark measures). Ids 1..95 are the printable ASCII characters
    instead, so that structured outputs (a JSON schema's braces, quotes, digits) can be spelled.
    eos_token_id: the config's; one id is EOS (and keeps its word), a list (llama-3.1's) names none."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    for i, char in enumerate(map(chr, range(32, 127)), start=1):
        if i < vocab_size and i != eos_token_id:
            del vocab[f"w{i}"]
            vocab[char] = i
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"eos_token": f"w{eos_token_id}"} if isinstance(eos_token_id, int) and eos_token_id < vocab_size else {}
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0", **special).save_pretrained(directory)
