"""Speculative decoding along three seams, each one file:

- a proposer drafts tokens for requests (proposer.py says what one is; draft_model.py: a small
  model with its own paged KV cache; ngram.py: prompt lookup, no model at all);
- verify.py checks a step's drafts against the target's logits (exact rejection sampling, or
  the argmax for greedy requests): pure functions the engine calls from its one execute path;
- controller.py chooses k, the draft tokens per request of the next step, from measured step
  times and acceptance (`step_k()` before a step, `record()` after it).

The scheduler sees drafts only as extra tokens of a request (`Request.spec_token_ids`).
"""

from __future__ import annotations

import importlib

from octavo.runtime.spec.proposer import Proposer


def build_proposer(method: str, **kwargs) -> Proposer:
    """The proposer of `method`: the module octavo.runtime.spec.<method> names its class in
    PROPOSER, so a new proposer is one new file."""
    return importlib.import_module(f"octavo.runtime.spec.{method}").PROPOSER(**kwargs)
