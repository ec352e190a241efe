"""Checks on an LLMService that its OpenAPI schema cannot express, and the cluster's policy.

Pure functions serve two callers: the validating webhook (rejects the object before it is
stored) and the reconcile handler (when no webhook is configured, it refuses to deploy and says
why in a condition and an Event). Each message names the fix.

`check_llmservice` is about the spec making sense; `check_policy` about what cluster admins
allow a namespace user to make the operator run: which images, which Secrets its pods may read
(env valueFrom.secretKeyRef, apiKeySecretRef), which PersistentVolumeClaims they may mount.
Whoever may create an LLMService gets pods the operator makes for them, so without a policy
they could run any image with any Secret of the namespace. The Helm chart sets the policy from
its `policy` values, here and in a ValidatingAdmissionPolicy (the same rules in CEL).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from octavo.operator import model_source as ms
from octavo.operator.spec import LLMServiceSpec, runtime_image_default

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
    if not any(raw_model.get(k) for k in ("name", "path", "source")):
        errors.append("spec.model needs a source (hf://org/name, pvc://claim/path, oci://image "
                      "or a path), a name (hub id or demo name) or a path (a directory in the "
                      "container)")
        return errors
    draft_raw = ((spec or {}).get("speculative") or {}).get("draftModel")
    if draft_raw is not None and not any(draft_raw.get(k) for k in ("name", "path", "source")):
        errors.append("spec.speculative.draftModel needs a source, a name or a path")
        return errors
    errors += _source_errors(spec or {})
    if errors:
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


def _model_sources(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    models = [("spec.model", spec.get("model") or {})]
    draft = (spec.get("speculative") or {}).get("draftModel")
    if draft:
        models.append(("spec.speculative.draftModel", draft))
    return models


def _source_errors(spec: Mapping[str, Any]) -> list[str]:
    """Sources that do not parse, and a source set beside name or path (which one wins would
    be a guess)."""
    errors: list[str] = []
    for where, model in _model_sources(spec):
        if not model.get("source"):
            continue
        if model.get("name") or model.get("path"):
            errors.append(f"{where} sets source and {'name' if model.get('name') else 'path'}: "
                          "keep source (hf://org/name is the hub id's form)")
            continue
        try:
            ms.parse(str(model["source"]), model.get("revision"))
        except ms.SourceError as exc:
            errors.append(f"{where}.source: {exc}")
    return errors


def parsed_sources(spec: Mapping[str, Any] | None) -> list[tuple[str, ms.ModelSource]]:
    """(where, parsed source) for every model source of the spec that parses."""
    out: list[tuple[str, ms.ModelSource]] = []
    for where, model in _model_sources(spec or {}):
        try:
            if model.get("source"):
                out.append((f"{where}.source", ms.parse(str(model["source"]), model.get("revision"))))
        except ms.SourceError:
            pass
    return out


# --- policy ----------------------------------------------------------------------------------

ALLOWED_IMAGES_ENV = "OCTAVO_ALLOWED_IMAGES"
ALLOWED_SECRETS_ENV = "OCTAVO_ALLOWED_SECRETS"
ALLOWED_CLAIMS_ENV = "OCTAVO_ALLOWED_CLAIMS"
IMAGE_VOLUMES_ENV = "OCTAVO_IMAGE_VOLUMES"
_FIX = "or ask a cluster admin to add it to the octavo-operator chart value"


@dataclass(frozen=True)
class Policy:
    """What an LLMService may name; None for a kind means anything.

    images: a repository (any tag or digest of it: `ghcr.io/org/runtime`), a repository with a
    tag (`ghcr.io/org/runtime:1.2`), a prefix (`registry.local/ml/*`), or `*`. The operator's
    default runtime image is always allowed. secrets, claims: names, `*` matching any run of
    characters (`hf-*`). An empty tuple allows none."""

    images: tuple[str, ...] | None = None
    secrets: tuple[str, ...] | None = None
    claims: tuple[str, ...] | None = None
    image_volumes: bool = True  # oci:// sources (Kubernetes image volumes) allowed

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Policy:
        """From the operator's environment (comma-separated; unset: unrestricted, set and
        empty: nothing allowed)."""
        def read(name: str) -> tuple[str, ...] | None:
            value = environ.get(name)
            if value is None:
                return None
            return tuple(part.strip() for part in value.split(",") if part.strip())
        image_volumes = environ.get(IMAGE_VOLUMES_ENV, "true").strip().lower() in ("1", "true")
        return cls(images=read(ALLOWED_IMAGES_ENV), secrets=read(ALLOWED_SECRETS_ENV),
                   claims=read(ALLOWED_CLAIMS_ENV), image_volumes=image_volumes)


def image_allowed(image: str, allowed: tuple[str, ...] | None) -> bool:
    if allowed is None or "*" in allowed or image == runtime_image_default():
        return True
    for entry in allowed:
        if entry.endswith("/*"):
            if image.startswith(entry[:-1]):
                return True
        elif image == entry or image.startswith(entry + ":") or image.startswith(entry + "@"):
            return True
    return False


def name_allowed(name: str, allowed: tuple[str, ...] | None) -> bool:
    """`*` matches any run of characters; nothing else is special (the chart's CEL turns each
    pattern into the same regular expression)."""
    if allowed is None:
        return True
    return any(re.fullmatch(name_pattern(entry), name) for entry in allowed)


def name_pattern(entry: str) -> str:
    return re.escape(entry).replace(r"\*", ".*")


def secret_refs(spec: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(where, Secret name) for every Secret the spec makes its pods read."""
    refs: list[tuple[str, str]] = []
    for i, var in enumerate((spec or {}).get("env") or []):
        ref = ((var or {}).get("valueFrom") or {}).get("secretKeyRef")
        if isinstance(ref, Mapping):
            refs.append((f"spec.env[{i}] ({var.get('name', '')}) valueFrom.secretKeyRef",
                         str(ref.get("name") or "")))
    key_ref = (spec or {}).get("apiKeySecretRef")
    if isinstance(key_ref, Mapping):
        refs.append(("spec.apiKeySecretRef", str(key_ref.get("name") or "")))
    for where, model in _model_sources(spec or {}):
        token_ref = model.get("hubTokenSecretRef")
        if isinstance(token_ref, Mapping):
            refs.append((f"{where}.hubTokenSecretRef", str(token_ref.get("name") or "")))
    return refs


