"""Scenario 8 (#25): kstatus Ready on the real API server, server-side apply without drift, and
a model download that fails in a real Job (the node agent runs `octavo fetch-model`, offline)
shown as a condition while nothing is torn down."""

from __future__ import annotations

import pytest
import yaml

from e2e import serving
from e2e.cluster import wait_for

pytestmark = pytest.mark.e2e


def llmservice(name: str, spec: dict) -> dict:
    return {"apiVersion": serving.GROUP_VERSION, "kind": serving.KIND, "metadata": {"name": name},
            "spec": spec}


def test_kubectl_wait_ready_and_server_side_apply_twice(cluster, operator, crd, namespace):
    # No replicas: Ready needs no running pod, so the test is about conditions and drift alone.
    document = llmservice("idle", {"model": {"path": "/models/none"}, "replicas": 0,
                                   "resources": {"gpusPerReplica": 0}})
    manifest = yaml.safe_dump(document)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
    cluster.kubectl("wait", "--for=condition=Ready", "llmservice/idle", "-n", namespace,
                    "--timeout=120s", timeout_s=130)
    llms = serving.get(cluster, namespace, "idle")
    status = llms["status"]
    assert status["observedGeneration"] == llms["metadata"]["generation"]
    ready = serving.condition(llms, "Ready")
    assert ready["observedGeneration"] == llms["metadata"]["generation"]
    assert serving.condition(llms, "Reconciling")["status"] == "False"
    assert serving.condition(llms, "Stalled")["status"] == "False"
    assert status["url"] == f"http://idle.{namespace}.svc:8000"
    assert status["model"] == "/models/none"
    table = cluster.kubectl("get", "llms", "idle", "-n", namespace, "-o", "wide").stdout
    assert "/models/none" in table and "True" in table and status["url"] in table

    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
    again = serving.get(cluster, namespace, "idle")
    assert again["metadata"]["generation"] == llms["metadata"]["generation"]
    assert again["spec"] == llms["spec"]
    # And the API server sees no difference to make (exit 0: no diff).
    diff = cluster.kubectl("diff", "--server-side", "-n", namespace, "-f", "-", input=manifest,
                           check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_failed_download_is_a_condition(cluster, operator, crd, namespace):
    document = llmservice("fetch", {
        "model": {"source": "hf://octavo-e2e/not-there@v1"},
        "modelCache": {"size": "1Gi"},
        # Offline: snapshot_download fails at once, as a missing or gated model would.
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "resources": {"gpusPerReplica": 0}})
    serving.apply(cluster, namespace, document)

    def failed():
        cluster.check_alive()
        llms = serving.get(cluster, namespace, "fetch")
        cond = serving.condition(llms, "ModelReady")
        return llms if cond and cond.get("reason") == "DownloadFailed" else None

    llms = wait_for(failed, 180, "ModelReady=False/DownloadFailed", interval_s=1)
    assert llms["status"]["phase"] == "Blocked"
    assert serving.condition(llms, "Stalled")["status"] == "True"
    assert serving.condition(llms, "Ready")["status"] == "False"
    download = llms["status"]["download"]
    assert download["phase"] == "Failed" and "octavo-e2e/not-there" in download["message"]
    jobs = serving.owned(cluster, namespace, llms["metadata"]["uid"], "batch/v1", "jobs")
    assert [j["metadata"]["name"] for j in jobs] == [download["job"]]
    claims = serving.owned(cluster, namespace, llms["metadata"]["uid"], "v1",
                           "persistentvolumeclaims")
    assert [c["metadata"]["name"] for c in claims] == [download["claim"]]
    # Nothing was rolled out with weights that are not there.
    assert serving.owned(cluster, namespace, llms["metadata"]["uid"], "apps/v1",
                         "deployments") == []
    events = [e["reason"] for e in serving.events_for(cluster, namespace, "fetch")]
    assert "DownloadFailed" in events
