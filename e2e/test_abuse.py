"""Scenario 7 (issue #24, the operator's half): availability and containment under abuse.

- A pair validation that fails (the draft is still being uploaded: config, no tokenizer) is
  retried with a growing backoff, with no edit of the LLMService, until the upload is complete;
  then the pair rolls out and serves.
- An LLMService deleted while its validation is failing and retrying goes at once (no
  finalizer) and takes its Job, pods, API key Secret and NetworkPolicy with it.
- The chart's policy: an LLMService naming an image or a Secret the policy does not allow is
  refused at `kubectl apply` by the ValidatingAdmissionPolicy, and by the webhook where the
  policy is not bound; a user holding only the chart's editor role gets no further.

The chart is installed with conftest.OPERATOR_VALUES (allowed images, Secrets, a 2 s backoff).
"""

from __future__ import annotations

import copy
import shutil
import uuid

import pytest

from e2e import serving
from e2e.cluster import REPO_ROOT, wait_for
from e2e.conftest import ALLOWED_IMAGE_PREFIX
from e2e.kube import resource_path

pytestmark = pytest.mark.e2e

DEMO_DRAFT = REPO_ROOT / "octavo" / "runtime" / "demo" / "draft"
READY_TIMEOUT_S = 420


def draft_being_uploaded(cluster) -> str:
    """A draft directory holding only config.json, as midway through an upload: check-pair
    cannot read its tokenizer (exit 2). Not under /tmp: the validation pod mounts an emptyDir
    there."""
    directory = cluster.cp.bin_dir.parent / "fixtures" / f"draft-{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    shutil.copy(DEMO_DRAFT / "config.json", directory / "config.json")
    directory.chmod(0o755)
    return str(directory)


def speculative_with_draft(path: str, name: str) -> dict:
    document = serving.example("demo-speculative.yaml")
    document["metadata"]["name"] = name
    document["spec"]["speculative"] = {**document["spec"]["speculative"], "draftModel": {"path": path}}
    return document


def pair_status(cluster, namespace: str, name: str) -> dict:
    return (serving.get(cluster, namespace, name).get("status") or {}).get("pair") or {}


def test_failed_validation_is_retried_until_the_draft_is_fixed_upstream(
        cluster, operator, runtime_available, namespace):
    draft = draft_being_uploaded(cluster)
    document = speculative_with_draft(draft, "retried")
    serving.apply(cluster, namespace, document)

    # Attempt 1 fails, then attempt 2, with nobody touching the LLMService.
    wait_for(lambda: pair_status(cluster, namespace, "retried").get("failures", 0) >= 2, 240,
             "two failed validation attempts", interval_s=1)
    llms = serving.get(cluster, namespace, "retried")
    assert llms["metadata"]["generation"] == 1
    assert llms["status"]["phase"] == "Blocked"
    compatible = serving.condition(llms, "PairCompatible")
    assert (compatible["status"], compatible["reason"]) == ("Unknown", "ValidationFailed")
    assert "has no tokenizer" in compatible["message"], compatible
    pair = llms["status"]["pair"]
    assert pair["attempt"] == pair["failures"] + 1 and pair["nextRetryTime"] >= pair["lastFailureTime"]
    failures = [e for e in serving.events_for(cluster, namespace, "retried")
                if e.get("reason") == "ValidationFailed"]
    assert len(failures) >= 2, failures

    # The upload completes where the draft lives; the next attempt passes and the pair serves.
    for item in DEMO_DRAFT.iterdir():
        shutil.copy(item, f"{draft}/{item.name}")
    llms = serving.wait_phase(cluster, namespace, "retried", "Ready", READY_TIMEOUT_S)
    assert llms["metadata"]["generation"] == 1  # the spec was never edited
    pair = llms["status"]["pair"]
    assert pair["verdict"] == "compatible" and "failures" not in pair
    assert serving.condition(llms, "PairCompatible")["status"] == "True"

    base_url = serving.service_url(cluster, namespace, llms)
    key = serving.api_key(cluster, namespace, llms)
    model = serving.served_model(base_url, key)
    assert serving.complete(base_url, model, api_key=key)["choices"][0]["text"]


OWNED = [("batch/v1", "jobs"), ("v1", "secrets"), ("networking.k8s.io/v1", "networkpolicies"),
         ("apps/v1", "deployments")]


def test_deleting_a_service_mid_validation_leaves_nothing_behind(cluster, operator, namespace):
    document = speculative_with_draft(draft_being_uploaded(cluster), "doomed")
    serving.apply(cluster, namespace, document)
    wait_for(lambda: pair_status(cluster, namespace, "doomed").get("failures", 0) >= 1, 180,
             "a failed validation attempt", interval_s=1)
    llms = serving.get(cluster, namespace, "doomed")
    uid = llms["metadata"]["uid"]
    assert not llms["metadata"].get("finalizers")
    assert serving.owned(cluster, namespace, uid, "networking.k8s.io/v1", "networkpolicies")

    # No finalizer: the delete returns at once, whatever the operator is doing.
    cluster.kubectl("delete", "llms", "doomed", "-n", namespace, "--wait=true", "--timeout=30s",
                    timeout_s=40)

    def nothing_left():
        remaining = [f"{plural}/{item['metadata']['name']}" for version, plural in OWNED
                     for item in serving.owned(cluster, namespace, uid, version, plural)]
        remaining += [p["metadata"]["name"] for p in cluster.pods(namespace)]
        return not remaining
    wait_for(nothing_left, 120, "the Job, its pods, the key Secret and the NetworkPolicy to go",
             interval_s=1)
    operator_pod = cluster.pods(operator["namespace"])[0]
    log = cluster.container_log(operator["namespace"], operator_pod["metadata"]["name"],
                                operator_pod["spec"]["containers"][0]["name"])
    assert "Traceback" not in log, log[-3000:]


