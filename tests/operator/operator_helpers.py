"""Helpers for the operator's tests: the examples, objects as the API server returns them, reading
kmock's emulator state, and the parts of the Kubernetes controllers kmock does not have (the Job
controller and kubelet for validation Jobs, the Deployment controller)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
K8S_VERSION = "1.34"  # the e2e control plane's; kubernetes-validate checks against it


def load_example(name: str) -> dict[str, Any]:
    with open(EXAMPLES / name) as f:
        return yaml.safe_load(f)


def as_stored(obj: dict[str, Any], namespace: str = "ml", uid: str = "uid-1234",
              generation: int = 1) -> dict[str, Any]:
    """An object as the API server would return it: namespaced, with a uid and generation."""
    out = json.loads(json.dumps(obj))
    out["metadata"] = {**out["metadata"], "namespace": namespace, "uid": uid,
                       "generation": generation}
    return out


# --- kmock -----------------------------------------------------------------------------------

RESOURCES = {
    "serving.octavo.dev/v1alpha1/llmservices": ("LLMService", ["status", "scale"]),
    "apps/v1/deployments": ("Deployment", ["status", "scale"]),
    "v1/services": ("Service", ["status"]),
    "v1/pods": ("Pod", ["status"]),
    "v1/secrets": ("Secret", []),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", []),
    "v1/events": ("Event", []),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", ["status"]),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", ["status"]),
    "batch/v1/jobs": ("Job", ["status"]),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", ["status"]),
}


def key(resource: str, namespace: str, name: str) -> tuple[Any, str, str]:
    """An emulator object key (`in` needs the parsed resource; indexing parses strings)."""
    import kmock

    return kmock.resource(resource), namespace, name


def exists(k8s, resource: str, namespace: str, name: str) -> bool:
    k = key(resource, namespace, name)
    return k in k8s.objects and not k8s.objects[k].deleted


def obj(k8s, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The emulator's current state of one object (None if absent or deleted)."""
    key = (resource, namespace, name)
    if not exists(k8s, resource, namespace, name):
        return None
    return json.loads(json.dumps(dict(k8s.objects[key].raw)))


def objs(k8s, resource: str, namespace: str) -> list[dict[str, Any]]:
    out = []
    for (res, ns, _name), item in k8s.objects.items():
        if str(res.plural) == resource.rsplit("/", 1)[-1] and ns == namespace and not item.deleted:
            out.append(json.loads(json.dumps(dict(item.raw))))
    return out


def _check_pair(command: list[str], tmp_path: Path, job_name: str) -> tuple[int, str]:
    import argparse

    from octavo.operator import check_pair, resources

    assert command[:2] == ["octavo", "check-pair"], command
    command = list(command)
    log_path = tmp_path / f"{job_name}.termination-log"
    command[command.index(resources.TERMINATION_LOG)] = str(log_path)
    parser = argparse.ArgumentParser(prog="octavo check-pair")
    check_pair.add_arguments(parser)
    with contextlib.redirect_stdout(io.StringIO()):
        code = check_pair.run(parser.parse_args(command[2:]))
    return code, log_path.read_text() if log_path.exists() else ""


async def run_validation_job(kube, job: dict[str, Any], tmp_path: Path) -> int:
    """Be the Job controller and kubelet for a validation Job: run its container's command (it
    is `octavo check-pair ...`) in-process, with the termination log redirected to a file; then
    record, through the API, a pod with that termination message and the Job's final condition.
    Returns the exit code."""
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    code, message = await asyncio.to_thread(_check_pair, command, tmp_path, job["metadata"]["name"])
    await set_job_result(kube, job, code, message)
    return code


async def set_job_result(kube, job: dict[str, Any], exit_code: int, message: str,
                         container: str = "check-pair") -> None:
    meta = job["metadata"]
    namespace = meta["namespace"]
    suffix = uuid.uuid4().hex[:5]  # a retried Job (same name) gets pods of its own
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{meta['name']}-{suffix}", "namespace": namespace,
                     "uid": f"pod-{meta['name']}-{suffix}",
                     "labels": {"job-name": meta["name"],
                                "batch.kubernetes.io/job-name": meta["name"],
                                "batch.kubernetes.io/controller-uid": meta.get("uid", "")}},
        "status": {"phase": "Succeeded" if exit_code == 0 else "Failed",
                   "containerStatuses": [{"name": container, "state": {"terminated": {
                       "exitCode": exit_code, "message": message,
                       "reason": "Completed" if exit_code == 0 else "Error"}}}]},
    }
    condition = ({"type": "Complete", "status": "True"} if exit_code == 0 else
                 {"type": "Failed", "status": "True",
                  "reason": "PodFailurePolicy" if exit_code == 1 else "BackoffLimitExceeded",
                  "message": "Job has reached the specified backoff limit"})
    job_status = {"conditions": [condition], "succeeded" if exit_code == 0 else "failed": 1}
    await asyncio.to_thread(kube.create, pod)
    await asyncio.to_thread(kube.patch_status, "batch/v1", "Job", namespace, meta["name"],
                            job_status)


async def mark_deployment_ready(kube, namespace: str, name: str, ready: int | None = None) -> None:
    """Be the Deployment controller: all replicas updated and ready."""
    deployment = await asyncio.to_thread(kube.get, "apps/v1", "Deployment", namespace, name)
    assert deployment is not None
    replicas = deployment["spec"].get("replicas", 1) if ready is None else ready
    await asyncio.to_thread(kube.patch_status, "apps/v1", "Deployment", namespace, name, {
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
        "availableReplicas": replicas})


def assert_declared(schema: dict, value: Any, path: str, schema_name: str) -> None:
    """Every field of `value` is declared in `schema` (an API server would prune an undeclared
    one silently); below x-kubernetes-preserve-unknown-fields anything goes."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            assert key in schema["properties"], f"{path}.{key} is not in {schema_name}"
            assert_declared(schema["properties"][key], sub, f"{path}.{key}", schema_name)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            assert_declared(schema["items"], item, f"{path}[]", schema_name)
