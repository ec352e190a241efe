"""Scenario 5: the operator owns what it creates. Hand edits of the Deployment are undone,
deleting the LLMService removes everything it owns, and an operator killed mid-reconcile is
restarted (by the node agent, as a kubelet would) and converges."""

from __future__ import annotations

import os
import signal

import pytest

from e2e import serving
from e2e.cluster import wait_for
from e2e.kube import resource_path

pytestmark = pytest.mark.e2e

OWNED_KINDS = [("apps/v1", "deployments"), ("v1", "services"), ("batch/v1", "jobs"),
               ("policy/v1", "poddisruptionbudgets"), ("autoscaling/v2", "horizontalpodautoscalers")]


def wait_owned_deployment(cluster, namespace: str, name: str, timeout_s: float = 120) -> tuple[dict, dict]:
    def found():
        cluster.check_alive()
        llms = serving.get(cluster, namespace, name)
        deployments = serving.owned(cluster, namespace, llms["metadata"]["uid"], "apps/v1", "deployments")
        return (llms, deployments[0]) if deployments else None

    return wait_for(found, timeout_s, f"the Deployment of {name}", interval_s=1)


def test_hand_edits_of_the_deployment_are_restored(cluster, operator, namespace):
    document = serving.example("demo.yaml")
    name = document["metadata"]["name"]
    serving.apply(cluster, namespace, document)
    llms, deployment = wait_owned_deployment(cluster, namespace, name)
    path = resource_path("apps/v1", "deployments", namespace, deployment["metadata"]["name"])
    replicas = deployment["spec"]["replicas"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]

    cluster.kubectl("scale", f"deployment/{deployment['metadata']['name']}", "-n", namespace,
                    f"--replicas={replicas + 2}")
    wait_for(lambda: cluster.kube.get(path)["spec"]["replicas"] == replicas, 120,
             f"replicas restored to {replicas}", interval_s=1)

    container = deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    cluster.kubectl("set", "image", f"deployment/{deployment['metadata']['name']}", "-n", namespace,
                    f"{container}=example.invalid/hand-edited:1")
    wait_for(lambda: cluster.kube.get(path)["spec"]["template"]["spec"]["containers"][0]["image"] == image,
             120, f"image restored to {image}", interval_s=1)


def test_deleting_the_llmservice_removes_what_it_owns(cluster, operator, namespace):
    document = serving.example("demo.yaml")
    name = document["metadata"]["name"]
    serving.apply(cluster, namespace, document)
    llms, _ = wait_owned_deployment(cluster, namespace, name)
    uid = llms["metadata"]["uid"]
    wait_for(lambda: serving.owned(cluster, namespace, uid, "v1", "services"), 60, "the owned Service")

    cluster.kubectl("delete", "llms", name, "-n", namespace, "--wait=false")

    def nothing_owned() -> bool:
        remaining = [f"{plural}/{item['metadata']['name']}" for version, plural in OWNED_KINDS
                     for item in serving.owned(cluster, namespace, uid, version, plural)]
        return not remaining and not cluster.kube.get_or_none(serving.llms_path(namespace, name))

    wait_for(nothing_owned, 120, "the LLMService and everything it owned to be gone", interval_s=1)
    wait_for(lambda: not cluster.pods(namespace), 120, "the runtime pods to be gone", interval_s=1)


def operator_pod(cluster, namespace: str) -> dict:
    pods = [p for p in cluster.pods(namespace) if p["status"].get("phase") == "Running"]
    assert len(pods) == 1, f"expected one running operator pod, found {[p['metadata']['name'] for p in pods]}"
    return pods[0]


def test_operator_killed_mid_reconcile_converges_after_restart(cluster, operator, runtime_available, namespace):
    document = serving.example("demo.yaml")
    name = document["metadata"]["name"]
    pod = operator_pod(cluster, operator["namespace"])
    pod_name = pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]["name"]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]

    serving.apply(cluster, namespace, document)
    # Mid-reconcile: the operator has started on this object but has not finished it.
    wait_for(lambda: (serving.get(cluster, namespace, name).get("status") or {}).get("phase")
             or serving.owned(cluster, namespace, serving.get(cluster, namespace, name)["metadata"]["uid"],
                              "apps/v1", "deployments"),
             120, "the operator to start reconciling", interval_s=0.2)
    assert (serving.get(cluster, namespace, name).get("status") or {}).get("phase") != "Ready"
    os.kill(cluster.container_pid(operator["namespace"], pod_name, container), signal.SIGKILL)

    wait_for(lambda: cluster.kube.get(resource_path("v1", "pods", operator["namespace"], pod_name))
             ["status"]["containerStatuses"][0]["restartCount"] > restarts, 60, "the operator to be restarted")
    serving.wait_phase(cluster, namespace, name, "Ready", 420)
    llms = serving.get(cluster, namespace, name)
    serving.owned_deployment(cluster, namespace, llms)  # exactly one, not a duplicate from the restart
