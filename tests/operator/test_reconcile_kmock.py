"""reconcile() against kmock's Kubernetes emulator, step by step.

The emulator stores objects and serves the API; it runs no controllers. The tests play the
Job controller + kubelet (run_validation_job: the Job's own `octavo check-pair` command runs
in-process on tokenizers trained in the test, and its termination log becomes the pod's
termination message) and the Deployment controller (mark_deployment_ready). The operator's
client is synchronous, so each reconcile runs in a thread while the emulator serves on the
test's event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil

import jsonschema
import pytest
from operator_helpers import assert_declared, exists, mark_deployment_ready, obj, objs, run_validation_job

from octavo.operator import crd, reconcile, resources
from octavo.operator.spec import LLMServiceSpec

pytestmark = pytest.mark.timeout(60)

NS = "ml"
LLMS = "serving.octavo.dev/v1alpha1/llmservices"
DEPLOYMENTS = "apps/v1/deployments"
JOBS = "batch/v1/jobs"
SECRETS = "v1/secrets"
NETWORK_POLICIES = "networking.k8s.io/v1/networkpolicies"


def put_service(k8s, name, spec, generation=1, uid="uid-1"):
    body = {"apiVersion": "serving.octavo.dev/v1alpha1", "kind": "LLMService",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": generation},
            "spec": spec}
    key = (LLMS, NS, name)
    if exists(k8s, *key):
        k8s.objects[key].patch({"metadata": {"generation": generation}, "spec": None})
        k8s.objects[key].patch({"spec": spec})
    else:
        k8s.objects[key] = body


def local_spec(models, draft=None, **extra):
    spec = {"model": {"path": str(models["target"])}, "maxNumSeqs": 8,
            "resources": {"gpusPerReplica": 0}}
    if draft is not None:
        spec["speculative"] = {"draftModel": {"path": str(models[draft])},
                               "numSpeculativeTokens": 4}
    spec.update(extra)
    return spec


async def reconcile_once(kube, name, now=None):
    return await asyncio.to_thread(reconcile.reconcile, kube, NS, name, now)


def status(k8s, name):
    """The LLMService's status, checked against the CRD's status schema on every read: a field
    the schema does not declare would be pruned by a real API server."""
    current = obj(k8s, LLMS, NS, name).get("status", {})
    jsonschema.Draft4Validator(crd.STATUS_SCHEMA).validate(current)
    assert_declared(crd.STATUS_SCHEMA, current, "status", "the CRD's schema")
    return current


def condition(k8s, name, type_):
    return next((c for c in status(k8s, name).get("conditions", []) if c["type"] == type_), None)


def writes(k8s, plural, method=None):
    return [r for r in list(k8s) if r.resource is not None and r.resource.plural == plural
            and str(r.method.value) in ((method,) if method else ("POST", "PATCH", "PUT", "DELETE"))]


def events(k8s, reason=None):
    return [e for e in objs(k8s, "v1/events", NS) if reason is None or e["reason"] == reason]


def only_job(k8s):
    jobs = objs(k8s, JOBS, NS)
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    return jobs[0]


async def deploy_ready(k8s, kube, tmp_path, name, spec):
    """Create, validate (when there is a draft), roll out, and become Ready."""
    put_service(k8s, name, spec)
    outcome = await reconcile_once(kube, name)
    if "speculative" in spec:
        assert outcome.phase == "Validating"
        assert await run_validation_job(kube, only_job(k8s), tmp_path) == 0
        outcome = await reconcile_once(kube, name)
    assert outcome.phase == "Deploying"
    await mark_deployment_ready(kube, NS, name)
    outcome = await reconcile_once(kube, name)
    assert outcome.phase == "Ready"
    return outcome


async def test_create_validates_then_deploys_and_turns_ready(k8s, kube, vocab_models, tmp_path):
    put_service(k8s, "spec-lm", local_spec(vocab_models, "draft-same"))

    outcome = await reconcile_once(kube, "spec-lm")
    # No polling: the Job's events bring the next reconcile; the one requeue asked for is at the
    # Job's deadline, when a Job still running counts as failed.
    assert outcome.phase == "Validating"
    assert outcome.requeue_after == pytest.approx(600 + reconcile.DEADLINE_GRACE_SECONDS, abs=2)
    job = only_job(k8s)
    spec = LLMServiceSpec.from_dict(obj(k8s, LLMS, NS, "spec-lm")["spec"])
    assert job["metadata"]["name"] == resources.validation_job_name("spec-lm", spec.pair_hash())
    assert obj(k8s, DEPLOYMENTS, NS, "spec-lm") is None  # nothing rolls out before the verdict
    assert status(k8s, "spec-lm")["phase"] == "Validating"
    assert condition(k8s, "spec-lm", "PairCompatible")["status"] == "Unknown"
    assert condition(k8s, "spec-lm", "PairCompatible")["reason"] == "Validating"

    # A repeated reconcile finds the same Job instead of making another.
    await reconcile_once(kube, "spec-lm")
    assert len(writes(k8s, "jobs", "POST")) == 1

    assert await run_validation_job(kube, job, tmp_path) == 0
    outcome = await reconcile_once(kube, "spec-lm")
    assert outcome.phase == "Deploying"
    deployment = obj(k8s, DEPLOYMENTS, NS, "spec-lm")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--speculative-model") + 1] == str(vocab_models["draft-same"])
    assert obj(k8s, "v1/services", NS, "spec-lm")["spec"]["ports"][0]["name"] == "http"
    assert obj(k8s, "policy/v1/poddisruptionbudgets", NS, "spec-lm") is not None
    pair = status(k8s, "spec-lm")["pair"]
    assert (pair["verdict"], pair["compatible"], pair["reason"]) == ("compatible", True, "Compatible")
    assert pair["targetVocab"]["tokenizer_size"] == pair["draftVocab"]["tokenizer_size"] > 256
    assert condition(k8s, "spec-lm", "PairCompatible")["status"] == "True"
    assert condition(k8s, "spec-lm", "Progressing")["status"] == "True"

    await mark_deployment_ready(kube, NS, "spec-lm")
    outcome = await reconcile_once(kube, "spec-lm")
    assert outcome.phase == "Ready" and outcome.requeue_after is None
    st = status(k8s, "spec-lm")
    assert st["readyReplicas"] == 1 and st["replicas"] == 1 and st["observedGeneration"] == 1
    assert st["endpoint"] == "http://spec-lm.ml.svc:8000/v1"
    assert st["selector"] == resources.selector_string("spec-lm")
    assert st["served"] == {"model": str(vocab_models["target"]),
                            "draft": str(vocab_models["draft-same"])}
    available = condition(k8s, "spec-lm", "Available")
    assert available["status"] == "True" and available["observedGeneration"] == 1
    assert available["lastTransitionTime"].endswith("Z")
    assert [e["type"] for e in events(k8s, "Ready")] == ["Normal"]
    assert events(k8s, "PairCompatible")


async def test_incompatible_pair_blocks_and_leaves_the_deployment_alone(k8s, kube, vocab_models,
                                                                       tmp_path):
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models, "draft-same"))
    before = obj(k8s, DEPLOYMENTS, NS, "svc")
    deployment_writes = len(writes(k8s, "deployments"))
    first_job = only_job(k8s)["metadata"]["name"]

    put_service(k8s, "svc", local_spec(vocab_models, "draft-other-family"), generation=2)
    outcome = await reconcile_once(kube, "svc")
    assert outcome.phase == "Validating"
    job = next(j for j in objs(k8s, JOBS, NS) if j["metadata"]["name"] != first_job)
    assert await run_validation_job(kube, job, tmp_path) == 1
    outcome = await reconcile_once(kube, "svc")

    assert outcome.phase == "Blocked" and outcome.requeue_after is None
    st = status(k8s, "svc")
    assert st["phase"] == "Blocked" and st["observedGeneration"] == 2
    cond = condition(k8s, "svc", "PairCompatible")
    assert (cond["status"], cond["reason"]) == ("False", "VocabularyMismatch")
    assert "differs from target" in cond["message"]
    assert "choose a draft from the same tokenizer family" in cond["message"]
    assert st["pair"]["differences"]  # the first differing tokens, named
    warning, = events(k8s, "VocabularyMismatch")
    assert warning["type"] == "Warning" and "differs from target" in warning["message"]
    assert warning["involvedObject"]["name"] == "svc"

    # The Deployment still serves the previous spec, byte for byte, never written to.
    assert obj(k8s, DEPLOYMENTS, NS, "svc") == before
    assert len(writes(k8s, "deployments")) == deployment_writes
    assert st["served"]["draft"] == str(vocab_models["draft-same"])
    assert st["readyReplicas"] == 1 and st["endpoint"] == "http://svc.ml.svc:8000/v1"
    assert condition(k8s, "svc", "Available")["status"] == "True"
    assert condition(k8s, "svc", "Progressing")["reason"] == "Blocked"

    # Settled: again and again, nothing new (no Job run, no Event repeated).
    jobs_created = len(writes(k8s, "jobs", "POST"))
    for _ in range(2):
        assert (await reconcile_once(kube, "svc")).phase == "Blocked"
    assert len(writes(k8s, "jobs", "POST")) == jobs_created
    assert len(events(k8s, "VocabularyMismatch")) == 1
    assert obj(k8s, DEPLOYMENTS, NS, "svc") == before


async def test_incompatible_pair_on_create_deploys_nothing(k8s, kube, vocab_models, tmp_path):
    put_service(k8s, "bad", local_spec(vocab_models, "draft-other-specials"))
    await reconcile_once(kube, "bad")
    assert await run_validation_job(kube, only_job(k8s), tmp_path) == 1
    assert (await reconcile_once(kube, "bad")).phase == "Blocked"
    assert obj(k8s, DEPLOYMENTS, NS, "bad") is None
    assert obj(k8s, "v1/services", NS, "bad") is None
    assert "endpoint" not in status(k8s, "bad")


async def test_spec_update_rolls_out_without_revalidating(k8s, kube, vocab_models, tmp_path):
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models, "draft-padded"))
    assert status(k8s, "svc")["pair"]["verdict"] == "compatible-with-padding"
    put_service(k8s, "svc", local_spec(vocab_models, "draft-padded", maxNumSeqs=32, replicas=2),
                generation=2)
    outcome = await reconcile_once(kube, "svc")
    assert outcome.phase == "Deploying"  # 2 desired, the emulator's status still says 1
    deployment = obj(k8s, DEPLOYMENTS, NS, "svc")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-num-seqs") + 1] == "32" and deployment["spec"]["replicas"] == 2
    assert len(writes(k8s, "jobs", "POST")) == 1  # same pair: the verdict stands
    assert status(k8s, "svc")["observedGeneration"] == 2
    assert condition(k8s, "svc", "PairCompatible")["reason"] == "CompatibleWithPadding"


async def test_drift_in_owned_objects_is_repaired(k8s, kube, vocab_models, tmp_path):
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models))
    desired = obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]

    # Someone edits the Deployment's container and deletes the Service.
    k8s.objects[DEPLOYMENTS, NS, "svc"].patch({"spec": {"template": {"spec": {"containers": [
        {"name": "server", "image": "attacker/image:latest", "args": ["--max-num-seqs", "999"]}]}}}})
    k8s.objects["v1/services", NS, "svc"].delete()
    writes_before = len(writes(k8s, "deployments"))

    await reconcile_once(kube, "svc")
    repaired = obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]
    assert repaired["spec"]["containers"] == desired["spec"]["containers"]
    assert obj(k8s, "v1/services", NS, "svc") is not None
    assert len(writes(k8s, "deployments")) == writes_before + 1

    # Converged: no more writes.
    await reconcile_once(kube, "svc")
    assert len(writes(k8s, "deployments")) == writes_before + 1
    assert len(writes(k8s, "services", "POST")) == 2  # created, then re-created


async def test_restarted_operator_finds_the_existing_job(k8s, kube, vocab_models, tmp_path):
    from octavo.operator.kube import Kube

    put_service(k8s, "svc", local_spec(vocab_models, "draft-same"))
    await reconcile_once(kube, "svc")
    job = only_job(k8s)

    # A new process: fresh client and no in-memory state; all it knows is in the cluster.
    restarted = Kube.for_server(str(k8s.url), timeout=10)
    reconcile._locks.clear()
    assert (await reconcile_once(restarted, "svc")).phase == "Validating"
    assert len(writes(k8s, "jobs", "POST")) == 1
    await run_validation_job(kube, job, tmp_path)
    assert (await reconcile_once(restarted, "svc")).phase == "Deploying"


async def test_validation_failure_is_retried_with_backoff(k8s, kube, vocab_models, tmp_path):
    # The draft directory has a config but no tokenizer: check-pair exits 2.
    draft_dir = tmp_path / "draft-being-uploaded"
    shutil.copytree(vocab_models["broken"], draft_dir)
    spec = local_spec(vocab_models)
    spec["speculative"] = {"draftModel": {"path": str(draft_dir)}}
    put_service(k8s, "svc", spec)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    await reconcile_once(kube, "svc", now)
    job_name = only_job(k8s)["metadata"]["name"]
    assert status(k8s, "svc")["pair"]["attempt"] == 1
    assert await run_validation_job(kube, only_job(k8s), tmp_path) == 2
    outcome = await reconcile_once(kube, "svc", now)
    assert outcome.phase == "Blocked" and outcome.requeue_after == reconcile.retry_delay(1) == 30
    cond = condition(k8s, "svc", "PairCompatible")
    assert (cond["status"], cond["reason"]) == ("Unknown", "ValidationFailed")
    assert "validation attempt 1 failed" in cond["message"] and "has no tokenizer" in cond["message"]
    assert cond["message"].endswith("attempt 2 at 2026-01-01T00:00:30Z")
    pair = status(k8s, "svc")["pair"]
    assert (pair["verdict"], pair["reason"], pair["failures"]) == ("error", "ValidationFailed", 1)
    assert (pair["attempt"], pair["nextRetryTime"]) == (2, "2026-01-01T00:00:30Z")
    assert objs(k8s, JOBS, NS) == []  # deleted to retry under the same name
    warning, = events(k8s, "ValidationFailed")
    assert warning["type"] == "Warning" and warning["message"].endswith("retrying in 30s")

    # Within the backoff: no new Job, and the status stays as it was (no countdown to rewrite).
    status_writes = len(writes(k8s, "llmservices"))
    outcome = await reconcile_once(kube, "svc", now + datetime.timedelta(seconds=10))
    assert outcome.requeue_after == pytest.approx(20)
    assert objs(k8s, JOBS, NS) == [] and len(writes(k8s, "llmservices")) == status_writes

    # Attempt 2 fails too: the backoff doubles.
    retry = now + datetime.timedelta(seconds=30)
    assert (await reconcile_once(kube, "svc", retry)).phase == "Validating"
    assert only_job(k8s)["metadata"]["name"] == job_name
    assert condition(k8s, "svc", "PairCompatible")["message"].startswith(
        f"validation Job {job_name} (attempt 2)")
    assert await run_validation_job(kube, only_job(k8s), tmp_path) == 2
    outcome = await reconcile_once(kube, "svc", retry)
    assert outcome.requeue_after == reconcile.retry_delay(2) == 60
    assert status(k8s, "svc")["pair"]["nextRetryTime"] == "2026-01-01T00:01:30Z"
    assert len(events(k8s, "ValidationFailed")) == 2

    # The upload finishes; after the backoff the same Job name runs again and succeeds.
    for f in vocab_models["draft-same"].iterdir():
        shutil.copy(f, draft_dir / f.name)
    later = retry + datetime.timedelta(seconds=61)
    assert (await reconcile_once(kube, "svc", later)).phase == "Validating"
    assert only_job(k8s)["metadata"]["name"] == job_name
    assert await run_validation_job(kube, only_job(k8s), tmp_path) == 0
    assert (await reconcile_once(kube, "svc", later)).phase == "Deploying"
    pair = status(k8s, "svc")["pair"]
    assert pair["verdict"] == "compatible"
    assert not {"failures", "attempt", "nextRetryTime", "startedAt"} & set(pair)


def test_retry_delay_doubles_up_to_a_cap(monkeypatch):
    assert [reconcile.retry_delay(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    monkeypatch.setenv(reconcile.RETRY_BASE_ENV, "2")
    monkeypatch.setenv(reconcile.RETRY_MAX_ENV, "10")
    assert [reconcile.retry_delay(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]
    monkeypatch.setenv(reconcile.RETRY_BASE_ENV, "soon")
    assert reconcile.retry_delay(1) == reconcile.DEFAULT_RETRY_BASE_SECONDS


async def test_a_hung_validation_job_is_bounded_by_the_spec(k8s, kube, vocab_models):
    """A Job that never finishes (no node for its pod, a Job controller that never fails it)
    counts as a failed attempt at validationTimeoutSeconds (+ a grace), and is retried."""
    spec = local_spec(vocab_models, "draft-same")
    spec["speculative"]["validationTimeoutSeconds"] = 120
    put_service(k8s, "svc", spec)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    outcome = await reconcile_once(kube, "svc", now)
    job = only_job(k8s)
    assert job["spec"]["activeDeadlineSeconds"] == 120  # the Job controller's own bound
    assert outcome.requeue_after == 120 + reconcile.DEADLINE_GRACE_SECONDS

    # Still running just before the bound: still Validating, woken at the bound.
    almost = now + datetime.timedelta(seconds=140)
    outcome = await reconcile_once(kube, "svc", almost)
    assert outcome.phase == "Validating" and outcome.requeue_after == pytest.approx(10)

    past = now + datetime.timedelta(seconds=151)
    outcome = await reconcile_once(kube, "svc", past)
    assert outcome.phase == "Blocked" and outcome.requeue_after == 30
    cond = condition(k8s, "svc", "PairCompatible")
    assert cond["reason"] == "ValidationFailed"
    assert "ran past spec.speculative.validationTimeoutSeconds (120s)" in cond["message"]
    assert objs(k8s, JOBS, NS) == []  # the hung Job is deleted; a new one runs at the retry
    outcome = await reconcile_once(kube, "svc", past + datetime.timedelta(seconds=30))
    assert outcome.phase == "Validating" and len(writes(k8s, "jobs", "POST")) == 2


async def test_a_failed_job_is_read_once_while_its_deletion_is_pending(k8s, kube, vocab_models,
                                                                      tmp_path):
    """A real API server keeps a deleted Job around until its pods are gone: the reconciles in
    between must not count the same failure twice."""
    spec = local_spec(vocab_models)
    spec["speculative"] = {"draftModel": {"path": str(vocab_models["broken"])}}
    put_service(k8s, "svc", spec)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    await reconcile_once(kube, "svc", now)
    job = only_job(k8s)
    k8s.objects[JOBS, NS, job["metadata"]["name"]].patch({"metadata": {"uid": "job-uid-1"}})
    assert await run_validation_job(kube, only_job(k8s), tmp_path) == 2
    await reconcile_once(kube, "svc", now)
    assert status(k8s, "svc")["pair"]["failedJobUid"] == "job-uid-1"
    # The Job is back (its deletion has not finished): the same failure, not a new one.
    k8s.objects[JOBS, NS, job["metadata"]["name"]] = {**job, "metadata": {
        **job["metadata"], "uid": "job-uid-1"}, "status": {"conditions": [
            {"type": "Failed", "status": "True"}]}}
    outcome = await reconcile_once(kube, "svc", now + datetime.timedelta(seconds=5))
    assert outcome.phase == "Blocked" and status(k8s, "svc")["pair"]["failures"] == 1


async def test_invalid_spec_is_reported_not_deployed(k8s, kube, vocab_models):
    put_service(k8s, "svc", local_spec(vocab_models, tensorParallelSize=4,
                                       resources={"gpusPerReplica": 6}))
    outcome = await reconcile_once(kube, "svc")
    assert outcome.phase == "Blocked" and outcome.requeue_after is None
    cond = condition(k8s, "svc", "SpecValid")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "must be a multiple of tensorParallelSize (4)" in cond["message"]
    assert events(k8s, "InvalidSpec")[0]["type"] == "Warning"
    assert obj(k8s, DEPLOYMENTS, NS, "svc") is None and objs(k8s, JOBS, NS) == []


async def test_a_spec_the_policy_forbids_is_not_deployed(k8s, kube, vocab_models, tmp_path,
                                                         monkeypatch):
    """Without a webhook (or with one that failed open) the reconcile enforces the policy: a
    forbidden image or Secret never reaches a pod, and a running service keeps its previous,
    allowed spec."""
    monkeypatch.setenv("OCTAVO_ALLOWED_IMAGES", "registry.local/octavo-runtime")
    monkeypatch.setenv("OCTAVO_ALLOWED_SECRETS", "hf-*")
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models))
    before = obj(k8s, DEPLOYMENTS, NS, "svc")

    steal = [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]
    put_service(k8s, "svc", local_spec(vocab_models, image="evil.example/miner:1", env=steal),
                generation=2)
    outcome = await reconcile_once(kube, "svc")
    assert outcome.phase == "Blocked"
    cond = condition(k8s, "svc", "SpecValid")
    assert (cond["status"], cond["reason"]) == ("False", "Forbidden")
    assert "spec.image 'evil.example/miner:1' is not an allowed image" in cond["message"]
    assert "names Secret 'db'" in cond["message"]
    assert events(k8s, "Forbidden")[0]["type"] == "Warning"
    assert obj(k8s, DEPLOYMENTS, NS, "svc") == before  # still the allowed spec, serving
    assert condition(k8s, "svc", "Available")["status"] == "True"

    # Within the policy: deployed.
    allowed = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                    "key": "token"}}}]
    put_service(k8s, "svc", local_spec(vocab_models, image="registry.local/octavo-runtime:2",
                                       env=allowed), generation=3)
    # (the emulator runs no Deployment controller: its status still reads ready)
    assert (await reconcile_once(kube, "svc")).phase in ("Deploying", "Ready")
    assert condition(k8s, "svc", "SpecValid")["status"] == "True"
    container = obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/octavo-runtime:2"


async def test_network_policy_follows_the_operators_settings(k8s, kube, vocab_models,
                                                             monkeypatch):
    monkeypatch.setenv(reconcile.NETWORK_POLICY_ENV, json.dumps({"ingressFrom": [
        {"podSelector": {"matchLabels": {"app": "gateway"}}}]}))
    put_service(k8s, "svc", local_spec(vocab_models, "draft-same"))
    await reconcile_once(kube, "svc")
    policy = obj(k8s, NETWORK_POLICIES, NS, "svc")
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app": "gateway"}}}]
    # Made before the validation Job's pod can run.
    requests = [r.resource.plural for r in list(k8s) if r.resource is not None
                and r.method.value in ("POST", "PATCH")
                and r.resource.plural in ("networkpolicies", "jobs")]
    assert requests.index("networkpolicies") < requests.index("jobs")

    monkeypatch.delenv(reconcile.NETWORK_POLICY_ENV)
    await reconcile_once(kube, "svc")
    assert obj(k8s, NETWORK_POLICIES, NS, "svc") is None


async def test_autoscaling_and_dropping_the_draft(k8s, kube, vocab_models, tmp_path):
    spec = local_spec(vocab_models, "draft-same",
                      autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4})
    await deploy_ready(k8s, kube, tmp_path, "svc", spec)
    hpa = obj(k8s, "autoscaling/v2/horizontalpodautoscalers", NS, "svc")
    assert hpa["spec"]["maxReplicas"] == 3

    # No autoscaling, no draft: the HPA, the validation Job and the pair verdict go.
    put_service(k8s, "svc", local_spec(vocab_models), generation=2)
    await reconcile_once(kube, "svc")
    assert obj(k8s, "autoscaling/v2/horizontalpodautoscalers", NS, "svc") is None
    assert objs(k8s, JOBS, NS) == []
    assert "pair" not in status(k8s, "svc")
    assert condition(k8s, "svc", "PairCompatible") is None
    args = obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--speculative-model" not in args


async def test_deleted_service_is_left_to_garbage_collection(k8s, kube, vocab_models, tmp_path):
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models))
    assert "finalizers" not in obj(k8s, LLMS, NS, "svc")["metadata"]
    k8s.objects[LLMS, NS, "svc"].delete()
    assert await reconcile_once(kube, "svc") is None


async def test_a_generated_api_key_is_created_once_and_never_overwritten(k8s, kube, vocab_models,
                                                                         tmp_path):
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models))
    secret = obj(k8s, SECRETS, NS, "svc-api-key")
    key = secret["stringData"]["api-key"]
    assert len(key) >= 32 and secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert status(k8s, "svc")["apiKey"] == {"secretName": "svc-api-key", "key": "api-key",
                                            "generated": True}
    env = {e["name"]: e for e in obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["OCTAVO_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "svc-api-key",
                                                                  "key": "api-key"}
    created, = events(k8s, "APIKeyCreated")
    assert "Secret svc-api-key" in created["message"]

    # Later reconciles, a restarted operator, a new spec generation: the key stays the same.
    reconcile._locks.clear()
    put_service(k8s, "svc", local_spec(vocab_models, maxNumSeqs=16), generation=2)
    for _ in range(2):
        await reconcile_once(kube, "svc")
    assert obj(k8s, SECRETS, NS, "svc-api-key")["stringData"]["api-key"] == key
    assert [r.method.value for r in writes(k8s, "secrets")] == ["POST"] * 4  # create-only
    assert len(events(k8s, "APIKeyCreated")) == 1

    # Deleted: the next reconcile makes a new one (rotation is delete + restart the pods).
    k8s.objects[SECRETS, NS, "svc-api-key"].delete()
    await reconcile_once(kube, "svc")
    assert obj(k8s, SECRETS, NS, "svc-api-key")["stringData"]["api-key"] != key


async def test_a_named_api_key_secret_is_used_and_nothing_is_generated(k8s, kube, vocab_models,
                                                                       tmp_path):
    spec = local_spec(vocab_models, apiKeySecretRef={"name": "team-key", "key": "token"})
    await deploy_ready(k8s, kube, tmp_path, "svc", spec)
    assert writes(k8s, "secrets") == []
    assert status(k8s, "svc")["apiKey"] == {"secretName": "team-key", "key": "token",
                                            "generated": False}
    env = {e["name"]: e for e in obj(k8s, DEPLOYMENTS, NS, "svc")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["OCTAVO_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "team-key",
                                                                  "key": "token"}


async def test_a_secret_made_before_the_service_is_kept(k8s, kube, vocab_models, tmp_path):
    """A Secret of the generated name that exists (a key chosen in advance) is never replaced."""
    await asyncio.to_thread(kube.create, {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "svc-api-key", "namespace": NS}, "stringData": {"api-key": "chosen"}})
    await deploy_ready(k8s, kube, tmp_path, "svc", local_spec(vocab_models))
    assert obj(k8s, SECRETS, NS, "svc-api-key")["stringData"] == {"api-key": "chosen"}
    assert events(k8s, "APIKeyCreated") == []


def test_is_subset_reads_live_objects_as_the_api_server_writes_them():
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "4"}},
         "volumeMounts": [{"name": "m", "mountPath": "/m", "readOnly": False}]}]}}}}
    live = {"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 2, "template": {"spec": {
        "containers": [{"name": "c", "imagePullPolicy": "IfNotPresent",
                        "resources": {"limits": {"nvidia.com/gpu": "4"}},
                        "volumeMounts": [{"name": "m", "mountPath": "/m"}]}]}}}}
    assert reconcile.is_subset(desired, live)  # defaults added, false readOnly omitted
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "8"
    assert not reconcile.is_subset(desired, live)
    assert not reconcile.is_subset({"a": [1, 2]}, {"a": [1]})
    assert reconcile.is_subset({"port": 8000}, {"port": "8000"})  # quantities come back as text


def test_status_patch_nulls_what_is_gone_and_skips_what_is_equal():
    old = {"phase": "Blocked", "pair": {"verdict": "error", "failures": 2, "hash": "h"}}
    new = {"phase": "Ready", "pair": {"verdict": "compatible", "hash": "h"}}
    assert reconcile.status_patch(old, new) == {
        "phase": "Ready", "pair": {"verdict": "compatible", "failures": None}}
    assert reconcile.status_patch(new, dict(new)) == {}
    assert reconcile.status_patch(old, {"pair": None}) == {"pair": None}
