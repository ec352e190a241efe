"""The real kopf operator (octavo.operator.main's handlers) against kmock's Kubernetes emulator.

kopf logs in through a kubeconfig that points at the emulator, lists and watches LLMServices and
the owned kinds, and calls the handlers; the test writes through the API (so watchers see it)
as the user, the Job controller/kubelet and the Deployment controller would. Waiting is on
conditions with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import threading
import time

import pytest
from operator_helpers import mark_deployment_ready, obj, objs, run_validation_job

from octavo.operator import reconcile

pytestmark = pytest.mark.timeout(90)

NS = "ml"
LLMS = "serving.octavo.dev/v1alpha1/llmservices"
DEPLOYMENTS = "apps/v1/deployments"


async def eventually(check, timeout=20.0, what="condition"):
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def phase(k8s, name):
    body = obj(k8s, LLMS, NS, name)
    return body and body.get("status", {}).get("phase")


@pytest.fixture()
def kubeconfig(k8s, tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.url).rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The kubernetes library reads $KUBECONFIG once, at import; each test has its own emulator.
    import kubernetes.config.kube_config

    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


class OperatorThread:
    """kopf.operator() in a thread with its own event loop (as kopf.testing.KopfRunner does),
    so that its shutdown never cancels the test's own tasks; the emulator keeps serving on the
    test's loop meanwhile."""

    def __init__(self, kube):
        import kopf

        import octavo.operator.main  # noqa: F401  (registers the handlers)

        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self.memo = kopf.Memo(kube=kube)
        self._operator = functools.partial(
            kopf.operator, registry=kopf.get_default_registry(), standalone=True,
            namespaces=[NS], memo=self.memo,
            stop_flag=self.stop_flag, ready_flag=self.ready_flag)

    def _run(self):
        try:
            asyncio.run(self._operator())
        except BaseException as exc:  # re-raised in the test by stop()
            self.error = exc

    async def __aenter__(self):
        self.thread.start()
        assert await asyncio.to_thread(self.ready_flag.wait, 20), "kopf did not start"
        return self

    async def __aexit__(self, *exc_info):
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "kopf did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture()
async def operator(k8s, kubeconfig, monkeypatch, caplog):
    """The operator running against the emulator; stopped (bounded) at teardown."""
    from octavo.operator.kube import Kube

    caplog.set_level(logging.INFO)
    reconcile._locks.clear()
    kube = Kube()  # from the kubeconfig, as configure() would make it
    async with OperatorThread(kube) as running:
        kube.memo = running.memo  # the tests look at the operator's requeues through it
        yield kube


def service_body(name, spec):
    return {"apiVersion": "serving.octavo.dev/v1alpha1", "kind": "LLMService",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
            "spec": spec}


async def test_create_validate_deploy_ready_and_repair(k8s, operator, vocab_models, tmp_path):
    kube = operator
    spec = {"model": {"path": str(vocab_models["target"])},
            "speculative": {"draftModel": {"path": str(vocab_models["draft-same"])}},
            "resources": {"gpusPerReplica": 0}}
    await asyncio.to_thread(kube.create, service_body("svc", spec))

    jobs = await eventually(lambda: objs(k8s, "batch/v1/jobs", NS), what="the validation Job")
    assert await eventually(lambda: phase(k8s, "svc") == "Validating", what="Validating")
    assert obj(k8s, DEPLOYMENTS, NS, "svc") is None

    # The Job finishes: its event makes the operator roll out at once.
    assert await run_validation_job(kube, jobs[0], tmp_path) == 0
    await eventually(lambda: obj(k8s, DEPLOYMENTS, NS, "svc"), what="the Deployment")
    await eventually(lambda: phase(k8s, "svc") == "Deploying", what="Deploying")

    # The Deployment reports ready replicas: its event turns the service Ready.
    await mark_deployment_ready(kube, NS, "svc")
    await eventually(lambda: phase(k8s, "svc") == "Ready", what="Ready")
    body = obj(k8s, LLMS, NS, "svc")
    assert body["status"]["endpoint"] == "http://svc.ml.svc:8000/v1"
    assert "finalizers" not in body["metadata"]  # deletion is plain garbage collection

    # Someone edits the Deployment through the API: the watch sees it and the operator repairs it.
    good = obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]["spec"]["containers"]
    await asyncio.to_thread(kube.request, "PATCH", "/apis/apps/v1/namespaces/ml/deployments/svc",
                            {"spec": {"template": {"spec": {"containers": [
                                {"name": "server", "image": "other:latest"}]}}}},
                            None, "application/merge-patch+json")
    await eventually(lambda: obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]["spec"]
                     ["containers"] == good, what="the drift repaired")


