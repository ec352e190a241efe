"""The model cache: the claim the operator creates, the download Job that fills it once, and
what that Job's state means. Pure builders and readers; reconcile.py does the I/O.

One claim and one Job per delivery hash (spec.delivery_hash(): the hf:// sources and their
revisions), so a changed source gets a new claim and Job while the old claim keeps serving the
running Deployment; the old claim goes once the new version serves (reconcile.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from octavo.operator import crd, model_volumes, pod_override, resources
from octavo.operator.spec import LLMServiceSpec

FETCH_CONTAINER = "fetch-model"
LABEL_DELIVERY_HASH = f"{crd.GROUP}/delivery-hash"
COMPONENT_CACHE = "model-cache"
COMPONENT_DOWNLOAD = "download"
DEFAULT_ACCESS_MODES = ["ReadWriteOnce"]
DEFAULT_DOWNLOAD_TIMEOUT_SECONDS = 6 * 3600
# A crash or an eviction: the Job retries its pod a few times (snapshot_download resumes). Exit
# 1 is fetch-model's reported failure (a 401, a missing revision): final, the result says why.
DOWNLOAD_BACKOFF_LIMIT = 3
EXIT_FETCH_FAILED = 1
HF_TOKEN_ENV = "HF_TOKEN"
FETCH_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                   "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "4Gi"}}

PENDING, DOWNLOADING, SUCCEEDED, FAILED = "Pending", "Downloading", "Succeeded", "Failed"


def _meta(body: dict[str, Any], name: str, component: str, delivery_hash: str) -> dict[str, Any]:
    service = body["metadata"]["name"]
    return {"name": name, "namespace": body["metadata"].get("namespace", "default"),
            "labels": {**resources.labels(service, component),
                       LABEL_DELIVERY_HASH: delivery_hash[:63]},
            "ownerReferences": [resources.owner_reference(body)]}


def cache_claim(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any] | None:
    """The PersistentVolumeClaim the operator creates for modelCache.size; None when the spec
    names its own claim (or has no cache)."""
    if not spec.cache_claim_owned:
        return None
    service = body["metadata"]["name"]
    cache = spec.model_cache or {}
    claim_spec: dict[str, Any] = {
        "accessModes": list(cache.get("accessModes") or DEFAULT_ACCESS_MODES),
        "resources": {"requests": {"storage": str(cache["size"])}},
    }
    if cache.get("storageClassName"):
        claim_spec["storageClassName"] = cache["storageClassName"]
    name = spec.cache_claim(service)
    assert name is not None
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(body, name, COMPONENT_CACHE, spec.delivery_hash() or "none"),
            "spec": claim_spec}


def download_job_name(service_name: str, delivery_hash: str) -> str:
    """Deterministic from what it fetches; fits a label value (the Job controller's)."""
    return f"{service_name[:40].rstrip('-')}-fetch-{delivery_hash[:12]}"


def fetch_args(spec: LLMServiceSpec) -> list[str]:
    args = ["octavo", "fetch-model"]
    for ref in spec.downloads():
        parsed = ref.parsed
        assert parsed is not None
        args += ["--source", parsed.display, "--dest", f"{spec.cache_mount}/{ref.cache_dir()}"]
    return args + ["--result", resources.TERMINATION_LOG]


def _token_env(spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """HF_TOKEN from the first hubTokenSecretRef among the fetched models (convention: key
    HF_TOKEN), else from the spec's own env if it sets HF_TOKEN."""
    for ref in spec.downloads():
        if ref.hub_token_secret:
            return [{"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
                "name": ref.hub_token_secret["name"],
                "key": ref.hub_token_secret.get("key", HF_TOKEN_ENV)}}}]
    return [dict(var) for var in spec.env if var.get("name") in ("HF_TOKEN", "HF_ENDPOINT",
                                                                  "HF_HUB_OFFLINE")]


