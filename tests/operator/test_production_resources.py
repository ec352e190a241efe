"""Production fields of an LLMService (#25): the pod override merged with what the operator owns,
extended resources, extraArgs read by the server's own parser, HPA behavior, KEDA ScaledObject,
rollout strategy, and the Gateway API Inference Extension's InferencePool + endpoint picker.

Built objects are checked by kubernetes-validate (strict) where Kubernetes owns the kind, and
against the upstream CRDs vendored in tests/operator/upstream/ (KEDA's ScaledObject, the
InferencePool) otherwise; reconcile() runs against kmock for the objects of optional APIs.
"""

from __future__ import annotations

import asyncio
import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml
from operator_helpers import K8S_VERSION, REPO, as_stored, assert_declared, load_example, obj, objs

from octavo.operator import admission, crd, extra_args, pod_override, reconcile, resources, scaling
from octavo.operator.spec import LLMServiceSpec

pytestmark = pytest.mark.timeout(60)
UPSTREAM = REPO / "tests" / "operator" / "upstream"
NS = "ml"


def upstream_schema(filename: str) -> dict:
    crd_doc = yaml.safe_load((UPSTREAM / filename).read_text())
    version = next(v for v in crd_doc["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]


def validate_upstream(filename: str, manifest: dict) -> None:
    """The manifest against the upstream CRD's OpenAPI schema, and nothing outside it (a real API
    server would prune an undeclared field silently)."""
    schema = upstream_schema(filename)
    jsonschema.Draft4Validator(schema).validate(manifest)
    assert_declared(schema["properties"]["spec"], manifest["spec"], "spec", "the upstream schema")


def build(name_or_spec):
    if isinstance(name_or_spec, str):
        body = as_stored(load_example(name_or_spec))
    else:
        body = as_stored({"apiVersion": crd.API_VERSION, "kind": crd.KIND,
                          "metadata": {"name": "svc"}, "spec": name_or_spec})
    return body, LLMServiceSpec.from_dict(body["spec"])


def server(deployment):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == "server")


# --- pod override ----------------------------------------------------------------------------


def test_pod_override_fields_reach_the_deployment():
    body, spec = build("production-pods.yaml")
    assert admission.check_llmservice(body["spec"], "qwen-7b") == []
    deployment = resources.deployment(body, spec)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert template["metadata"]["labels"]["team"] == "search"
    assert resources.selector_labels("qwen-7b").items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["annotations"]["cost-center"] == "4711"
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["priorityClassName"] == "inference-high"
    assert pod["imagePullSecrets"] == [{"name": "hf-token"}]
    assert pod["nodeSelector"] == {"topology.kubernetes.io/region": "eu-west"}
    assert pod["affinity"]["nodeAffinity"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    volumes = {v["name"] for v in pod["volumes"]}
    assert {"tmp", "model-cache", "corp-ca"} <= volumes
    c = server(deployment)
    assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    env = {e["name"]: e for e in c["env"]}
    assert env["SSL_CERT_FILE"]["value"] == "/etc/corp-ca/ca.crt"
    assert "secretKeyRef" in env["OCTAVO_API_KEY"]["valueFrom"]  # still the operator's
    # What the operator owns is untouched: probes, drain, hardening, command.
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == resources.PRE_STOP_SECONDS
    assert pod["terminationGracePeriodSeconds"] == 30 + 5 + 10
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["command"] == ["octavo", "serve"]
    assert c["args"][-3:] == ["--enable-prefix-caching", "--max-num-batched-tokens", "8192"]
    assert c["resources"]["limits"]["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}


def test_pod_override_security_context_merges_key_by_key():
    _, spec = build({"model": {"name": "m"}, "podTemplate": {"spec": {
        "securityContext": {"supplementalGroups": [44]},
        "containers": [{"name": "server", "securityContext": {"seLinuxOptions": {"level": "s0"}}}]}}})
    body, _ = build({"model": {"name": "m"}})
    deployment = resources.deployment(body, spec)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [44]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = server(deployment)
    assert c["securityContext"]["seLinuxOptions"] == {"level": "s0"}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


OWNED = {
    "container command": ({"spec": {"containers": [{"name": "server", "command": ["sh"]}]}},
                          "containers[0].command is owned by the operator"),
    "container args": ({"spec": {"containers": [{"name": "server", "args": ["--x"]}]}},
                       "spec.extraArgs"),
    "ports": ({"spec": {"containers": [{"name": "server", "ports": [{"containerPort": 1}]}]}},
              "containers[0].ports is owned"),
    "probes": ({"spec": {"containers": [{"name": "server", "readinessProbe": {}}]}},
               "readinessProbe is owned"),
    "image": ({"spec": {"containers": [{"name": "server", "image": "x"}]}}, "set spec.image"),
    "resources": ({"spec": {"containers": [{"name": "server", "resources": {}}]}},
                  "set spec.resources"),
    "sidecar": ({"spec": {"containers": [{"name": "proxy", "image": "x"}]}},
                "must be named 'server'"),
    "init containers": ({"spec": {"initContainers": [{"name": "x"}]}},
                        "spec.initContainers is owned"),
    "host network": ({"spec": {"hostNetwork": True}}, "spec.hostNetwork is owned"),
    "grace period": ({"spec": {"terminationGracePeriodSeconds": 1}},
                     "spec.shutdownTimeoutSeconds"),
    "model volume": ({"spec": {"volumes": [{"name": "model-cache", "emptyDir": {}}]}},
                     "rename it"),
    "cache mount": ({"spec": {"containers": [{"name": "server", "volumeMounts": [
        {"name": "x", "mountPath": "/models"}]}]}}, "mount elsewhere"),
    "selector label": ({"metadata": {"labels": {"app.kubernetes.io/instance": "other"}}},
                       "labels[app.kubernetes.io/instance] is owned"),
    "scrape annotation": ({"metadata": {"annotations": {"prometheus.io/port": "1"}}},
                          "annotations[prometheus.io/port] is owned"),
    "api key env": ({"spec": {"containers": [{"name": "server", "env": [
        {"name": "OCTAVO_API_KEY", "value": "k"}]}]}}, "sets OCTAVO_API_KEY"),
}


@pytest.mark.parametrize("case", sorted(OWNED))
def test_owned_fields_are_refused_naming_the_field(case):
    override, fragment = OWNED[case]
    errors = admission.check_llmservice({"model": {"name": "m"}, "podTemplate": override}, "svc")
    assert any(fragment in e for e in errors), errors


async def test_owned_fields_block_the_rollout_with_spec_valid_false(k8s, kube):
    spec = {"model": {"name": "m"}, "resources": {"gpusPerReplica": 0},
            "podTemplate": {"spec": {"containers": [{"name": "server", "command": ["sh"]}]}}}
    outcome = await put_and_reconcile(k8s, kube, "bad-pod", spec)
    assert outcome.phase == "Blocked"
    cond = spec_valid(k8s, "bad-pod")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "containers[0].command is owned by the operator" in cond["message"]
    assert obj(k8s, "apps/v1/deployments", NS, "bad-pod") is None


def test_validation_job_gets_the_override_placement_and_pull_secrets_only():
    body, spec = build({"model": {"name": "t"}, "speculative": {"draftModel": {"name": "d"}},
                        "podTemplate": {"spec": {
                            "imagePullSecrets": [{"name": "regcred"}],
                            "priorityClassName": "p", "nodeSelector": {"pool": "gpu"},
                            "volumes": [{"name": "extra", "emptyDir": {}}],
                            "containers": [{"name": "server", "envFrom": [
                                {"secretRef": {"name": "s"}}]}]}}})
    job = resources.validation_job(body, spec)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert (pod["priorityClassName"], pod["nodeSelector"]) == ("p", {"pool": "gpu"})
    assert "extra" not in {v["name"] for v in pod["volumes"]}
    assert "envFrom" not in pod["containers"][0]


def test_policy_covers_the_override_secrets_claims_and_images():
    spec = {"model": {"name": "m"}, "podTemplate": {"spec": {
        "imagePullSecrets": [{"name": "regcred"}],
        "volumes": [{"name": "a", "secret": {"secretName": "tls"}},
                    {"name": "b", "projected": {"sources": [{"secret": {"name": "proj"}}]}},
                    {"name": "c", "persistentVolumeClaim": {"claimName": "shared"}},
                    {"name": "d", "image": {"reference": "evil.example/tools:1"}}],
        "containers": [{"name": "server",
                        "envFrom": [{"secretRef": {"name": "bulk"}}],
                        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "one",
                                                                             "key": "k"}}}]}]}}}
    policy = admission.Policy(images=("registry.local/*",), secrets=("hf-*",), claims=("model-*",))
    errors = "\n".join(admission.check_policy(spec, policy))
    for name in ("regcred", "tls", "proj", "bulk", "one"):
        assert f"names Secret {name!r}" in errors
    assert "persistentVolumeClaim 'shared' is not an allowed claim" in errors
    assert "volumes[3].image 'evil.example/tools:1' is not an allowed image" in errors
    allowed = admission.Policy(images=("*",), secrets=("*",), claims=("*",))
    assert admission.check_policy(spec, allowed) == []


