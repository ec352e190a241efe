"""Speculative decoding along three seams, each one file:

- a proposer drafts tokens for requests (proposer.py says what one is; proposers/ holds one
  module per method: draft_model.py, a small model with its own paged KV cache; ngram.py,
  prompt lookup, no model at all);
- verify.py checks a step's drafts against the target's logits (exact rejection sampling, or
  the argmax for greedy requests): pure functions the engine calls from its one execute path;
- controller.py chooses k, the draft tokens per request of the next step, from measured step
  times and acceptance (`step_k()` before a step, `record()` after it).

The scheduler sees drafts only as extra tokens of a request (`Request.spec_token_ids`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from octavo.runtime.spec import proposers

if TYPE_CHECKING:
    from octavo.runtime.spec.proposer import Proposer


def methods() -> list[str]:
    """The speculative methods there are: the modules of spec/proposers (so a new proposer is one
    new file). Imports none of them (the config checks a method without torch)."""
    return sorted(m.name for m in pkgutil.iter_modules(proposers.__path__))


def build_proposer(method: str, **kwargs) -> "Proposer":
    return importlib.import_module(f"octavo.runtime.spec.proposers.{method}").PROPOSER(**kwargs)
