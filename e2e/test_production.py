"""Scenario 9: production fields on the real control plane (#25 part B). The pod override reaches
the Deployment; an HPA with the spec's behavior, or a KEDA ScaledObject, is created as asked; an
InferencePool and its endpoint picker are created against the upstream CRD; an unknown extraArgs
flag is refused by the webhook, and without the webhook blocks the rollout with SpecValid=False.

KEDA's ScaledObject and the Inference Extension's InferencePool CRDs are installed from the
upstream YAML vendored in tests/operator/upstream/; no KEDA controller or gateway runs (the API
server validates the objects against the upstream schemas, which is what is checked here).
"""

from __future__ import annotations

import pytest
import yaml

from e2e import serving
from e2e.cluster import REPO_ROOT, wait_for
from e2e.kube import resource_path

pytestmark = pytest.mark.e2e

UPSTREAM = REPO_ROOT / "tests" / "operator" / "upstream"
UPSTREAM_CRDS = ["keda.sh_scaledobjects.yaml", "inference.networking.k8s.io_inferencepools.yaml"]
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
SKIP_WEBHOOK_LABEL = "e2e.octavo.dev/skip-webhook"


@pytest.fixture(scope="module")
def upstream_crds(cluster):
    for filename in UPSTREAM_CRDS:
        path = UPSTREAM / filename
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s",
                        timeout_s=70)


def demo(name: str, **changes) -> dict:
    return serving.with_spec(serving.example("demo.yaml"), name=name, **changes)


def wait_owned(cluster, namespace: str, name: str, api_version: str, plural: str,
               object_name: str | None = None, timeout_s: float = 120) -> dict:
    def found():
        cluster.check_alive()
        llms = serving.get(cluster, namespace, name)
        items = serving.owned(cluster, namespace, llms["metadata"]["uid"], api_version, plural)
        return next((i for i in items if i["metadata"]["name"] == (object_name or name)), None)

    return wait_for(found, timeout_s, f"{plural} {object_name or name} owned by {name}",
                    interval_s=1)


def operator_log(cluster, operator) -> str:
    pod = cluster.pods(operator["namespace"])[0]
    return cluster.container_log(operator["namespace"], pod["metadata"]["name"],
                                 pod["spec"]["containers"][0]["name"])


def assert_applied_once(cluster, operator, namespace: str, *kinds_and_names: tuple[str, str]):
    """Each object was applied when created and never again: the live object, defaulted by the
    API server, still holds everything the operator wants (no apply loop through the watches)."""
    log = operator_log(cluster, operator)
    for kind, name in kinds_and_names:
        assert f"applying {kind} {namespace}/{name} (created)" in log, (kind, name)
        assert f"applying {kind} {namespace}/{name} (drifted)" not in log, (kind, name)