def test_merge_keeps_the_operator_template_unchanged():
    body, spec = build({"model": {"name": "m"}})
    template = resources.pod_template(body, spec)
    before = copy.deepcopy(template)
    pod_override.merge(template, {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"tolerations": [{"operator": "Exists"}]}})
    assert template == before


# --- resources -------------------------------------------------------------------------------


def test_extended_resource_names():
    body, spec = build("mig-slices.yaml")
    c = server(resources.deployment(body, spec))
    assert c["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert c["resources"]["limits"]["example.com/fast-nic"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    # gpusPerReplica keeps its meaning: the default is still nvidia.com/gpu = tensorParallelSize.
    body, spec = build({"model": {"name": "m"}, "tensorParallelSize": 2})
    assert server(resources.deployment(body, spec))["resources"]["limits"]["nvidia.com/gpu"] == "2"


@pytest.mark.parametrize("bad", ["gpu", "nvidia.com/", "/gpu", "kubernetes.io/ gpu"])
def test_gpu_resource_name_must_be_an_extended_resource(bad):
    schema = crd.SPEC_SCHEMA["properties"]["resources"]["properties"]["gpuResourceName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(bad)


# --- extraArgs -------------------------------------------------------------------------------


def operator_argv(spec_dict):
    return resources.operator_serve_args(LLMServiceSpec.from_dict(spec_dict))[2:]


@pytest.mark.parametrize("extra, fragment", [
    (["--enable-prefixx-caching"], "--enable-prefixx-caching is not a flag `octavo serve` knows"),
    (["--seed", "abc"], "argument --seed: invalid int value"),
    (["--port", "9000"], "sets --port, which is set by the operator"),
    (["--max-num-seqs", "3"], "sets --max-num-seqs, which comes from spec.maxNumSeqs"),
    (["--tensor-parallel-size=2"], "comes from spec.tensorParallelSize"),
    (["--api-key", "k"], "sets --api-key: the API key comes from spec.apiKeySecretRef"),
    (["other/model"], "sets a MODEL argument"),
    (["--config", "x.yaml"], "--config cannot be used in a pod"),
    (["--help"], "--help cannot be used in a pod"),
])
def test_extra_args_refused_with_the_flag_named(extra, fragment):
    spec = {"model": {"name": "m"}, "extraArgs": extra}
    errors = admission.check_llmservice(spec, "svc")
    assert len(errors) == 1 and fragment in errors[0], errors


@pytest.mark.parametrize("extra", [
    ["--enable-prefix-caching"], ["--max-num-batched-tokens", "4096"], ["--seed=7"],
    ["--metrics-prefix", "vllm"], ["--max-num-seqs", "256"],  # the spec's own value: no change
    ["--enable-prefix-caching=false"],
])
def test_extra_args_accepted_and_passed_last(extra):
    spec_dict = {"model": {"name": "m"}, "extraArgs": extra}
    assert admission.check_llmservice(spec_dict, "svc") == []
    body, spec = build(spec_dict)
    args = server(resources.deployment(body, spec))["args"]
    assert args[-len(extra):] == extra
    assert extra_args.check(extra, operator_argv(spec_dict)) == []


async def test_unknown_extra_arg_blocks_rollout_and_keeps_the_running_deployment(k8s, kube):
    spec = {"model": {"name": "m"}, "resources": {"gpusPerReplica": 0}}
    assert (await put_and_reconcile(k8s, kube, "flags", spec)).phase == "Deploying"
    before = obj(k8s, "apps/v1/deployments", NS, "flags")
    bad = {**spec, "extraArgs": ["--no-such-flag", "1"]}
    assert (await put_and_reconcile(k8s, kube, "flags", bad, generation=2)).phase == "Blocked"
    cond = spec_valid(k8s, "flags")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "--no-such-flag" in cond["message"]
    after = obj(k8s, "apps/v1/deployments", NS, "flags")
    assert server(after)["args"] == server(before)["args"]


# --- scaling ---------------------------------------------------------------------------------


def test_hpa_behavior_from_the_spec():
    body, spec = build("hpa-behavior.yaml")
    hpa = resources.horizontal_pod_autoscaler(body, spec)
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    assert hpa["spec"]["behavior"] == body["spec"]["autoscaling"]["behavior"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert resources.scaled_object(body, spec) is None
    assert "replicas" not in resources.deployment(body, spec)["spec"]
    # Without behavior: the default (scale up at once, down slowly).
    body, spec = build({"model": {"name": "m"}, "autoscaling": {"maxReplicas": 3}})
    assert resources.horizontal_pod_autoscaler(body, spec)["spec"]["behavior"] == \
        scaling.DEFAULT_BEHAVIOR


def test_keda_scaled_object_against_the_upstream_crd():
    body, spec = build("keda-scale-to-zero.yaml")
    assert admission.check_llmservice(body["spec"], "mistral-7b") == []
    so = resources.scaled_object(body, spec)
    validate_upstream("keda.sh_scaledobjects.yaml", so)
    assert resources.horizontal_pod_autoscaler(body, spec) is None  # KEDA makes its own
    assert "replicas" not in resources.deployment(body, spec)["spec"]
    s = so["spec"]
    assert s["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": "mistral-7b"}
    assert (s["minReplicaCount"], s["maxReplicaCount"]) == (0, 8)
    assert (s["cooldownPeriod"], s["pollingInterval"]) == (900, 15)
    trigger = s["triggers"][0]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'sum(octavo:num_requests_waiting{namespace="ml",'
                 'pod=~"mistral-7b-[a-z0-9]+-[a-z0-9]+"})',
        "threshold": "4", "activationThreshold": "0"}
    assert s["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == \
        body["spec"]["autoscaling"]["behavior"]
    assert so["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"


def test_keda_kv_cache_trigger_and_custom_query():
    base = {"model": {"name": "m"}, "autoscaling": {"mode": "KEDA", "maxReplicas": 4, "keda": {
        "prometheusServerAddress": "http://p:9090", "metric": "kvCache", "threshold": "0.7"}}}
    body, spec = build(base)
    trigger = resources.scaled_object(body, spec)["spec"]["triggers"][0]
    validate_upstream("keda.sh_scaledobjects.yaml", resources.scaled_object(body, spec))
    assert trigger["metricType"] == "Value"
    assert trigger["metadata"]["query"].startswith("avg(octavo:kv_cache_usage_perc{")
    assert trigger["metadata"]["threshold"] == "0.7"
    custom = copy.deepcopy(base)
    custom["autoscaling"]["keda"]["query"] = "sum(rate(gateway_requests_total[1m]))"
    body, spec = build(custom)
    assert resources.scaled_object(body, spec)["spec"]["triggers"][0]["metadata"]["query"] == \
        "sum(rate(gateway_requests_total[1m]))"


def test_scale_to_zero_needs_keda():
    errors = admission.check_llmservice({"model": {"name": "m"}, "autoscaling": {
        "minReplicas": 0, "maxReplicas": 2}}, "svc")
    assert any("minReplicas 0 (scale to zero) needs mode KEDA" in e for e in errors)
    rules = [v["rule"] for v in crd.SPEC_SCHEMA["properties"]["autoscaling"]["x-kubernetes-validations"]]
    assert "self.minReplicas > 0 || self.mode == 'KEDA'" in rules


def test_rollout_strategy_percentages():
    body, spec = build({"model": {"name": "m"}, "rollout": {"maxSurge": "25%",
                                                            "maxUnavailable": 1}})
    deployment = resources.deployment(body, spec)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%",
                                                                "maxUnavailable": 1}
    body, spec = build({"model": {"name": "m"}})
    assert resources.deployment(body, spec)["spec"]["strategy"]["rollingUpdate"] == \
        {"maxSurge": 1, "maxUnavailable": 0}


# --- Gateway API Inference Extension --------------------------------------------------------


def test_inference_pool_against_the_upstream_crd():
    body, spec = build("inference-pool.yaml")
    pool, account, role, binding, deployment, service = resources.inference_pool_objects(body, spec)
    validate_upstream("inference.networking.k8s.io_inferencepools.yaml", pool)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"] == resources.selector_labels("llama-8b-routed")
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {"name": "llama-8b-routed-epp",
                                                 "port": {"number": 9002},
                                                 "failureMode": "FailOpen"}
    for manifest in (account, role, binding, deployment, service):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        assert manifest["metadata"]["name"] == "llama-8b-routed-epp"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["--pool-name", "llama-8b-routed", "--pool-namespace", "ml"]
    assert args[args.index("--total-queued-requests-metric") + 1] == "octavo:num_requests_waiting"
    assert args[args.index("--kv-cache-usage-percentage-metric") + 1] == \
        "octavo:kv_cache_usage_perc"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "llama-8b-routed-epp"
    assert service["spec"]["ports"][0]["port"] == 9002
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"],
            "verbs": ["get", "list", "watch"]} in role["rules"]
    # The picker's pods are not the LLMService's: its NetworkPolicy and selectors miss them.
    picker_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert picker_labels["app.kubernetes.io/name"] != "octavo"


def test_picker_image_follows_the_policy(monkeypatch):
    spec = {"model": {"name": "m"}, "inferencePool": {"endpointPicker": {"image": "x.io/epp:1"}}}
    errors = admission.check_policy(spec, admission.Policy(images=("registry.local/*",)))
    assert errors and "spec.inferencePool.endpointPicker.image 'x.io/epp:1'" in errors[0]
    monkeypatch.setenv("OCTAVO_EPP_IMAGE", "registry.local/epp:2")
    body, spec_ = build({"model": {"name": "m"}, "inferencePool": {}})
    picker = resources.inference_pool_objects(body, spec_)[4]
    assert picker["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/epp:2"


# --- reconcile against kmock --------------------------------------------------------------

OPTIONAL_RESOURCES = {
    "keda.sh/v1alpha1/scaledobjects": "ScaledObject",
    "inference.networking.k8s.io/v1/inferencepools": "InferencePool",
    "v1/serviceaccounts": "ServiceAccount",
    "rbac.authorization.k8s.io/v1/roles": "Role",
    "rbac.authorization.k8s.io/v1/rolebindings": "RoleBinding",
}


@pytest.fixture()
def k8s_full(k8s):
    """The emulator with KEDA's and the Inference Extension's kinds installed."""
    for key, kind in OPTIONAL_RESOURCES.items():
        info = k8s.resources[key]
        info.kind, info.namespaced = kind, True
        info.verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    return k8s


async def put_and_reconcile(k8s, kube, name, spec, generation=1):
    from test_reconcile_kmock import put_service

    put_service(k8s, name, spec, generation=generation)
    return await asyncio.to_thread(reconcile.reconcile, kube, NS, name)


def spec_valid(k8s, name):
    conditions = obj(k8s, "serving.octavo.dev/v1alpha1/llmservices", NS, name)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "SpecValid")


async def test_reconcile_creates_and_removes_the_optional_objects(k8s_full, kube):
    k8s = k8s_full
    spec = {"model": {"name": "m"}, "resources": {"gpusPerReplica": 0}, "inferencePool": {},
            "autoscaling": {"mode": "KEDA", "minReplicas": 0, "maxReplicas": 3,
                            "keda": {"prometheusServerAddress": "http://p:9090"}}}
    outcome = await put_and_reconcile(k8s, kube, "routed", spec)
    assert outcome.requeue_after is None
    so = obj(k8s, "keda.sh/v1alpha1/scaledobjects", NS, "routed")
    validate_upstream("keda.sh_scaledobjects.yaml", {"spec": so["spec"]})
    pool = obj(k8s, "inference.networking.k8s.io/v1/inferencepools", NS, "routed")
    assert pool["spec"]["endpointPickerRef"]["name"] == "routed-epp"
    assert obj(k8s, "apps/v1/deployments", NS, "routed-epp") is not None
    assert obj(k8s, "rbac.authorization.k8s.io/v1/roles", NS, "routed-epp") is not None
    assert obj(k8s, "autoscaling/v2/horizontalpodautoscalers", NS, "routed") is None
    # A second reconcile writes nothing: every object is up to date.
    before = len(list(k8s))
    await asyncio.to_thread(reconcile.reconcile, kube, NS, "routed")
    writes = [r for r in list(k8s)[before:] if str(r.method.value) in ("POST", "PATCH", "DELETE")
              and r.resource.plural != "secrets"]  # the API key Secret: create-only, 409 each time
    assert writes == []
    # Switching to an HPA and dropping the pool removes what the spec no longer asks for.
    plain = {"model": {"name": "m"}, "resources": {"gpusPerReplica": 0},
             "autoscaling": {"maxReplicas": 3}}
    await put_and_reconcile(k8s, kube, "routed", plain, generation=2)
    assert obj(k8s, "keda.sh/v1alpha1/scaledobjects", NS, "routed") is None
    assert obj(k8s, "inference.networking.k8s.io/v1/inferencepools", NS, "routed") is None
    for plural in ("apps/v1/deployments", "v1/services", "v1/serviceaccounts",
                   "rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/rolebindings"):
        assert obj(k8s, plural, NS, "routed-epp") is None, plural
    assert obj(k8s, "autoscaling/v2/horizontalpodautoscalers", NS, "routed") is not None
    assert obj(k8s, "apps/v1/deployments", NS, "routed") is not None


class WithoutKeda:
    """A client of a cluster without KEDA's CRD: writes of ScaledObjects get the API server's 404
    (kmock stores any resource it is sent)."""

    def __init__(self, kube):
        self.kube = kube

    def __getattr__(self, name):
        return getattr(self.kube, name)

    def apply(self, manifest):
        return self._refuse(manifest) or self.kube.apply(manifest)

    def create(self, manifest):
        return self._refuse(manifest) or self.kube.create(manifest)

    @staticmethod
    def _refuse(manifest):
        from octavo.operator.kube import ApiError

        if manifest["kind"] == "ScaledObject":
            raise ApiError(404, "the server could not find the requested resource")


async def test_missing_crd_is_a_warning_and_the_model_still_serves(k8s, kube):
    kube = WithoutKeda(kube)
    spec = {"model": {"name": "m"}, "resources": {"gpusPerReplica": 0},
            "autoscaling": {"mode": "KEDA", "maxReplicas": 3,
                            "keda": {"prometheusServerAddress": "http://p:9090"}}}
    outcome = await put_and_reconcile(k8s, kube, "nokeda", spec)
    assert outcome.requeue_after == reconcile.MISSING_API_REQUEUE_SECONDS
    assert obj(k8s, "apps/v1/deployments", NS, "nokeda") is not None
    warnings = [e for e in objs(k8s, "v1/events", NS) if e["reason"] == "MissingAPI"]
    assert warnings and "keda.sh/v1alpha1" in warnings[0]["message"]


def test_service_account_is_a_granted_right():
    spec = {"model": {"name": "m"}, "podTemplate": {"spec": {"serviceAccountName": "deployer"}}}
    errors = admission.check_policy(spec, admission.Policy(service_accounts=()))
    assert errors == ["spec.podTemplate.spec.serviceAccountName 'deployer' is not an allowed "
                      "ServiceAccount (none is allowed): leave it out (the pods run as the "
                      "namespace's default, with no token), or ask a cluster admin to add it to "
                      "the octavo-operator chart value policy.allowedServiceAccounts"]
    assert admission.check_policy(spec, admission.Policy(service_accounts=("deploy*",))) == []
    assert admission.Policy.from_env({"OCTAVO_ALLOWED_SERVICE_ACCOUNTS": "a,b-*"}).service_accounts \
        == ("a", "b-*")
    body, spec_ = build(spec)
    assert resources.deployment(body, spec_)["spec"]["template"]["spec"]["serviceAccountName"] \
        == "deployer"


@pytest.mark.parametrize("pod", [
    {"volumes": "x"}, {"volumes": ["x"]}, {"imagePullSecrets": [None]},
    {"containers": "server"}, {"containers": [{"name": "server", "env": "A=1"}]},
    {"containers": [{"name": "server", "env": [1]}]},
    {"containers": [{"name": "server", "securityContext": []}]}, {"nodeSelector": ["a"]},
    {"tolerations": {"key": "a"}},
])
def test_malformed_overrides_are_refused_not_crashed_on(pod):
    """The free-form part of the override: a wrong shape is a message (never an exception in the
    webhook or the reconcile), and the policy walk skips what it cannot read."""
    spec = {"model": {"name": "m"}, "podTemplate": {"spec": pod}}
    errors = admission.check_llmservice(spec, "svc")
    assert errors and all("spec.podTemplate.spec" in e for e in errors), errors
    admission.check_policy(spec, admission.Policy(images=(), secrets=(), claims=(),
                                                  service_accounts=()))


@pytest.mark.parametrize("pod", [
    {"volumes": [{"name": "v", "projected": "x"}]},
    {"volumes": [{"name": "v", "projected": {"sources": ["x"]}}]},
    {"containers": [{"name": "server", "envFrom": [{"secretRef": "x"}]}]},
])
def test_deeper_malformed_fields_pass_the_checks_without_crashing(pod):
    """Deeper than the checks read, the Deployment's own validation refuses it (see
    test_a_deployment_the_api_server_refuses_is_a_condition)."""
    spec = {"model": {"name": "m"}, "podTemplate": {"spec": pod}}
    admission.check_llmservice(spec, "svc")
    admission.check_policy(spec, admission.Policy(images=(), secrets=(), claims=()))
    body, spec_ = build(spec)
    resources.deployment(body, spec_)


class RefusingDeployments(WithoutKeda):
    """A client whose API server refuses the Deployment as invalid (422)."""

    @staticmethod
    def _refuse(manifest):
        from octavo.operator.kube import ApiError

        if manifest["kind"] == "Deployment":
            raise ApiError(422, 'Deployment.apps "bad" is invalid: spec.template.spec.volumes[2]'
                                '.projected: Invalid value')


async def test_a_deployment_the_api_server_refuses_is_a_condition(k8s, kube):
    kube = RefusingDeployments(kube)
    spec = {"model": {"name": "m"}, "resources": {"gpusPerReplica": 0},
            "podTemplate": {"spec": {"volumes": [{"name": "v", "projected": "x"}]}}}
    outcome = await put_and_reconcile(k8s, kube, "bad", spec)
    assert outcome.phase == "Blocked" and outcome.requeue_after is None
    cond = spec_valid(k8s, "bad")
    assert (cond["status"], cond["reason"]) == ("False", "Rejected")
    assert "volumes[2].projected: Invalid value" in cond["message"]
    assert [e for e in objs(k8s, "v1/events", NS) if e["reason"] == "Rejected"]
