"""The model cache through reconcile() against kmock's emulator: one download per source,
replicas served from the claim, a failed download that leaves the running version serving, the
old claim removed once a new source serves; and the kstatus conditions along the way. The tests
play the Job controller (set_job_result with fetch-model's JSON result as the termination
message) and the Deployment controller (mark_deployment_ready)."""

from __future__ import annotations

import asyncio
import json

import pytest
from operator_helpers import mark_deployment_ready, obj, objs, set_job_result
from test_reconcile_kmock import (DEPLOYMENTS, JOBS, NS, condition, put_service, reconcile_once,
                                  status)

from octavo.operator import model_delivery

pytestmark = pytest.mark.timeout(60)
CLAIMS = "v1/persistentvolumeclaims"


def hf_spec(revision):
    return {"model": {"source": f"hf://org/model@{revision}"}, "modelCache": {"size": "20Gi"},
            "replicas": 2, "resources": {"gpusPerReplica": 0}}


def downloads(k8s):
    return [j for j in objs(k8s, JOBS, NS)
            if j["metadata"]["labels"].get("app.kubernetes.io/component") == "download"]


def model_arg(k8s, name):
    args = obj(k8s, DEPLOYMENTS, NS, name)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("--model") + 1]


async def finish_download(kube, job, ok=True, message=None):
    result = {"phase": "Succeeded", "message": "1 model(s) in the cache", "files": 5,
              "bytes": 4096} if ok else {"phase": "Failed", "message": message}
    await set_job_result(kube, job, 0 if ok else 1, json.dumps(result),
                         container=model_delivery.FETCH_CONTAINER)


def kstatus(k8s, name):
    return {t: condition(k8s, name, t)["status"] for t in ("Ready", "Reconciling", "Stalled")}


async def test_delivered_once_served_by_two_replicas_and_a_failure_keeps_serving(k8s, kube):
    put_service(k8s, "llm", hf_spec("v1"))
    outcome = await reconcile_once(kube, "llm")
    assert outcome.phase == "Deploying"
    job, = downloads(k8s)
    claim, = objs(k8s, CLAIMS, NS)
    assert obj(k8s, DEPLOYMENTS, NS, "llm") is None  # nothing rolls out before the weights
    st = status(k8s, "llm")
    assert st["download"]["phase"] == "Pending" and st["download"]["claim"] == \
        claim["metadata"]["name"]
    assert condition(k8s, "llm", "ModelReady")["status"] == "False"
    assert kstatus(k8s, "llm") == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}

    await finish_download(kube, job)
    assert (await reconcile_once(kube, "llm")).phase == "Deploying"
    assert model_arg(k8s, "llm") == "/models/hf/org--model/v1"
    assert obj(k8s, DEPLOYMENTS, NS, "llm")["spec"]["replicas"] == 2
    st = status(k8s, "llm")
    assert (st["download"]["phase"], st["download"]["files"], st["download"]["bytes"]) == \
        ("Succeeded", 5, 4096)
    assert condition(k8s, "llm", "ModelReady")["reason"] == "Cached"

    await mark_deployment_ready(kube, NS, "llm")
    for _ in range(3):  # replicas, restarts and repeated reconciles: the same claim, no new Job
        assert (await reconcile_once(kube, "llm")).phase == "Ready"
    assert len(downloads(k8s)) == 1 and len(objs(k8s, CLAIMS, NS)) == 1
    st = status(k8s, "llm")
    assert st["readyReplicas"] == 2 and st["url"] == "http://llm.ml.svc:8000"
    assert st["model"] == "hf://org/model@v1"
    assert kstatus(k8s, "llm") == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert condition(k8s, "llm", "Ready")["observedGeneration"] == 1
    served = obj(k8s, DEPLOYMENTS, NS, "llm")

    # A new revision whose download fails: a condition, and the running version keeps serving.
    put_service(k8s, "llm", hf_spec("v2"), generation=2)
    await reconcile_once(kube, "llm")
    new_job, = [j for j in downloads(k8s) if j["metadata"]["name"] != job["metadata"]["name"]]
    assert len(objs(k8s, CLAIMS, NS)) == 2  # a new claim; the old one still mounted
    await finish_download(kube, new_job, ok=False, message="hf://org/model@v2: 404 no revision")
    assert (await reconcile_once(kube, "llm")).phase == "Blocked"
    cond = condition(k8s, "llm", "ModelReady")
    assert (cond["status"], cond["reason"]) == ("False", "DownloadFailed")
    assert "404 no revision" in cond["message"]
    assert kstatus(k8s, "llm") == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert obj(k8s, DEPLOYMENTS, NS, "llm") == served
    assert model_arg(k8s, "llm") == "/models/hf/org--model/v1"
    assert status(k8s, "llm")["readyReplicas"] == 2
    assert condition(k8s, "llm", "Available")["status"] == "True"

    # Fixed: v3 downloads, rolls out, and once it serves the older claims and Jobs go.
    put_service(k8s, "llm", hf_spec("v3"), generation=3)
    await reconcile_once(kube, "llm")
    v3_job, = [j for j in downloads(k8s) if j["metadata"]["name"] not in
               (job["metadata"]["name"], new_job["metadata"]["name"])]
    await finish_download(kube, v3_job)
    await reconcile_once(kube, "llm")
    assert model_arg(k8s, "llm") == "/models/hf/org--model/v3"
    assert len(objs(k8s, CLAIMS, NS)) == 3  # not before the new version serves
    await mark_deployment_ready(kube, NS, "llm")
    assert (await reconcile_once(kube, "llm")).phase == "Ready"
    claim, = objs(k8s, CLAIMS, NS)
    assert claim["metadata"]["name"] == status(k8s, "llm")["download"]["claim"]
    assert [j["metadata"]["name"] for j in downloads(k8s)] == [v3_job["metadata"]["name"]]


async def test_a_deleted_failed_job_is_retried(k8s, kube):
    put_service(k8s, "llm", hf_spec("v1"))
    await reconcile_once(kube, "llm")
    job, = downloads(k8s)
    await finish_download(kube, job, ok=False, message="connection reset")
    await reconcile_once(kube, "llm")
    assert status(k8s, "llm")["download"]["phase"] == "Failed"
    await asyncio.to_thread(kube.delete, "batch/v1", "Job", NS, job["metadata"]["name"])
    for pod in objs(k8s, "v1/pods", NS):
        await asyncio.to_thread(kube.delete, "v1", "Pod", NS, pod["metadata"]["name"])
    await reconcile_once(kube, "llm")
    assert len(downloads(k8s)) == 1 and status(k8s, "llm")["download"]["phase"] == "Pending"


async def test_path_models_fill_the_model_column_and_need_no_download(k8s, kube):
    put_service(k8s, "local", {"model": {"path": "/models/llama"},
                               "resources": {"gpusPerReplica": 0}})
    await reconcile_once(kube, "local")
    assert downloads(k8s) == [] and objs(k8s, CLAIMS, NS) == []
    assert status(k8s, "local")["model"] == "/models/llama"
    assert "download" not in status(k8s, "local")
    assert condition(k8s, "local", "ModelReady") is None
