"""The volumes and mounts that bring a model's files into a pod: the model cache claim and the
pvc:// / oci:// sources. Pure; the serving Deployment and the validation Job share them."""

from __future__ import annotations

from typing import Any

from octavo.operator import model_source as ms
from octavo.operator.spec import LLMServiceSpec, ModelRef

CACHE_VOLUME = "model-cache"


def cache_volume(service_name: str, spec: LLMServiceSpec) -> dict[str, Any]:
    """The model cache: its claim (named, or operator-made), else an emptyDir the server
    downloads into."""
    claim = spec.cache_claim(service_name)
    if claim is not None:
        return {"name": CACHE_VOLUME, "persistentVolumeClaim": {
            "claimName": claim, "readOnly": not spec.cache_writable}}
    return {"name": CACHE_VOLUME, "emptyDir": {}}


def cache_mount(spec: LLMServiceSpec) -> dict[str, Any]:
    return {"name": CACHE_VOLUME, "mountPath": spec.cache_mount, "readOnly": not spec.cache_writable}


def _source_volume_name(ref: ModelRef) -> str:
    return f"model-source-{ref.role}"


def source_volume(ref: ModelRef) -> dict[str, Any] | None:
    """A pvc:// source's claim (read-only) or an oci:// source's image volume; None for the
    others (hf:// goes through the cache, paths are in the image or on the cache)."""
    parsed = ref.parsed
    if parsed is None:
        return None
    if parsed.kind == ms.PVC:
        return {"name": _source_volume_name(ref),
                "persistentVolumeClaim": {"claimName": parsed.claim, "readOnly": True}}
    if parsed.kind == ms.OCI:
        # Kubernetes image volumes (KEP-4639; beta in 1.33, behind the ImageVolume gate before):
        # the image's files, read-only, pulled like a container image.
        return {"name": _source_volume_name(ref),
                "image": {"reference": parsed.location, "pullPolicy": "IfNotPresent"}}
    return None


def source_volumes(spec: LLMServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) for every pvc:// / oci:// source of the spec (target and draft)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for ref in [spec.model] + ([spec.draft] if spec.draft is not None else []):
        volume = source_volume(ref)
        if volume is not None:
            volumes.append(volume)
            mounts.append({"name": volume["name"], "mountPath": ref.mount_dir(), "readOnly": True})
    return volumes, mounts
