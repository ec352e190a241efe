"""Which model a benchmark runs, and the octavo engine built for it.

`--config NAME` names a public config.json kept in bench/configs/ (or a path to one); it is
written into a temporary directory as config.json and loaded with random weights
(load_format="dummy"), so no checkpoint or tokenizer is needed. `--model DIR` uses a local model
directory as it is. `--hf-overrides JSON` changes config fields (shrinking a real shape for a
smoke test, say); it implies dummy weights.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("octavo")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "bench" / "configs"


@dataclass
class ModelSpec:
    path: str  # directory holding config.json (and weights unless dummy)
    label: str  # config name or directory name, for reports
    load_format: str
    overrides: dict = field(default_factory=dict)
    config_source: str | None = None  # the config.json it was made from, if any
    temporary: bool = False  # a directory this process made (and may add files to)


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def config_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.json"
    if candidate.is_file():
        return candidate
    raise ValueError(f"no model config {name_or_path!r}: name one of {', '.join(available_configs()) or '(none)'}"
                     f" in {CONFIG_DIR}, or give a path to a config.json file")


def materialize_config(config: dict, prefix: str = "octavo-bench-") -> str:
    """A temporary directory holding `config` as config.json, removed when the process exits."""
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return directory


def parse_overrides(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hf-overrides must be a JSON object, e.g. '{{\"num_hidden_layers\": 2}}': {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"--hf-overrides must be a JSON object, got {type(value).__name__}")
    return value


def resolve_model(model: str | None, config: str | None, load_format: str | None,
                  hf_overrides: str | None) -> ModelSpec:
    overrides = parse_overrides(hf_overrides)
    if bool(model) == bool(config):
        raise ValueError("give exactly one of --model DIR (a local model directory) or --config NAME "
                         f"(one of {', '.join(available_configs())}, with random weights)")
    if config:
        source = config_file(config)
        with open(source) as f:
            data = json.load(f)
        if load_format not in (None, "auto", "dummy"):
            raise ValueError(f"--config has no weights: use --load-format dummy (got {load_format!r})")
        data.update(overrides)
        return ModelSpec(materialize_config(data), source.stem, "dummy", overrides, str(source), temporary=True)
    from octavo.runtime.demo import resolve_demo

    model = str(resolve_demo(model) or model)  # octavo-demo, octavo-demo-draft
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"--model {model!r} is not a directory holding config.json")
    label = Path(model).resolve().name
    if overrides:
        if load_format not in (None, "auto", "dummy"):
            raise ValueError("--hf-overrides changes the model's shape, so its weights cannot load: "
                             "add --load-format dummy")
        with open(os.path.join(model, "config.json")) as f:
            data = json.load(f)
        data.update(overrides)
        return ModelSpec(materialize_config(data), label, "dummy", overrides, os.path.join(model, "config.json"),
                         temporary=True)
    return ModelSpec(os.path.abspath(model), label, load_format or "auto", {}, os.path.join(model, "config.json"))


def build_llm(args: Any, spec: ModelSpec, **changes: Any):
    """The octavo engine for the model from the engine flags, with `changes` (EngineArgs fields)."""
    from octavo.bench.cli import engine_args
    from octavo.runtime.llm import LLM

    settings = dataclasses.asdict(engine_args(args, model=spec.path, load_format=spec.load_format, **changes))
    return LLM(**settings)


def model_facts(llm: Any) -> dict:
    """Shape facts the roofline needs, read off the loaded model."""
    import torch

    engine = llm.llm_engine
    config = engine.config.model_config
    num_params, weight_bytes = engine.model_size()
    hf = config.hf_config
    kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    element = torch.tensor([], dtype=config.dtype).element_size()
    return {
        "architecture": config.architecture,
        "dtype": str(config.dtype).replace("torch.", ""),
        "num_params": num_params,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": 2 * hf.num_hidden_layers * kv_heads * head_dim * element,
        "num_layers": hf.num_hidden_layers,
        "hidden_size": hf.hidden_size,
        "vocab_size": hf.vocab_size,
        "max_model_len": llm.llm_engine.max_model_len,
        "num_kv_blocks": engine.kv_cache.num_blocks,
        "block_size": engine.kv_cache.block_size,
        "device": str(llm.llm_engine.config.device),
    }


def release() -> None:
    """Collect garbage and return cached device memory, so the next model fits (the caller drops
    its own references first)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            logger.info("device memory after release: %.1f GiB allocated by torch, %.1f of %.1f GiB free",
                        torch.cuda.memory_allocated() / 2**30, free / 2**30, total / 2**30)
    except ImportError:
        pass


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def write_synthetic_tokenizer(directory: str, vocab_size: int, eos_token_id: int | None = None) -> None:
    """A word-level tokenizer of the model's vocabulary size in which id i decodes to "w<i>".

    A model with dummy weights and no tokenizer streams no text, so a server has nothing to send
    per token; with this, every token decodes to a short word and the server detokenizes and streams
    as it would for a real model (the cost of detokenizing is part of what a serving benchmark
    measures). Ids 1..95 are the printable ASCII characters instead, so that structured outputs
    (a JSON schema's braces, quotes and digits) can be spelled in this vocabulary too."""
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