async def test_operator_restart_resumes(k8s, kubeconfig, vocab_models, tmp_path):
    """An LLMService created while no operator runs is picked up on start (resume)."""
    from octavo.operator.kube import Kube

    kube = Kube()
    spec = {"model": {"path": str(vocab_models["target"])}, "resources": {"gpusPerReplica": 0}}
    await asyncio.to_thread(kube.create, service_body("offline", spec))

    for _ in range(2):  # start, stop, start again: still one Deployment, converged
        async with OperatorThread(kube):
            await eventually(lambda: phase(k8s, "offline") == "Deploying", what="Deploying")
    posts = [r for r in list(k8s) if r.resource is not None and r.resource.plural == "deployments"
             and r.method.value == "POST"]
    assert len(posts) == 1


def admission_review(spec, uid="review-1"):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "serving.octavo.dev", "version": "v1alpha1",
                             "kind": "LLMService"},
        "resource": {"group": "serving.octavo.dev", "version": "v1alpha1",
                     "resource": "llmservices"},
        "operation": "CREATE", "namespace": NS, "name": "svc",
        "userInfo": {"username": "test"},
        "object": {"apiVersion": "serving.octavo.dev/v1alpha1", "kind": "LLMService",
                   "metadata": {"name": "svc", "namespace": NS}, "spec": spec},
        "dryRun": False}}


