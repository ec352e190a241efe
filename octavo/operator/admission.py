"""Checks on an LLMService that its OpenAPI schema cannot express, and the cluster's policy.

Pure functions serve two callers: the validating webhook (rejects the object before it is
stored) and the reconcile handler (when no webhook is configured, it refuses to deploy and says
why in a condition and an Event). Each message names the fix.

`check_llmservice` is about the spec making sense; `check_policy` about what cluster admins
allow a namespace user to make the operator run: which images (spec.image, oci:// sources, the
endpoint picker's, spec.podTemplate image volumes), which Secrets its pods may read (env
valueFrom.secretKeyRef, apiKeySecretRef, hubTokenSecretRef, spec.podTemplate's), which
PersistentVolumeClaims they may mount, which ServiceAccount they may run as, and whether image
volumes may be used at all.
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

from octavo.operator import extra_args, inference_pool, pod_override, resources, scaling
from octavo.operator import model_source as ms
from octavo.operator.spec import MODEL_SOURCES_MOUNT, LLMServiceSpec, runtime_image_default

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
    if s.autoscaling is not None and int(s.autoscaling.get("minReplicas", 1)) == 0 and \
            scaling.mode(s.autoscaling) != scaling.MODE_KEDA:
        errors.append("spec.autoscaling.minReplicas 0 (scale to zero) needs mode KEDA: an HPA "
                      "cannot scale to zero")
    if scaling.mode(s.autoscaling) == scaling.MODE_KEDA and \
            not (s.autoscaling.get("keda") or {}).get("prometheusServerAddress"):
        errors.append("spec.autoscaling.mode KEDA needs keda.prometheusServerAddress (the "
                      "Prometheus KEDA queries)")
    errors += pod_override.check(s.pod_template, s.cache_mount, MODEL_SOURCES_MOUNT)
    # The server's parser only when the rest is sound: its message is about the flags alone.
    if not errors:
        errors += extra_args.check(s.extra_args, resources.operator_serve_args(s)[2:])
    override_env = pod_override.server_env(s.pod_template)
    seen: set[str] = set()
    for where, var in [("spec.env", v) for v in s.env] + \
            [("spec.podTemplate.spec.containers[server].env", v) for v in override_env]:
        var_name = var.get("name", "")
        if var_name in seen:
            errors.append(f"{where} sets {var_name} twice: keep one" if where == "spec.env" else
                          f"{where} sets {var_name}, which spec.env sets too: keep one")
        seen.add(var_name)
        if var_name in _RESERVED_ENV:
            errors.append(f"{where} sets {var_name}, which the operator sets from the API key "
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
ALLOWED_SERVICE_ACCOUNTS_ENV = "OCTAVO_ALLOWED_SERVICE_ACCOUNTS"
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
    # spec.podTemplate.spec.serviceAccountName: a pod running as a ServiceAccount can hold its
    # token, so naming one is a right the admins grant, like a Secret.
    service_accounts: tuple[str, ...] | None = None

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
                   claims=read(ALLOWED_CLAIMS_ENV), image_volumes=image_volumes,
                   service_accounts=read(ALLOWED_SERVICE_ACCOUNTS_ENV))


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
    refs += pod_override.secret_refs((spec or {}).get("podTemplate"))
    return refs


def image_refs(spec: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(where, image) for every image the spec makes the operator run or mount, but its oci://
    model sources (model_images): spec.image, the endpoint picker's, the pod override's image
    volumes."""
    refs: list[tuple[str, str]] = []
    if (spec or {}).get("image"):
        refs.append(("spec.image", str(spec["image"])))
    picker = (((spec or {}).get("inferencePool") or {}).get("endpointPicker") or {})
    if picker.get("image"):
        refs.append(("spec.inferencePool.endpointPicker.image", str(picker["image"])))
    refs += pod_override.image_refs((spec or {}).get("podTemplate"))
    return refs


def model_images(spec: Mapping[str, Any] | None) -> list[tuple[str, ms.ModelSource]]:
    """(where, source) for the spec's oci:// model sources (Kubernetes image volumes)."""
    return [(where, source) for where, source in parsed_sources(spec) if source.kind == ms.OCI]


def claim_refs(spec: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(where, PersistentVolumeClaim name) for every claim the spec names for its pods to mount
    (the claim the operator makes for modelCache.size is its own, not named here)."""
    refs: list[tuple[str, str]] = []
    claim = ((spec or {}).get("modelCache") or {}).get("claimName")
    if claim:
        refs.append(("spec.modelCache.claimName", str(claim)))
    refs += [(where, str(source.claim)) for where, source in parsed_sources(spec)
             if source.kind == ms.PVC]
    refs += pod_override.claim_refs((spec or {}).get("podTemplate"))
    return refs


def check_policy(spec: Mapping[str, Any] | None, policy: Policy) -> list[str]:
    """What this spec names that the policy does not allow, empty when nothing."""
    errors: list[str] = []
    for where, image in image_refs(spec):
        if not image_allowed(image, policy.images) and image != inference_pool.epp_image({}):
            default = ("leave spec.image out to run the default runtime image, "
                       if where == "spec.image" else "")
            errors.append(f"{where} {image!r} is not an allowed image "
                          f"({_listed(policy.images)}): {default}{_FIX} policy.allowedImages")
    for where, name in secret_refs(spec):
        if not name_allowed(name, policy.secrets):
            errors.append(f"{where} names Secret {name!r}, which LLMServices may not read "
                          f"({_listed(policy.secrets)}): remove the reference, {_FIX} "
                          "policy.allowedSecrets")
    account = (((spec or {}).get("podTemplate") or {}).get("spec") or {}).get("serviceAccountName")
    if account and not name_allowed(str(account), policy.service_accounts):
        errors.append(f"spec.podTemplate.spec.serviceAccountName {account!r} is not an allowed "
                      f"ServiceAccount ({_listed(policy.service_accounts)}): leave it out (the "
                      f"pods run as the namespace's default, with no token), {_FIX} "
                      "policy.allowedServiceAccounts")
    for where, claim in claim_refs(spec):
        if not name_allowed(claim, policy.claims):
            errors.append(f"{where} {claim!r} is not an allowed claim "
                          f"({_listed(policy.claims)}): {_FIX.replace('or ', '', 1)} "
                          "policy.allowedClaims")
    for where, source in model_images(spec):
        if not policy.image_volumes:
            errors.append(f"{where} {source.display!r} needs Kubernetes image volumes, which "
                          "this cluster does not enable: use hf:// or pvc://, or ask a cluster "
                          "admin to set the octavo-operator chart value modelDelivery.imageVolumes")
        elif not image_allowed(source.location, policy.images):
            errors.append(f"{where} image {source.location!r} is not an allowed image "
                          f"({_listed(policy.images)}): {_FIX} policy.allowedImages")
    if not policy.image_volumes:
        for where, image in pod_override.image_refs((spec or {}).get("podTemplate")):
            errors.append(f"{where} {image!r} is a Kubernetes image volume, which this cluster "
                          "does not enable: remove it, or ask a cluster admin to set the "
                          "octavo-operator chart value modelDelivery.imageVolumes")
    return errors


def _listed(allowed: tuple[str, ...] | None) -> str:
    return "allowed: " + ", ".join(allowed) if allowed else "none is allowed"
