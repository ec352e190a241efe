"""Scenario 8 (#25): a model delivered once through the cache (a real download Job running
`octavo fetch-model` against a fake hub) and served by two replicas, a pod restart that re-uses
the cache, a download failure shown as a condition while the old version keeps serving, kstatus
Ready through `kubectl wait`, and server-side apply without drift."""

from __future__ import annotations

import pytest
import yaml

from e2e import serving
from e2e.cluster import wait_for
from e2e.fake_hub import FakeHub
from e2e.kube import resource_path

pytestmark = pytest.mark.e2e


READY_TIMEOUT_S = 600  # two demo replicas starting on two busy cores
DEMO_REPO = "octavo-e2e/demo"


def demo_target_dir():
    from octavo.runtime import demo

    return demo.DEMO_TARGET_DIR


def cached_demo(name: str, hub_url: str, revision: str = "main", replicas: int = 2) -> dict:
    return llmservice(name, {
        "model": {"source": f"hf://{DEMO_REPO}@{revision}"},
        "modelCache": {"size": "1Gi"},
        "replicas": replicas, "dtype": "float32", "maxNumSeqs": 8, "maxModelLen": 512,
        "shutdownTimeoutSeconds": 5, "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "HF_ENDPOINT", "value": hub_url}],
        "resources": {"gpusPerReplica": 0, "memory": "2Gi", "cpu": "1"}})


def download_jobs(cluster, namespace: str) -> list[dict]:
    jobs = cluster.kube.get(resource_path("batch/v1", "jobs", namespace))["items"]
    return [j for j in jobs if j["metadata"]["labels"].get("app.kubernetes.io/component") == "download"]


def wait_ready(cluster, namespace: str, name: str) -> dict:
    cluster.kubectl("wait", "--for=condition=Ready", f"llmservice/{name}", "-n", namespace,
                    f"--timeout={READY_TIMEOUT_S}s", timeout_s=READY_TIMEOUT_S + 10)
    return serving.get(cluster, namespace, name)


def test_delivered_once_served_by_two_replicas_restart_reuses_failure_keeps_serving(
        cluster, operator, runtime_available, crd, namespace):
    files = sorted(p for p in demo_target_dir().rglob("*") if p.is_file())
    with FakeHub({DEMO_REPO: demo_target_dir()}) as hub:
        serving.apply(cluster, namespace, cached_demo("cached", hub.url))
        llms = wait_ready(cluster, namespace, "cached")
        assert llms["status"]["readyReplicas"] == 2
        download = llms["status"]["download"]
        assert download["phase"] == "Succeeded" and download["files"] == len(files)
        # One download for two replicas: each file fetched from the hub once, by one Job.
        assert hub.downloads[DEMO_REPO] == len(files)
        job, = download_jobs(cluster, namespace)
        pods = [p for p in cluster.pods(namespace, "app.kubernetes.io/component=server")
                if p["status"].get("phase") == "Running"]
        assert len(pods) == 2
        for pod in pods:
            claim, = [v["persistentVolumeClaim"] for v in pod["spec"]["volumes"]
                      if "persistentVolumeClaim" in v]
            assert claim == {"claimName": download["claim"], "readOnly": True}
            args = pod["spec"]["containers"][0]["args"]
            assert args[args.index("--model") + 1] == f"/models/hf/{DEMO_REPO.replace('/', '--')}/main"
        base_url = serving.service_url(cluster, namespace, llms)
        key = serving.api_key(cluster, namespace, llms)
        assert serving.served_model(base_url, key) == DEMO_REPO
        assert serving.complete(base_url, DEMO_REPO, api_key=key)["usage"]["completion_tokens"] >= 1

        # A pod restart (deleted; the ReplicaSet makes another) mounts the same claim: no Job,
        # no hub request.
        gone = pods[0]["metadata"]["name"]
        cluster.kube.delete(resource_path("v1", "pods", namespace, gone))

        def replaced():
            cluster.check_alive()
            ready = [p for p in cluster.pods(namespace, "app.kubernetes.io/component=server")
                     if p["metadata"]["name"] != gone and p["status"].get("phase") == "Running"
                     and any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in p["status"].get("conditions") or [])]
            return ready if len(ready) == 2 else None

        wait_for(replaced, READY_TIMEOUT_S, "a replacement pod Ready", interval_s=1)
        assert hub.downloads[DEMO_REPO] == len(files)
        assert [j["metadata"]["name"] for j in download_jobs(cluster, namespace)] == \
            [job["metadata"]["name"]]

        # A revision the hub does not have: DownloadFailed, and the running version serves on.
        broken = cached_demo("cached", hub.url)
        broken["spec"]["model"]["source"] = "hf://octavo-e2e/missing@v2"
        serving.apply(cluster, namespace, broken)

        current = wait_download_failed(cluster, namespace, "cached")
        assert "octavo-e2e/missing" in serving.condition(current, "ModelReady")["message"]
        assert serving.condition(current, "Stalled")["status"] == "True"
        assert current["status"]["readyReplicas"] == 2
        deployment = serving.owned_deployment(cluster, namespace, current)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--model") + 1] == f"/models/hf/{DEMO_REPO.replace('/', '--')}/main"
        assert serving.complete(base_url, DEMO_REPO, api_key=key)["usage"]["completion_tokens"] >= 1
        assert len(download_jobs(cluster, namespace)) == 2
        assert hub.downloads[DEMO_REPO] == len(files)


def wait_download_failed(cluster, namespace: str, name: str) -> dict:
    """The LLMService once its ModelReady condition says DownloadFailed (at most 180 s)."""
    def failed():
        cluster.check_alive()
        current = serving.get(cluster, namespace, name)
        cond = serving.condition(current, "ModelReady")
        return current if cond and cond.get("reason") == "DownloadFailed" else None

    return wait_for(failed, 180, "ModelReady=False/DownloadFailed", interval_s=1)


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
    table = cluster.kubectl("get", "llms", "idle", "-n", namespace).stdout
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

    llms = wait_download_failed(cluster, namespace, "fetch")
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


def test_admission_policy_covers_delivery_fields(cluster, operator, crd, namespace):
    """The chart's ValidatingAdmissionPolicy (CEL in the real API server) and the webhook refuse
    oci:// sources while modelDelivery.imageVolumes is off, and hub tokens from Secrets outside
    policy.allowedSecrets."""
    oci = serving.example("model-oci.yaml")
    refused = serving.apply(cluster, namespace, oci, check=False)
    assert refused.returncode != 0 and "modelDelivery.imageVolumes" in refused.stderr, \
        refused.stderr
    token = llmservice("token", {"model": {"source": "hf://org/m",
                                           "hubTokenSecretRef": {"name": "payments"}},
                                 "resources": {"gpusPerReplica": 0}})
    refused = serving.apply(cluster, namespace, token, check=False)
    assert refused.returncode != 0 and "payments" in refused.stderr, refused.stderr
    allowed = llmservice("token", {"model": {"source": "hf://org/m",
                                             "hubTokenSecretRef": {"name": "hf-token"}},
                                   "replicas": 0, "resources": {"gpusPerReplica": 0}})
    serving.apply(cluster, namespace, allowed)
