"""The harness itself: a real API server with RBAC, the controllers, and the test node agent
running pods, Jobs, Services and garbage collection. Needs nothing from octavo."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from e2e.cluster import E2E_DIR, wait_for, write_kubeconfig
from e2e.kube import Kube, KubeError, resource_path

pytestmark = pytest.mark.e2e

HTTP_SERVER = [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"]


def pinned_kubernetes_version() -> str:
    text = (E2E_DIR / "controlplane" / "go.mod").read_text()
    return re.search(r"k8s\.io/kubernetes (v[0-9.]+)", text).group(1)


def apply(cluster, namespace: str, *documents: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))


def test_api_server_is_the_pinned_release_with_rbac(cluster, namespace):
    version = cluster.kube.get("/version")
    assert version["gitVersion"] == pinned_kubernetes_version()

    # A service account with no role bound to it is refused: RBAC is enforced.
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    kubeconfig = Path(cluster.cp.workdir) / f"nobody-{namespace}.kubeconfig"
    write_kubeconfig(kubeconfig, cluster.cp.server, cluster.cp.ca.cert, {"token": token})
    with pytest.raises(KubeError) as refused:
        Kube(kubeconfig).get(resource_path("v1", "secrets", namespace))
    assert refused.value.status == 403
    denied = cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace,
                             f"--as=system:serviceaccount:{namespace}:nobody", check=False)
    assert denied.stdout.strip() == "no"

    # The node agent is a node: Node authorization lets it read only what its pods use.
    cluster.kubectl("create", "secret", "generic", "unrelated", "-n", namespace, "--from-literal=k=v")
    with pytest.raises(KubeError) as node_refused:
        Kube(cluster.cp.node_kubeconfig).get(resource_path("v1", "secrets", namespace, "unrelated"))
    assert node_refused.value.status == 403


def test_deployment_service_and_garbage_collection(cluster, namespace):
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                "name": "web", "image": "example.invalid/python:3", "command": HTTP_SERVER,
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            }]}},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    apply(cluster, namespace, deployment, service)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s", timeout_s=130)

    pods = cluster.pods(namespace, "app=web")
    assert len(pods) == 2
    pod_ips = {pod["status"]["podIP"] for pod in pods}
    assert len(pod_ips) == 2, "each pod gets its own address"

    def ready_addresses() -> set[str]:
        slices = cluster.kube.get(resource_path("discovery.k8s.io/v1", "endpointslices", namespace),
                                  labelSelector="kubernetes.io/service-name=web")["items"]
        return {address for s in slices for e in s.get("endpoints") or []
                if (e.get("conditions") or {}).get("ready") for address in e["addresses"]}

    wait_for(lambda: ready_addresses() == pod_ips, 30, "EndpointSlices listing both pods")
    cluster_ip = cluster.kube.get(resource_path("v1", "services", namespace, "web"))["spec"]["clusterIP"]

    def service_answers() -> bool:
        with urllib.request.urlopen(f"http://{cluster_ip}:80/", timeout=5) as response:
            return response.status == 200

    wait_for(service_answers, 30, "the Service's cluster IP to answer")

    # Owner references: deleting the Deployment removes its ReplicaSet and pods (garbage collector).
    cluster.kubectl("delete", "deployment/web", "-n", namespace, "--wait=false")
    wait_for(lambda: not cluster.kube.get(resource_path("apps/v1", "replicasets", namespace))["items"]
             and not cluster.pods(namespace, "app=web"), 90, "the ReplicaSet and pods to be collected")


def test_job_termination_message_and_service_account_volume(cluster, namespace):
    script = ("cat /var/run/secrets/kubernetes.io/serviceaccount/namespace > /tmp/ns && "
              "test -s /var/run/secrets/kubernetes.io/serviceaccount/token && "
              "printf '{\"namespace\": \"%s\", \"answer\": %s}' \"$(cat /tmp/ns)\" \"$ANSWER\" "
              "> /dev/termination-log")
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "probe", "image": "example.invalid/sh", "command": ["sh", "-c", script],
                            "env": [{"name": "ANSWER", "value": "42"}]}],
        }}},
    }
    apply(cluster, namespace, job)
    cluster.kubectl("wait", "--for=condition=Complete", "job/probe", "-n", namespace, "--timeout=60s",
                    timeout_s=70)
    pod = cluster.pods(namespace, "job-name=probe")[0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert json.loads(terminated["message"]) == {"namespace": namespace, "answer": 42}


def test_failed_container_falls_back_to_logs(cluster, namespace):
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fails"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "fails", "image": "example.invalid/sh", "terminationMessagePolicy": "FallbackToLogsOnError",
            "command": ["sh", "-c", "echo 'vocabulary differs' >&2; exit 3"]}]},
    }
    apply(cluster, namespace, pod)
    status = wait_for(lambda: (p := cluster.kube.get(resource_path("v1", "pods", namespace, "fails")))["status"]
                      .get("phase") == "Failed" and p["status"], 60, "the pod to fail")
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert "vocabulary differs" in terminated["message"]
