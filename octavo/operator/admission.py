"""Checks on an LLMService that its OpenAPI schema cannot express.

One pure function serves two callers: the validating webhook (rejects the object before it is
stored) and the reconcile handler (when no webhook is configured, it refuses to deploy and says
why in a condition and an Event). Each message names the fix.
"""

from __future__ import annotations

import re
from typing import Any

from octavo.operator.spec import LLMServiceSpec

# Services need an RFC 1035 label: the LLMService's name becomes the Service's.
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_RESERVED_ENV = {"OCTAVO_API_KEY"}


def check_llmservice(spec: dict[str, Any] | None, name: str | None = None) -> list[str]:
    """Problems with this LLMService, empty when it can be deployed."""
    errors: list[str] = []
    if name is not None and (len(name) > 63 or not _DNS_1035_LABEL.match(name)):
        errors.append(f"metadata.name {name!r} must be a DNS label (lower-case letters, digits and "
                      "'-', starting with a letter, at most 63 characters): its Service is "
                      "named after it")
    raw_model = (spec or {}).get("model") or {}
    if not raw_model.get("name") and not raw_model.get("path"):
        errors.append("spec.model needs a name (hub id or demo name) or a path (a directory in "
                      "the container)")
        return errors
    draft_raw = ((spec or {}).get("speculative") or {}).get("draftModel")
    if draft_raw is not None and not draft_raw.get("name") and not draft_raw.get("path"):
        errors.append("spec.speculative.draftModel needs a name or a path")
        return errors

    s = LLMServiceSpec.from_dict(spec)
    tp, gpus = s.tensor_parallel_size, s.gpus_per_replica
    if gpus == 0 and tp > 1:
        errors.append(f"tensorParallelSize {tp} needs GPUs: set resources.gpusPerReplica to {tp} "
                      "(or tensorParallelSize to 1 to serve on CPU)")
    elif gpus > 0 and gpus % tp != 0:
        lower, upper = (gpus // tp) * tp, (gpus // tp + 1) * tp
        options = " or ".join(str(n) for n in (lower, upper) if n > 0)
        errors.append(f"resources.gpusPerReplica ({gpus}) must be a multiple of "
                      f"tensorParallelSize ({tp}): set it to {options}")
    if s.draft is not None and (s.draft_source, s.draft.revision) == (s.model_source, s.model.revision):
        errors.append(f"spec.speculative.draftModel is the target itself ({s.model.display}): "
                      "choose a smaller draft from the same tokenizer family, or remove "
                      "spec.speculative")
    if s.autoscaling is not None:
        low, high = int(s.autoscaling.get("minReplicas", 1)), int(s.autoscaling["maxReplicas"])
        if high < low:
            errors.append(f"spec.autoscaling.maxReplicas ({high}) must be at least minReplicas "
                          f"({low})")
    seen: set[str] = set()
    for var in s.env:
        var_name = var.get("name", "")
        if var_name in seen:
            errors.append(f"spec.env sets {var_name} twice: keep one")
        seen.add(var_name)
        if var_name in _RESERVED_ENV:
            errors.append(f"spec.env sets {var_name}, which the operator sets from the API key "
                          "Secret: remove it, and name your Secret in spec.apiKeySecretRef (or "
                          "leave that out and the operator generates a key)")
    return errors
