"""Model delivery (#25 part A) and the production pod fields (#25 part B) on one LLMService: the
download Job follows the pod override's placement and pull secrets, the override cannot take
the model sources' volumes or mounts, the policy covers both parts' Secrets, claims and images,
and a download Job the API server refuses is a failed delivery, not a retry loop."""

from __future__ import annotations

import asyncio

import kubernetes_validate
import pytest
from operator_helpers import K8S_VERSION, as_stored, objs

from octavo.operator import admission, crd, model_delivery, reconcile, resources
from octavo.operator.spec import LLMServiceSpec

pytestmark = pytest.mark.timeout(60)
NS = "ml"

OVERRIDE = {"spec": {
    "imagePullSecrets": [{"name": "regcred"}],
    "priorityClassName": "inference", "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "volumes": [{"name": "extra", "emptyDir": {}}],
    "containers": [{"name": "server", "envFrom": [{"secretRef": {"name": "s"}}],
                    "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}]}}


def build(spec):
    body = as_stored({"apiVersion": crd.API_VERSION, "kind": crd.KIND,
                      "metadata": {"name": "svc"}, "spec": spec})
    return body, LLMServiceSpec.from_dict(body["spec"])


def hf_cached(**extra):
    return {"model": {"source": "hf://org/model@v1"}, "modelCache": {"size": "20Gi"},
            "resources": {"gpusPerReplica": 0}, **extra}


def test_download_job_gets_the_override_placement_and_pull_secrets_only():
    body, spec = build(hf_cached(podTemplate=OVERRIDE))
    assert admission.check_llmservice(body["spec"], "svc") == []
    job = model_delivery.download_job(body, spec)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert (pod["priorityClassName"], pod["nodeSelector"]) == ("inference", {"pool": "gpu"})
    assert pod["tolerations"] == OVERRIDE["spec"]["tolerations"]
    # Not the serving container's additions: the Job holds only what fetching needs.
    assert "extra" not in {v["name"] for v in pod["volumes"]}
    assert "envFrom" not in pod["containers"][0]
    # Without an override the Job is as before.
    plain = model_delivery.download_job(*build(hf_cached()))["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in plain and "priorityClassName" not in plain


def test_serving_pod_with_a_delivered_model_and_an_override():
    body, spec = build(hf_cached(podTemplate=OVERRIDE, extraArgs=["--max-num-batched-tokens",
                                                                   "4096"]))
    assert admission.check_llmservice(body["spec"], "svc") == []
    deployment = resources.deployment(body, spec)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    names = [v["name"] for v in pod["volumes"]]
    assert len(names) == len(set(names)) and {"model-cache", "extra"} <= set(names)
    cache, = [v for v in pod["volumes"] if v["name"] == "model-cache"]
    assert cache["persistentVolumeClaim"] == {"claimName": spec.cache_claim("svc"),
                                              "readOnly": True}
    server, = pod["containers"]
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["model-cache"]["readOnly"] is True and mounts["extra"]["mountPath"] == "/extra"
    args = server["args"]
    assert args[args.index("--model") + 1] == "/models/hf/org--model/v1"
    assert args[-2:] == ["--max-num-batched-tokens", "4096"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize("override, fragment", [
    ({"volumes": [{"name": "model-source-target", "emptyDir": {}}]},
     "volumes[0] is named 'model-source-target'"),
    ({"volumes": [{"name": "x", "emptyDir": {}}],
      "containers": [{"name": "server", "volumeMounts": [
          {"name": "x", "mountPath": "/model-sources/target"}]}]},
     "volumeMounts[0] (/model-sources/target) is owned by the operator"),
    ({"volumes": [{"name": "x", "emptyDir": {}}],
      "containers": [{"name": "server", "volumeMounts": [
          {"name": "x", "mountPath": "/model-sources"}]}]},
     "volumeMounts[0] (/model-sources) is owned by the operator"),
])
def test_override_may_not_take_the_model_sources_volumes_or_mounts(override, fragment):
    spec = {"model": {"source": "pvc://weights/llama"}, "podTemplate": {"spec": override}}
    errors = admission.check_llmservice(spec, "svc")
    assert any(fragment in e for e in errors), errors
    # A mount beside them is fine.
    fine = {"volumes": [{"name": "x", "emptyDir": {}}], "containers": [
        {"name": "server", "volumeMounts": [{"name": "x", "mountPath": "/model-sources-extra"}]}]}
    assert admission.check_llmservice({**spec, "podTemplate": {"spec": fine}}, "svc") == []


def test_policy_covers_both_parts_secrets_claims_and_images():
    spec = {"model": {"source": "pvc://finance/llama", "hubTokenSecretRef": {"name": "db"}},
            "speculative": {"draftModel": {"source": "oci://evil.example/draft:1"}},
            "podTemplate": {"spec": {
                "imagePullSecrets": [{"name": "regcred"}],
                "volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "scratch"}},
                            {"name": "i", "image": {"reference": "evil.example/tools:1"}}]}}}
    policy = admission.Policy(images=("ghcr.io/octavo-dev/octavo-runtime",), secrets=("hf-*",),
                              claims=("model-*",), service_accounts=())
    errors = admission.check_policy(spec, policy)
    joined = "\n".join(errors)
    for fragment in ("spec.model.hubTokenSecretRef names Secret 'db'",
                     "spec.podTemplate.spec.imagePullSecrets[0] names Secret 'regcred'",
                     "spec.model.source 'finance' is not an allowed claim",
                     "volumes[0].persistentVolumeClaim 'scratch' is not an allowed claim",
                     "spec.speculative.draftModel.source image 'evil.example/draft:1' is not an "
                     "allowed image",
                     "volumes[1].image 'evil.example/tools:1' is not an allowed image"):
        assert fragment in joined, joined
    assert len(errors) == 6


def test_override_image_volumes_follow_the_image_volume_gate():
    spec = {"model": {"name": "m"}, "podTemplate": {"spec": {
        "volumes": [{"name": "i", "image": {"reference": "registry.local/tools:1"}}]}}}
    off = admission.check_policy(spec, admission.Policy(image_volumes=False))
    assert off == ["spec.podTemplate.spec.volumes[0].image 'registry.local/tools:1' is a "
                   "Kubernetes image volume, which this cluster does not enable: remove it, or ask "
                   "a cluster admin to set the octavo-operator chart value "
                   "modelDelivery.imageVolumes"]
    assert admission.check_policy(spec, admission.Policy(image_volumes=True)) == []


class RefusingDownloadJobs:
    """A client whose API server refuses the download Job as invalid (422), as it would a
    malformed placement field of spec.podTemplate the checks do not read."""

    def __init__(self, kube):
        self.kube = kube

    def __getattr__(self, name):
        return getattr(self.kube, name)

    def create(self, manifest):
        from octavo.operator.kube import ApiError

        labels = manifest["metadata"].get("labels") or {}
        if manifest["kind"] == "Job" and \
                labels.get(resources.LABEL_COMPONENT) == model_delivery.COMPONENT_DOWNLOAD:
            raise ApiError(422, 'Job.batch "svc-fetch" is invalid: spec.template.spec.affinity: '
                                'Invalid value')
        return self.kube.create(manifest)


async def test_a_download_job_the_api_server_refuses_is_a_failed_delivery(k8s, kube):
    from test_reconcile_kmock import condition, put_service

    put_service(k8s, "svc", hf_cached(podTemplate={"spec": {"affinity": {"nodeAffinity": {}}}}))
    outcome = await asyncio.to_thread(reconcile.reconcile, RefusingDownloadJobs(kube), NS, "svc")
    assert outcome.phase == "Blocked"
    ready = condition(k8s, "svc", "ModelReady")
    assert (ready["status"], ready["reason"]) == ("False", "DownloadFailed")
    assert "refused the download Job" in ready["message"] and "affinity" in ready["message"]
    assert condition(k8s, "svc", "Stalled")["status"] == "True"
    assert objs(k8s, "apps/v1/deployments", NS) == []
    assert [e for e in objs(k8s, "v1/events", NS) if e["reason"] == "DownloadFailed"]