def test_pod_override_fields_appear_in_the_deployment(cluster, operator, namespace):
    cluster.kube.create(resource_path("v1", "secrets", namespace), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e2e-allowed-creds"},
        "stringData": {"EXTRA_TOKEN": "t"}})
    # replicas 0: the Deployment is what is checked; no pod needs to run.
    document = demo("pods", replicas=0, extraArgs=["--enable-prefix-caching"],
                    rollout={"maxSurge": "50%", "maxUnavailable": 0},
                    resources={"gpusPerReplica": 0, "memory": "2Gi", "cpu": "1",
                               "extended": {"example.com/fast-nic": "1"}},
                    podTemplate={
                        "metadata": {"labels": {"team": "search"},
                                     "annotations": {"cost-center": "4711"}},
                        "spec": {
                            "imagePullSecrets": [{"name": "e2e-allowed-creds"}],
                            "nodeSelector": {"e2e.octavo.dev/pool": "cpu"},
                            "tolerations": [{"key": "dedicated", "operator": "Exists",
                                             "effect": "NoSchedule"}],
                            "topologySpreadConstraints": [{
                                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": {"team": "search"}}}],
                            "volumes": [{"name": "scratch", "emptyDir": {}}],
                            "containers": [{"name": "server",
                                            "env": [{"name": "EXTRA", "value": "1"}],
                                            "envFrom": [{"secretRef": {"name": "e2e-allowed-creds"}}],
                                            "volumeMounts": [{"name": "scratch",
                                                              "mountPath": "/scratch"}]}]}})
    serving.apply(cluster, namespace, document)
    deployment = wait_owned(cluster, namespace, "pods", "apps/v1", "deployments")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "server")
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "pods"
    assert template["metadata"]["annotations"]["cost-center"] == "4711"
    assert pod["imagePullSecrets"] == [{"name": "e2e-allowed-creds"}]
    assert pod["nodeSelector"] == {"e2e.octavo.dev/pool": "cpu"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "e2e-allowed-creds"}}]
    assert container["args"][-1] == "--enable-prefix-caching"
    assert container["resources"]["limits"]["example.com/fast-nic"] == "1"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "50%",
                                                                "maxUnavailable": 0}
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0  # still drained
    # What the operator owns is refused at apply, naming the field.
    bad = demo("pods-bad", podTemplate={"spec": {"containers": [{"name": "server",
                                                                 "command": ["sh"]}]}})
    result = serving.apply(cluster, namespace, bad, check=False)
    assert result.returncode != 0
    assert "containers[0].command is owned by the operator" in result.stderr, result.stderr
    # Running as a ServiceAccount is a right the chart grants (policy.allowedServiceAccounts).
    as_account = demo("pods-sa", podTemplate={"spec": {"serviceAccountName": "deployer"}})
    result = serving.apply(cluster, namespace, as_account, check=False)
    assert result.returncode != 0
    assert "serviceAccountName deployer is not an allowed ServiceAccount" in result.stderr or \
        "serviceAccountName 'deployer' is not an allowed ServiceAccount" in result.stderr, result.stderr