def check_policy(spec: Mapping[str, Any] | None, policy: Policy) -> list[str]:
    """What this spec names that the policy does not allow, empty when nothing."""
    errors: list[str] = []
    image = (spec or {}).get("image")
    if image and not image_allowed(str(image), policy.images):
        errors.append(f"spec.image {image!r} is not an allowed image "
                      f"({_listed(policy.images)}): leave spec.image out to run the default "
                      f"runtime image, {_FIX} policy.allowedImages")
    for where, name in secret_refs(spec):
        if not name_allowed(name, policy.secrets):
            errors.append(f"{where} names Secret {name!r}, which LLMServices may not read "
                          f"({_listed(policy.secrets)}): remove the reference, {_FIX} "
                          "policy.allowedSecrets")
    claims = [("spec.modelCache.claimName", ((spec or {}).get("modelCache") or {}).get("claimName"))]
    sources = parsed_sources(spec)
    claims += [(where, source.claim) for where, source in sources if source.kind == ms.PVC]
    for where, claim in claims:
        if claim and not name_allowed(str(claim), policy.claims):
            errors.append(f"{where} {claim!r} is not an allowed claim "
                          f"({_listed(policy.claims)}): {_FIX.replace('or ', '', 1)} "
                          "policy.allowedClaims")
    for where, source in sources:
        if source.kind != ms.OCI:
            continue
        if not policy.image_volumes:
            errors.append(f"{where} {source.display!r} needs Kubernetes image volumes, which "
                          "this cluster does not enable: use hf:// or pvc://, or ask a cluster "
                          "admin to set the octavo-operator chart value modelDelivery.imageVolumes")
        elif not image_allowed(source.location, policy.images):
            errors.append(f"{where} image {source.location!r} is not an allowed image "
                          f"({_listed(policy.images)}): {_FIX} policy.allowedImages")
    return errors


def _listed(allowed: tuple[str, ...] | None) -> str:
    return "allowed: " + ", ".join(allowed) if allowed else "none is allowed"