async def test_validating_webhook(k8s, kubeconfig, unused_tcp_port, monkeypatch):
    """kopf's webhook server routes /validate-llmservice (the chart's path) to the admission
    checks and the cluster's policy (from the operator's environment, as the chart sets it)."""
    monkeypatch.setenv("OCTAVO_ALLOWED_IMAGES", "registry.local/octavo-runtime")
    monkeypatch.setenv("OCTAVO_ALLOWED_SECRETS", "hf-token")
    import aiohttp
    import kopf

    from octavo.operator import main
    from octavo.operator.kube import Kube

    registry = kopf.OperatorRegistry()
    kopf.on.validate("serving.octavo.dev", "v1alpha1", "llmservices", id=main.WEBHOOK_ID,
                     registry=registry)(main.validate_llmservice)
    kopf.on.login(registry=registry)(kopf.login_via_client)
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.admission.server = kopf.WebhookServer(addr="127.0.0.1", port=unused_tcp_port,
                                                   insecure=True)
    operator = OperatorThread(Kube())
    operator._operator = functools.partial(
        kopf.operator, registry=registry, settings=settings, standalone=True, namespaces=[NS],
        stop_flag=operator.stop_flag, ready_flag=operator.ready_flag)
    url = f"http://127.0.0.1:{unused_tcp_port}/{main.WEBHOOK_ID}"
    async with operator, aiohttp.ClientSession() as session:
        async def review(spec):
            deadline = time.monotonic() + 20
            while True:  # the server starts shortly after the operator reports ready
                try:
                    async with session.post(url, json=admission_review(spec)) as response:
                        return (await response.json())["response"]
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)

        bad = await review({"model": {"name": "org/m"}, "tensorParallelSize": 4,
                            "resources": {"gpusPerReplica": 6}})
        assert bad["allowed"] is False and bad["status"]["code"] == 422
        assert "must be a multiple of tensorParallelSize (4)" in bad["status"]["message"]
        good = await review({"model": {"name": "org/m"}})
        assert good["allowed"] is True
        forbidden = await review({"model": {"name": "org/m"}, "image": "evil.example/x:1",
                                  "env": [{"name": "K", "valueFrom": {"secretKeyRef": {
                                      "name": "payments", "key": "k"}}}]})
        assert forbidden["allowed"] is False
        assert "spec.image 'evil.example/x:1' is not an allowed image" in \
            forbidden["status"]["message"]
        assert "names Secret 'payments'" in forbidden["status"]["message"]
        allowed = await review({"model": {"name": "org/m"},
                                "image": "registry.local/octavo-runtime:3",
                                "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                                    "name": "hf-token", "key": "token"}}}]})
        assert allowed["allowed"] is True


@pytest.mark.parametrize("entry", ["kopf", "octavo"])
async def test_entry_points_run_the_operator(k8s, kubeconfig, vocab_models, unused_tcp_port, entry):
    """`kopf run -m octavo.operator.main` and `octavo operator`, as separate processes."""
    import os
    import signal
    import sys

    import aiohttp

    from octavo.operator.kube import Kube

    liveness = f"http://127.0.0.1:{unused_tcp_port}/healthz"
    command = {
        "kopf": [sys.executable, "-m", "kopf", "run", "-m", "octavo.operator.main",
                 "--standalone", "-n", NS, f"--liveness={liveness}"],
        "octavo": [sys.executable, "-m", "octavo.cli", "operator", "--standalone", "-n", NS,
                   "--liveness", liveness],
    }[entry]
    process = await asyncio.create_subprocess_exec(
        *command, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        kube = Kube()
        spec = {"model": {"path": str(vocab_models["target"])}, "resources": {"gpusPerReplica": 0}}
        await asyncio.to_thread(kube.create, service_body("cli", spec))
        await eventually(lambda: obj(k8s, DEPLOYMENTS, NS, "cli"), timeout=40,
                         what=f"a Deployment from `{' '.join(command[1:4])}`")

        async with aiohttp.ClientSession() as session:
            async def alive():
                try:
                    async with session.get(liveness) as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False
            deadline = time.monotonic() + 20
            while not await alive():
                assert time.monotonic() < deadline, "no liveness endpoint"
                await asyncio.sleep(0.1)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
    stderr = (await process.stderr.read()).decode(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]


def job_named(k8s, name):
    return next((j for j in objs(k8s, "batch/v1/jobs", NS) if j["metadata"]["name"] == name), None)


async def test_failed_validation_is_retried_until_the_draft_is_fixed(k8s, operator, vocab_models,
                                                                     tmp_path, monkeypatch):
    """The failure is seen by the owned-Job handler (kopf cannot retry an event handler): the
    operator's own requeue brings attempt 2, 3, ... with a growing backoff, and once the draft is
    fixed where it lives (the spec untouched) the pair validates and rolls out."""
    import shutil

    monkeypatch.setenv(reconcile.RETRY_BASE_ENV, "1")  # read at each failure
    kube = operator
    draft_dir = tmp_path / "draft-being-uploaded"
    shutil.copytree(vocab_models["broken"], draft_dir)
    spec = {"model": {"path": str(vocab_models["target"])},
            "speculative": {"draftModel": {"path": str(draft_dir)}},
            "resources": {"gpusPerReplica": 0}}
    await asyncio.to_thread(kube.create, service_body("retry", spec))
    # kopf has handled the creation for good (it records that in an annotation; until then an
    # event may run the create handler again): from here on only the operator's requeues retry.
    await eventually(lambda: "serving.octavo.dev/last-handled-configuration" in
                     (obj(k8s, LLMS, NS, "retry")["metadata"].get("annotations") or {})
                     and phase(k8s, "retry") == "Validating", what="the creation handled")

    job_name = None
    for attempt in (1, 2):
        job = await eventually(lambda: objs(k8s, "batch/v1/jobs", NS), what=f"attempt {attempt}")
        job_name = job[0]["metadata"]["name"]
        assert await run_validation_job(kube, job[0], tmp_path) == 2
        await eventually(lambda: (obj(k8s, LLMS, NS, "retry")["status"].get("pair") or {})
                         .get("failures") == attempt, what=f"failure {attempt} recorded")
        pair = obj(k8s, LLMS, NS, "retry")["status"]["pair"]
        assert pair["attempt"] == attempt + 1
        gap = (datetime.datetime.fromisoformat(pair["nextRetryTime"].replace("Z", "+00:00"))
               - datetime.datetime.fromisoformat(pair["lastFailureTime"].replace("Z", "+00:00")))
        assert gap.total_seconds() == reconcile.retry_delay(attempt) == attempt  # 1 s, then 2 s
        assert phase(k8s, "retry") == "Blocked"

    # Fixed upstream, nothing edited: attempt 3 (same Job name) passes.
    for f in vocab_models["draft-same"].iterdir():
        shutil.copy(f, draft_dir / f.name)
    job = await eventually(lambda: job_named(k8s, job_name), timeout=15, what="attempt 3")
    assert await run_validation_job(kube, job, tmp_path) == 0
    await eventually(lambda: phase(k8s, "retry") == "Deploying", what="Deploying")
    assert obj(k8s, DEPLOYMENTS, NS, "retry") is not None
    body = obj(k8s, LLMS, NS, "retry")
    assert body["metadata"]["generation"] == 1 and body["status"]["pair"]["verdict"] == "compatible"
    assert "finalizers" not in body["metadata"]


async def test_deleting_a_service_mid_validation_leaves_nothing_behind(k8s, operator, vocab_models,
                                                                       tmp_path, monkeypatch,
                                                                       caplog):
    """Deleted while a retry is pending: no finalizer holds it, the pending requeue finds it gone
    and makes no new Job, and nothing fails.

    The retry is due an hour after the failure, so no reconcile can start attempt 2 before the
    deletion however slowly this runs; after it, the pending requeue is brought forward (the
    earliest due time wins) instead of being waited for."""
    monkeypatch.setenv(reconcile.RETRY_BASE_ENV, "3600")
    kube = operator
    spec = {"model": {"path": str(vocab_models["target"])},
            "speculative": {"draftModel": {"path": str(vocab_models["broken"])}},
            "resources": {"gpusPerReplica": 0}}
    await asyncio.to_thread(kube.create, service_body("gone", spec))
    job = await eventually(lambda: objs(k8s, "batch/v1/jobs", NS), what="the validation Job")
    assert await run_validation_job(kube, job[0], tmp_path) == 2
    await eventually(lambda: (obj(k8s, LLMS, NS, "gone")["status"].get("pair") or {})
                     .get("failures") == 1, what="the failure recorded")
    assert "finalizers" not in obj(k8s, LLMS, NS, "gone")["metadata"]

    requeues = kube.memo.requeues
    # The status write comes before the requeue is scheduled (on the operator's loop).
    due = await eventually(lambda: requeues.due_in(NS, "gone"), what="the retry to be pending")
    assert due > 60  # pending, and not about to run on its own
    await eventually(lambda: not objs(k8s, "batch/v1/jobs", NS), what="attempt 1 deleted")
    await asyncio.to_thread(kube.delete, "serving.octavo.dev/v1alpha1", "LLMService", NS, "gone")
    assert obj(k8s, LLMS, NS, "gone") is None  # nothing waits on the operator
    deleted_at = len(list(k8s))

    # The pending retry fires, reads the LLMService (gone) and stops: no Job, no new requeue. A
    # reconcile that read the LLMService just before the deletion (an owned Job's event) may
    # have asked for the retry again: that one is brought forward too.
    def looked_and_stopped():
        if requeues.due_in(NS, "gone") is not None:
            requeues.later(NS, "gone", 0)
            return False
        looked = any(r.resource is not None and r.resource.plural == "llmservices"
                     and r.name == "gone" and r.method.value == "GET"
                     for r in list(k8s)[deleted_at:])
        return looked and requeues.idle()
    await eventually(looked_and_stopped, timeout=20, what="the requeued reconcile to run")
    # (kopf itself may try to patch its annotations on the gone object: a 404 it ignores.)
    assert not [r for r in list(k8s)[deleted_at:] if r.resource is not None and (
        (r.method.value == "POST" and r.resource.plural == "jobs")
        or (r.method.value == "PATCH" and r.subresource == "status"))]
    assert objs(k8s, "batch/v1/jobs", NS) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_pending_retry_survives_an_operator_restart(k8s, kubeconfig, vocab_models,
                                                            tmp_path, monkeypatch):
    """The requeue is in memory; what survives is status (nextRetryTime), from which the resume
    handler of the next operator process schedules the retry again."""
    from octavo.operator.kube import Kube

    monkeypatch.setenv(reconcile.RETRY_BASE_ENV, "5")  # time enough to stop the first operator
    reconcile._locks.clear()
    kube = Kube()
    spec = {"model": {"path": str(vocab_models["target"])},
            "speculative": {"draftModel": {"path": str(vocab_models["broken"])}},
            "resources": {"gpusPerReplica": 0}}
    async with OperatorThread(kube):
        await asyncio.to_thread(kube.create, service_body("restarted", spec))
        job = await eventually(lambda: objs(k8s, "batch/v1/jobs", NS), what="attempt 1")
        assert await run_validation_job(kube, job[0], tmp_path) == 2
        await eventually(lambda: (obj(k8s, LLMS, NS, "restarted")["status"].get("pair") or {})
                         .get("failures") == 1, what="failure 1 recorded")
        await eventually(lambda: not objs(k8s, "batch/v1/jobs", NS), what="attempt 1 deleted")
    # Stopped before the retry was due: nothing ran it.
    assert objs(k8s, "batch/v1/jobs", NS) == []
    async with OperatorThread(kube):
        job = await eventually(lambda: objs(k8s, "batch/v1/jobs", NS), what="attempt 2")
        assert obj(k8s, LLMS, NS, "restarted")["status"]["pair"]["attempt"] == 2


async def test_requeues_keep_the_earliest_and_run_the_reconcile(monkeypatch):
    from octavo.operator import main

    ran = []
    monkeypatch.setattr(reconcile, "reconcile", lambda kube, ns, name: ran.append((ns, name)))
    requeues = main.Requeues(asyncio.get_running_loop(), kube=None)
    requeues.later(NS, "a", 30)
    requeues.after(reconcile.Outcome("Blocked", requeue_after=0.2), NS, "a")
    requeues.after(reconcile.Outcome("Validating", requeue_after=10), NS, "a")  # later: ignored
    requeues.after(reconcile.Outcome("Ready"), NS, "b")  # nothing asked for
    await eventually(lambda: requeues.due_in(NS, "a") is not None, what="scheduled")
    assert requeues.due_in(NS, "a") <= 0.2 and requeues.due_in(NS, "b") is None
    await eventually(lambda: ran and requeues.idle(), timeout=5, what="the requeued reconcile")
    assert ran == [(NS, "a")]  # it returned None (gone): nothing scheduled again
