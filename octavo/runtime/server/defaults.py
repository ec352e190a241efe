"""What the server uses when a request or the tokenizer leaves something out: the chat template
(`--chat-template`) and the sampling defaults (`--generation-config`, vLLM's semantics: `auto`
reads the model's generation_config.json, `vllm` uses none, a directory is read instead).

Pure functions on paths and dicts; nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from typing import Any

# generation_config.json keys vLLM takes as sampling defaults (max_new_tokens aside: octavo's
# max_tokens default stays the API's).
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
GENERATION_CONFIG = "generation_config.json"


def load_chat_template(value: str | None) -> str | None:
    """--chat-template: a file's contents, or the value itself when it is a template. A value
    that looks like a path but names no file is an error (a typo must not become the template)."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if any(mark in value for mark in ("{", "}", "\n")):
        return value
    raise ValueError(f"--chat-template {value!r} looks like a file path, but there is no such file: "
                     "give an existing file or the template text itself")


def _generation_config_file(value: str) -> str:
    return value if os.path.isfile(value) else os.path.join(value, GENERATION_CONFIG)


def check_generation_config(value: str) -> str | None:
    """Why --generation-config cannot be used, or None (auto and vllm always can)."""
    if value in ("auto", "vllm"):
        return None
    path = _generation_config_file(value)
    if not os.path.isfile(path):
        return (f"--generation-config {value!r}: no {GENERATION_CONFIG} there; give auto (the model's), vllm "
                "(none) or a directory holding one")
    try:
        with open(path) as f:
            json.load(f)
    except (OSError, ValueError) as exc:
        return f"--generation-config {value!r}: cannot read {path} ({exc})"
    return None


def sampling_defaults(value: str, model_dir: str | None, override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling fields a request that leaves them out gets: from generation_config.json
    (auto: the model's; vllm: none; else the one at `value`), then `override` on top."""
    defaults: dict[str, Any] = {}
    path = None
    if value == "auto":
        path = os.path.join(model_dir, GENERATION_CONFIG) if model_dir else None
    elif value != "vllm":
        path = _generation_config_file(value)
    if path and os.path.isfile(path):
        with open(path) as f:
            config = json.load(f)
        defaults = {key: config[key] for key in SAMPLING_KEYS if config.get(key) is not None}
    defaults.update({key: val for key, val in (override or {}).items() if val is not None})
    unknown = sorted(set(defaults) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"override_generation_config key(s) {', '.join(unknown)} are not sampling defaults "
                         f"octavo applies; use {', '.join(SAMPLING_KEYS)}")
    return defaults