def forbidden_documents(namespace: str) -> dict[str, tuple[dict, str]]:
    base = serving.example("demo.yaml")
    image = copy.deepcopy(base)
    image["metadata"]["name"] = "miner"
    image["spec"]["image"] = "docker.io/attacker/miner:latest"
    secret = copy.deepcopy(base)
    secret["metadata"]["name"] = "exfil"
    secret["spec"]["env"] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "payments-db", "key": "password"}}}]
    key_blanked = copy.deepcopy(base)
    key_blanked["metadata"]["name"] = "open"
    key_blanked["spec"]["env"] = [{"name": "OCTAVO_API_KEY", "value": ""}]
    return {"image": (image, ("docker.io/attacker/miner:latest", "is not an allowed image")),
            "secret": (secret, ("payments-db", "may not read")),
            "api key": (key_blanked, ("spec.env sets OCTAVO_API_KEY",))}


def allowed_document() -> dict:
    document = serving.example("demo.yaml")
    document["metadata"]["name"] = "allowed"
    document["spec"]["image"] = f"{ALLOWED_IMAGE_PREFIX}octavo-runtime:1"
    document["spec"]["env"] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "e2e-allowed-hub", "key": "token"}}}]
    return document


def test_admission_policy_refuses_images_and_secrets_outside_the_allow_lists(cluster, operator, namespace):
    """The ValidatingAdmissionPolicy (CEL in the API server), for a user holding only the chart's
    LLMService editor role: no pods, no Secrets, and an LLMService cannot get them either."""
    cluster.kubectl("create", "rolebinding", "alice-llms", "-n", namespace,
                    f"--clusterrole={operator['release']}-octavo-operator-llmservice-editor", "--user=alice")
    as_alice = ["--as=alice", "-n", namespace]
    assert cluster.kubectl("auth", "can-i", "create", "llmservices.serving.octavo.dev", *as_alice,
                           check=False).stdout.strip() == "yes"
    for verb, resource in (("get", "secrets"), ("create", "pods"), ("create", "deployments.apps")):
        assert cluster.kubectl("auth", "can-i", verb, resource, *as_alice, check=False).stdout.strip() == "no"

    for what, (document, expected) in forbidden_documents(namespace).items():
        result = cluster.kubectl("apply", *as_alice, "-f", "-", input=serving.yaml.safe_dump(document),
                                 check=False)
        assert result.returncode != 0, f"{what}: accepted"
        assert "ValidatingAdmissionPolicy" in result.stderr and \
            all(part in result.stderr for part in expected), \
            f"{what}: not refused by the admission policy: {result.stderr}"
    accepted = cluster.kubectl("apply", *as_alice, "--dry-run=server", "-f", "-",
                               input=serving.yaml.safe_dump(allowed_document()), check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert not cluster.kube.get(serving.llms_path(namespace))["items"]


def test_webhook_refuses_them_where_the_policy_is_not_bound(cluster, operator, namespace):
    """Clusters without ValidatingAdmissionPolicy (or with it switched off) have the webhook,
    which runs the operator's own check with the same allow-lists."""
    path = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
    bindings = [b for b in cluster.kube.get(path)["items"]
                if b["metadata"]["name"].startswith(operator["release"])]
    assert len(bindings) == 1, [b["metadata"]["name"] for b in bindings]
    saved = bindings[0]
    cluster.kube.delete(f"{path}/{saved['metadata']['name']}")
    try:
        for what, (document, expected) in forbidden_documents(namespace).items():
            def refused_by_webhook():
                # The API server drops a deleted binding from its cache shortly after; until then
                # the admission policy refuses first.
                result = cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-",
                                         input=serving.yaml.safe_dump(document), check=False)
                if result.returncode == 0:
                    pytest.fail(f"{what}: accepted")
                return result if "admission webhook" in result.stderr else None
            result = wait_for(refused_by_webhook, 30, f"{what}: refused by the webhook")
            assert "denied the request" in result.stderr, result.stderr
            assert all(part in result.stderr for part in expected), result.stderr
        accepted = cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-",
                                   input=serving.yaml.safe_dump(allowed_document()), check=False)
        assert accepted.returncode == 0, accepted.stderr
    finally:
        restored = {"apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": saved["metadata"]["name"],
                                 "labels": saved["metadata"].get("labels") or {},
                                 "annotations": saved["metadata"].get("annotations") or {}},
                    "spec": saved["spec"]}
        cluster.kube.create(path, restored)
    assert not cluster.kube.get(serving.llms_path(namespace))["items"]