def test_hpa_with_the_specs_behavior(cluster, operator, namespace):
    behavior = {"scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}]},
                "scaleDown": {"stabilizationWindowSeconds": 120,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}
    serving.apply(cluster, namespace, demo("scaled", autoscaling={
        "minReplicas": 1, "maxReplicas": 3, "behavior": behavior}))
    hpa = wait_owned(cluster, namespace, "scaled", "autoscaling/v2", "horizontalpodautoscalers")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert hpa["spec"]["behavior"]["scaleUp"]["policies"] == behavior["scaleUp"]["policies"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scaled"


def test_keda_scaled_object_created_against_the_upstream_crd(cluster, operator, upstream_crds,
                                                            namespace):
    serving.apply(cluster, namespace, demo("keda", autoscaling={
        "mode": "KEDA", "minReplicas": 0, "maxReplicas": 4,
        "keda": {"prometheusServerAddress": "http://prometheus.monitoring.svc:9090",
                 "activationThreshold": "1", "cooldownPeriod": 600}}))
    scaled = wait_owned(cluster, namespace, "keda", "keda.sh/v1alpha1", "scaledobjects")
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 4)
    trigger, = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["activationThreshold"] == "1"
    assert "octavo:num_requests_waiting" in trigger["metadata"]["query"]
    # The pod came up (Deployment status events reconcile again) without a re-apply.
    serving.wait_phase(cluster, namespace, "keda", "Ready", 180)
    assert_applied_once(cluster, operator, namespace, ("ScaledObject", "keda"),
                        ("Deployment", "keda"))
    # KEDA makes its own HPA; the operator makes none, and leaves replicas to it.
    llms = serving.get(cluster, namespace, "keda")
    assert not serving.owned(cluster, namespace, llms["metadata"]["uid"], "autoscaling/v2",
                             "horizontalpodautoscalers")
    deployment = wait_owned(cluster, namespace, "keda", "apps/v1", "deployments")
    managers = {m["manager"] for m in deployment["metadata"]["managedFields"]
                if "f:replicas" in str(m.get("fieldsV1", {}).get("f:spec", {}))}
    assert "octavo-operator" not in managers


def test_inference_pool_created_against_the_upstream_crd(cluster, operator, upstream_crds,
                                                         namespace):
    serving.apply(cluster, namespace, demo("routed", replicas=0,
                                           inferencePool={"endpointPicker": {"failureMode": "FailOpen"}}))
    pool = wait_owned(cluster, namespace, "routed", "inference.networking.k8s.io/v1",
                      "inferencepools")
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "routed"
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"]["name"] == "routed-epp"
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"
    picker = wait_owned(cluster, namespace, "routed", "apps/v1", "deployments", "routed-epp")
    args = picker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["--pool-name", "routed", "--pool-namespace", namespace]
    wait_owned(cluster, namespace, "routed", "v1", "services", "routed-epp")
    wait_owned(cluster, namespace, "routed", "rbac.authorization.k8s.io/v1", "roles", "routed-epp")
    wait_owned(cluster, namespace, "routed", "rbac.authorization.k8s.io/v1", "rolebindings",
               "routed-epp")
    # The picker's Deployment gets status updates (its pod cannot run here): each reconciles the
    # LLMService again, and nothing is re-applied.
    wait_for(lambda: (cluster.kube.get(resource_path("apps/v1", "deployments", namespace,
                                                     "routed-epp")).get("status") or {})
             .get("observedGeneration"), 60, "the picker Deployment's status", interval_s=1)
    assert_applied_once(cluster, operator, namespace, ("InferencePool", "routed"),
                        ("Deployment", "routed-epp"), ("Service", "routed-epp"),
                        ("Role", "routed-epp"), ("RoleBinding", "routed-epp"),
                        ("ServiceAccount", "routed-epp"))
    # Dropping spec.inferencePool removes the pool and its picker.
    llms = serving.get(cluster, namespace, "routed")
    cluster.kubectl("patch", "llmservice/routed", "-n", namespace, "--type=json",
                    "-p", '[{"op": "remove", "path": "/spec/inferencePool"}]')
    wait_for(lambda: not serving.owned(cluster, namespace, llms["metadata"]["uid"],
                                       "inference.networking.k8s.io/v1", "inferencepools")
             and not [d for d in serving.owned(cluster, namespace, llms["metadata"]["uid"],
                                               "apps/v1", "deployments")
                      if d["metadata"]["name"] == "routed-epp"],
             120, "the InferencePool and its picker removed", interval_s=1)


def test_unknown_extra_arg_is_refused_or_blocks_the_rollout(cluster, operator, namespace):
    bad = demo("flags", replicas=0, extraArgs=["--no-such-flag", "1"])
    # With the webhook: refused at apply, naming the flag.
    result = serving.apply(cluster, namespace, bad, check=False)
    assert result.returncode != 0 and "--no-such-flag" in result.stderr, result.stderr
    # Without it (a cluster that runs none): stored, but nothing rolls out and SpecValid says why.
    config_name = f"{operator['release']}-octavo-operator"
    path = f"{WEBHOOKS}/{config_name}"
    saved = cluster.kube.get(path)
    cluster.kube.merge_patch(f"/api/v1/namespaces/{namespace}",
                             {"metadata": {"labels": {SKIP_WEBHOOK_LABEL: "true"}}})
    skip = {"matchExpressions": [{"key": SKIP_WEBHOOK_LABEL, "operator": "DoesNotExist"}]}
    cluster.kube.merge_patch(path, {"webhooks": [{**hook, "namespaceSelector": skip}
                                                 for hook in saved["webhooks"]]})
    try:
        wait_for(lambda: serving.apply(cluster, namespace, bad, check=False).returncode == 0, 30,
                 "the LLMService stored past the webhook", interval_s=1)
        llms = serving.wait_phase(cluster, namespace, "flags", "Blocked", 60)
        condition = serving.condition(llms, "SpecValid")
        assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
        assert "--no-such-flag is not a flag `octavo serve` knows" in condition["message"]
        assert not serving.owned(cluster, namespace, llms["metadata"]["uid"], "apps/v1",
                                 "deployments")
    finally:
        cluster.kube.merge_patch(path, {"webhooks": saved["webhooks"]})