def download_job(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any]:
    """The Job that fetches the spec's hf:// sources into the cache claim (mounted writable here
    only); its result is the pod's termination message."""
    service = body["metadata"]["name"]
    delivery_hash = spec.delivery_hash()
    assert delivery_hash is not None, "only hf:// sources with a modelCache are downloaded"
    claim = spec.cache_claim(service)
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf"},
           {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"}, *_token_env(spec)]
    container = {
        "name": FETCH_CONTAINER,
        "image": spec.image,
        "command": fetch_args(spec),
        "env": env,
        "resources": copy.deepcopy(FETCH_RESOURCES),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": model_volumes.CACHE_VOLUME, "mountPath": spec.cache_mount}],
        "terminationMessagePath": resources.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "privileged": False, "capabilities": {"drop": ["ALL"]}},
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    {"name": model_volumes.CACHE_VOLUME,
                     "persistentVolumeClaim": {"claimName": claim}}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    # The pod override's pull secrets and placement: the Job runs spec.image too, and its claim
    # may only be reachable from the nodes the serving pods land on.
    pod_spec = pod_override.with_placement(pod_spec, spec.pod_template)
    meta = _meta(body, download_job_name(service, delivery_hash), COMPONENT_DOWNLOAD,
                 delivery_hash)
    timeout = int((spec.model_cache or {}).get("downloadTimeoutSeconds")
                  or DEFAULT_DOWNLOAD_TIMEOUT_SECONDS)
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "backoffLimit": DOWNLOAD_BACKOFF_LIMIT,
            "activeDeadlineSeconds": timeout,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": FETCH_CONTAINER, "operator": "In",
                                "values": [EXIT_FETCH_FAILED]},
            }]},
            "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec},
        },
    }


@dataclass(frozen=True)
class Download:
    """What the download Job says, for status.download and the ModelReady condition."""

    phase: str
    message: str
    files: int | None = None
    bytes: int | None = None

    def record(self, spec: LLMServiceSpec, service_name: str) -> dict[str, Any]:
        delivery_hash = spec.delivery_hash() or ""
        out: dict[str, Any] = {
            "phase": self.phase, "hash": delivery_hash,
            "job": download_job_name(service_name, delivery_hash),
            "claim": spec.cache_claim(service_name) or "",
            "models": [ref.display for ref in spec.downloads()],
            "message": self.message}
        if self.files is not None:
            out["files"] = self.files
        if self.bytes is not None:
            out["bytes"] = self.bytes
        return out


def parse_result(message: str | None) -> dict[str, Any] | None:
    """fetch-model's JSON result from a termination message; a non-JSON message (the log tail
    under FallbackToLogsOnError) becomes a Failed result naming it."""
    if not message:
        return None
    try:
        document = json.loads(message)
    except ValueError:
        tail = " | ".join(message.strip().splitlines()[-3:])
        return {"phase": FAILED, "message": f"fetch-model crashed: {tail}"[:512]}
    return document if isinstance(document, dict) else None


def download_state(job: dict[str, Any] | None, results: list[dict[str, Any]]) -> Download:
    """The Job and its pods' results (oldest first) -> the download's phase and progress."""
    if job is None:
        return Download(PENDING, "the download Job is being created")
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    last = results[-1] if results else {}
    files, size = last.get("files"), last.get("bytes")
    if "Complete" in conditions:
        done = next((r for r in reversed(results) if r.get("phase") == SUCCEEDED), last)
        return Download(SUCCEEDED, str(done.get("message") or "the model is in the cache"),
                        done.get("files"), done.get("bytes"))
    if "Failed" in conditions:
        cond = conditions["Failed"]
        why = last.get("message") or f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}"
        return Download(FAILED, f"the download Job failed: {why}".rstrip(": "), files, size)
    active = int((job.get("status") or {}).get("active") or 0)
    if active:
        retry = f" (after {len(results)} failed attempt(s): {last.get('message')})" if results \
            else ""
        return Download(DOWNLOADING, f"downloading into the model cache{retry}", files, size)
    return Download(PENDING, "the download Job's pod is starting")
