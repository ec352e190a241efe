"""The Helm chart: `helm lint`, `helm template` for the main value sets, every rendered object
accepted by the Kubernetes schemas, and least-privilege RBAC.

helm comes from tools/install_helm.sh (built once from the Go module proxy, then cached); the
first run on a machine compiles it, which takes minutes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from operator_helpers import K8S_VERSION, REPO

from octavo.operator import crd

CHART = REPO / "charts" / "octavo-operator"
BUILD_TIMEOUT = 1500  # a first build of helm on 2 cores; cached afterwards

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 120)

VALUE_SETS = {
    "defaults": [],
    "namespaced+webhook": ["--set", "watchNamespaces={ml,staging}", "--set", "webhook.enabled=true"],
    "debug": ["--set", "logLevel=debug", "--set", "image.tag=dev", "--set",
              "runtimeImage.repository=registry.local/octavo-runtime"],
    "policy": ["--set", "policy.allowedImages={registry.local/ml/*,ghcr.io/org/runtime}",
               "--set", "policy.allowedSecrets={hf-token,team-*}",
               "--set", "policy.allowedClaims={model-*}",
               "--set", "modelDelivery.imageVolumes=true", "--set", "clusterDomain=cluster.local",
               "--set", "validation.retryBaseSeconds=5", "--set", "validation.retryMaxSeconds=60",
               "--set-json", 'networkPolicy.ingressFrom=[{"namespaceSelector": {"matchLabels": '
               '{"kubernetes.io/metadata.name": "gateway"}}}]'],
    "open": ["--set", "networkPolicy.enabled=false", "--set",
             "policy.validatingAdmissionPolicy=false", "--set", "userRoles.create=false"],
    "monitoring": ["--set", "monitoring.grafanaDashboard.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
                   "--set", "monitoring.serviceMonitor.enabled=true", "--set", "watchNamespaces={ml}",
                   "--set", "monitoring.podMonitor.labels.release=kube-prometheus-stack"],
    "cert-manager": ["--set", "webhook.enabled=true", "--set", "webhook.certManager.enabled=true"],
    "cert-manager-issuer": ["--set", "webhook.enabled=true", "--set", "webhook.certManager.enabled=true",
                            "--set", "webhook.certManager.issuerRef.name=corp-ca",
                            "--set", "webhook.certManager.issuerRef.kind=ClusterIssuer"],
    "inference-extension": ["--set", "inferenceExtension.enabled=true", "--set",
                            "inferenceExtension.endpointPickerImage=registry.local/epp:v1"],
}
# prometheus-operator's kinds: no schema for them in kubernetes-validate (checked by structure below)
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor"}
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}


@pytest.fixture(scope="session")
def helm() -> str:
    return go_tool("install_helm.sh", "helm")


def go_tool(script: str, name: str) -> str:
    """A tool built from the Go module proxy by tools/<script> (cached after the first build)."""
    out = subprocess.run([str(REPO / "tools" / script)], capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT)
    if out.returncode != 0:
        if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
            pytest.skip(f"{name} is not cached and there is no 'go' to build it "
                        f"(tools/{script})")
        pytest.fail(f"tools/{script} failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def run_helm(helm, *args) -> str:
    out = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def render_text(helm, values) -> str:
    return run_helm(helm, "template", "octavo", str(CHART), "--namespace", "octavo-system",
                    "--include-crds", *values)


def render(helm, values) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(helm, values)) if doc]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint(helm, name):
    out = run_helm(helm, "lint", str(CHART), "--strict", *VALUE_SETS[name])
    assert "0 chart(s) failed" in out and "[ERROR]" not in out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates(helm, name):
    docs = render(helm, VALUE_SETS[name])
    for doc in docs:
        if doc["kind"] not in MONITORING_KINDS | CERT_MANAGER_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Deployment"} <= kinds
    crd_doc = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crd_doc == crd.build_crd()


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_defaults_watch_every_namespace(helm):
    docs = render(helm, [])
    deployment, = by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/octavo-dev/octavo-operator:0.1.0"
    assert container["args"][:2] == ["operator", "--standalone"]
    assert "--all-namespaces" in container["args"]
    assert {"name": "OCTAVO_RUNTIME_IMAGE",
            "value": "ghcr.io/octavo-dev/octavo-runtime:0.1.0"} in container["env"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    binding, = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "octavo-octavo-operator",
                                    "namespace": "octavo-system"}]
    assert by_kind(docs, "RoleBinding") == []
    assert by_kind(docs, "ValidatingWebhookConfiguration") == []


def test_rbac_is_least_privilege(helm):
    docs = render(helm, VALUE_SETS["namespaced+webhook"])
    role, = [r for r in by_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith(
        ("-llmservice-editor", "-llmservice-viewer"))]
    verbs = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]}
    assert verbs == {
        ("serving.octavo.dev", "llmservices"): {"get", "list", "watch", "patch"},
        ("serving.octavo.dev", "llmservices/status"): {"get", "patch"},
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
        ("", "services"): {"get", "list", "watch", "create", "patch"},
        ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
        ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch",
                                                      "delete"},
        ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "pods"): {"get", "list"},
        # model cache claims it creates and deletes; not watched (their Jobs' events are)
        ("", "persistentvolumeclaims"): {"get", "list", "create", "delete"},
        ("", "secrets"): {"create"},  # the generated API key; never read
        ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch",
                                                   "delete"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
        ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "patch", "delete"},
    }
    # Listed namespaces: RoleBindings there, nothing cluster-wide.
    assert by_kind(docs, "ClusterRoleBinding") == []
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == \
        ["ml", "staging"]
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--namespace=ml" in container["args"] and "--namespace=staging" in container["args"]


def test_webhook_wiring(helm):
    from octavo.operator import main

    docs = render(helm, VALUE_SETS["namespaced+webhook"])
    config, = by_kind(docs, "ValidatingWebhookConfiguration")
    webhook, = config["webhooks"]
    service, = by_kind(docs, "Service")
    assert webhook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"], "namespace": "octavo-system", "port": 9443,
        "path": f"/{main.WEBHOOK_ID}"}
    assert webhook["clientConfig"]["caBundle"]
    assert webhook["rules"][0]["resources"] == ["llmservices"]
    assert webhook["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml", "staging"]
    secret, = by_kind(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key"}
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["OCTAVO_WEBHOOK_PORT"] == "9443"
    assert env["OCTAVO_WEBHOOK_CERT"] == "/webhook-tls/tls.crt"
    assert {"name": "webhook-tls", "secret": {"secretName": secret["metadata"]["name"]}} in \
        pod["volumes"]


def operator_env(docs) -> dict[str, str]:
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_default_policy_and_settings_reach_the_operator(helm):
    from octavo.operator import admission, reconcile, resources

    env = operator_env(render(helm, []))
    policy = admission.Policy.from_env(env)
    # Secure by default: the runtime repository only, no Secrets, any claim, no ServiceAccount.
    # oci:// sources off until the cluster is known to have image volumes (modelDelivery).
    assert policy == admission.Policy(("ghcr.io/octavo-dev/octavo-runtime",), (), ("*",),
                                      image_volumes=False, service_accounts=())
    assert (env[reconcile.RETRY_BASE_ENV], env[reconcile.RETRY_MAX_ENV]) == ("30", "600")
    assert reconcile.network_policy_settings(env) == resources.NetworkPolicySettings()


def test_policy_values_reach_the_operator(helm):
    from octavo.operator import admission, reconcile, resources

    env = operator_env(render(helm, VALUE_SETS["policy"]))
    assert admission.Policy.from_env(env) == admission.Policy(
        ("ghcr.io/octavo-dev/octavo-runtime", "registry.local/ml/*", "ghcr.io/org/runtime"),
        ("hf-token", "team-*"), ("model-*",), image_volumes=True, service_accounts=())
    assert reconcile.cluster_domain(env) == "cluster.local"
    assert reconcile.cluster_domain(operator_env(render(helm, []))) is None
    assert (env[reconcile.RETRY_BASE_ENV], env[reconcile.RETRY_MAX_ENV]) == ("5", "60")
    settings = reconcile.network_policy_settings(env)
    assert settings == resources.NetworkPolicySettings(ingress_from=({"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},))

    off = operator_env(render(helm, VALUE_SETS["open"]))
    assert reconcile.network_policy_settings(off) is None


def test_validating_admission_policy_mirrors_the_operators_policy(helm):
    """The CEL sees the same lists as the operator; the API server evaluates it (e2e)."""
    docs = render(helm, VALUE_SETS["policy"] + ["--set", "watchNamespaces={ml}"])
    policy, = by_kind(docs, "ValidatingAdmissionPolicy")
    binding, = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["imageRepos"]) == ["ghcr.io/octavo-dev/octavo-runtime",
                                                   "ghcr.io/org/runtime"]
    assert json.loads(variables["imagePrefixes"]) == ["registry.local/ml/"]
    from octavo.operator.admission import name_pattern
    import re
    for patterns, names in ((variables["secretPatterns"], ["hf-token", "team-*"]),
                            (variables["claimPatterns"], ["model-*"])):
        # Go's regexp.QuoteMeta and Python's re.escape differ in form, not in what matches.
        for cel, name in zip(json.loads(patterns), names, strict=True):
            for probe in ("hf-token", "team-a", "team-", "model-x", "model", "xhf-token"):
                assert bool(re.fullmatch(cel, probe)) == bool(re.fullmatch(name_pattern(name),
                                                                           probe)), (cel, probe)
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["llmservices"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0][
        "values"] == ["ml"]
    assert by_kind(render(helm, VALUE_SETS["open"]), "ValidatingAdmissionPolicy") == []
    # Claims include pvc:// sources, Secrets the hub token's; oci:// is refused unless
    # modelDelivery.imageVolumes (the policy value set turns it on).
    assert "pvc://" in variables["claimRefs"] and "hubTokenSecretRef" in variables["secretRefs"]
    assert not any("oci://" in v["expression"] for v in policy["spec"]["validations"])
    default_policy, = by_kind(render(helm, []), "ValidatingAdmissionPolicy")
    oci_rule, = [v for v in default_policy["spec"]["validations"] if "oci://" in v["expression"]]
    assert "modelDelivery.imageVolumes" in oci_rule["message"]


@pytest.mark.parametrize("name, port", [("defaults", "liveness"), ("namespaced+webhook", "webhook")])
def test_operator_readiness_probe(helm, name, port):
    container = by_kind(render(helm, VALUE_SETS[name]), "Deployment")[0]["spec"]["template"][
        "spec"]["containers"][0]
    assert container["readinessProbe"]["tcpSocket"] == {"port": port}
    assert container["readinessProbe"] != container["livenessProbe"]
    limits = container["resources"]["limits"]
    assert {"cpu", "memory", "ephemeral-storage"} <= set(limits)


def test_operator_network_policy(helm):
    docs = render(helm, VALUE_SETS["namespaced+webhook"])
    policy, = by_kind(docs, "NetworkPolicy")
    pod_labels = by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "webhook"}]}]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443}
    defaults, = by_kind(render(helm, []), "NetworkPolicy")
    assert defaults["spec"]["ingress"] == []  # no webhook: nothing comes in
    assert by_kind(render(helm, VALUE_SETS["open"]), "NetworkPolicy") == []


def test_user_roles(helm):
    roles = {r["metadata"]["name"]: r for r in by_kind(render(helm, []), "ClusterRole")}
    editor = roles["octavo-octavo-operator-llmservice-editor"]
    viewer = roles["octavo-octavo-operator-llmservice-viewer"]
    # The editor may manage LLMServices and nothing they run.
    assert {res for rule in editor["rules"] for res in rule["resources"]} == \
        {"llmservices", "llmservices/status", "llmservices/scale"}
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in viewer["rules"])


def test_monitoring_is_off_by_default(helm):
    kinds = {d["kind"] for d in render(helm, [])}
    assert not kinds & MONITORING_KINDS and "ConfigMap" not in kinds


def test_monitors_select_the_serving_pods_the_operator_creates(helm):
    """The PodMonitor and ServiceMonitor select what resources.py builds, in the watched
    namespaces, on the port named http at /metrics."""
    import json

    from operator_helpers import as_stored, load_example

    from octavo.operator import resources
    from octavo.operator.spec import LLMServiceSpec

    docs = render(helm, VALUE_SETS["monitoring"])
    body = as_stored(load_example("llmservice.yaml"))
    spec = LLMServiceSpec.from_dict(body["spec"])
    pod = resources.deployment(body, spec)["spec"]["template"]
    service = resources.service(body, spec)
    pod_monitor, = by_kind(docs, "PodMonitor")
    service_monitor, = by_kind(docs, "ServiceMonitor")
    for monitor, target in ((pod_monitor, pod), (service_monitor, service)):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
        selected = monitor["spec"]["selector"]["matchLabels"]
        assert selected.items() <= target["metadata"]["labels"].items(), (selected, target["metadata"]["labels"])
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoint, = pod_monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert any(port["name"] == "http" for port in pod["spec"]["containers"][0]["ports"])
    assert any(port["name"] == "http" for port in service["spec"]["ports"])
    assert service_monitor["spec"]["endpoints"][0]["port"] == "http"
    everywhere = render(helm, ["--set", "monitoring.podMonitor.enabled=true"])
    assert by_kind(everywhere, "PodMonitor")[0]["spec"]["namespaceSelector"] == {"any": True}
    # The dashboard ConfigMap carries the chart's dashboard as it is, labelled for Grafana's sidecar.
    config_map, = by_kind(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["octavo.json"]) == json.loads((CHART / "dashboards" / "octavo.json").read_text())


# --- #25: cert-manager, the Inference Extension's RBAC, values.schema.json -------------------


def test_cert_manager_certificates_replace_gen_ca(helm):
    docs = render(helm, VALUE_SETS["cert-manager"])
    assert render_text(helm, VALUE_SETS["cert-manager"]) == \
        render_text(helm, VALUE_SETS["cert-manager"])  # nothing random: Argo CD stays in sync
    assert by_kind(docs, "Secret") == []  # cert-manager writes the TLS Secret
    config, = by_kind(docs, "ValidatingWebhookConfiguration")
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    certificates = {c["metadata"]["name"]: c for c in by_kind(docs, "Certificate")}
    serving = certificates["octavo-octavo-operator-webhook"]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        "octavo-system/octavo-octavo-operator-webhook"
    assert set(serving["spec"]["dnsNames"]) == {
        "octavo-octavo-operator", "octavo-octavo-operator.octavo-system",
        "octavo-octavo-operator.octavo-system.svc"}
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": serving["spec"]["secretName"]}} in \
        pod["volumes"]
    # The self-signed bootstrap: selfSigned Issuer -> CA Certificate -> CA Issuer -> serving.
    issuers = {i["metadata"]["name"]: i["spec"] for i in by_kind(docs, "Issuer")}
    ca = certificates["octavo-octavo-operator-webhook-ca"]
    assert ca["spec"]["isCA"] is True
    assert issuers[ca["spec"]["issuerRef"]["name"]] == {"selfSigned": {}}
    assert issuers[serving["spec"]["issuerRef"]["name"]] == {"ca": {"secretName": ca["spec"]["secretName"]}}

    docs = render(helm, VALUE_SETS["cert-manager-issuer"])
    assert by_kind(docs, "Issuer") == []
    serving, = by_kind(docs, "Certificate")
    assert serving["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer",
                                            "group": "cert-manager.io"}


def test_inference_extension_rbac_and_picker_image(helm):
    def rules(docs):
        role, = [r for r in by_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith(
            ("-llmservice-editor", "-llmservice-viewer"))]
        return {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
                for r in rule["resources"]}

    docs = render(helm, VALUE_SETS["inference-extension"])
    verbs = rules(docs)
    assert verbs[("inference.networking.k8s.io", "inferencepools")] >= {"get", "list", "watch",
                                                                        "create", "patch", "delete"}
    assert verbs[("", "pods")] == {"get", "list", "watch"}  # the picker's Role needs watch
    assert verbs[("rbac.authorization.k8s.io", "roles")] == {"get", "create", "patch", "delete"}
    assert "delete" in verbs[("apps", "deployments")]
    assert operator_env(docs)["OCTAVO_EPP_IMAGE"] == "registry.local/epp:v1"
    policy, = by_kind(docs, "ValidatingAdmissionPolicy")
    assert "registry.local/epp:v1" in json.dumps(policy)
    off = rules(render(helm, []))
    assert ("inference.networking.k8s.io", "inferencepools") not in off
    assert "delete" not in off[("apps", "deployments")]
    assert "OCTAVO_EPP_IMAGE" not in operator_env(render(helm, []))


@pytest.mark.parametrize("values, fragment", [
    (["--set", "webhok.enabled=true"], "additional properties 'webhok' not allowed"),
    (["--set", "webhook.failurePolicy=Sometimes"], "value must be one of"),
    (["--set", "webhook.certManager.issuerRef.kind=Secret"], "value must be one of"),
    (["--set", "livenessPort=0"], "minimum"),
    (["--set", "modelDelivery.imageVolume=true"],
     "additional properties 'imageVolume' not allowed"),
    (["--set", "modelDelivery.imageVolumes=yes"],
     "'/modelDelivery/imageVolumes': got string, want boolean"),
    (["--set", "clusterDomain=Cluster_Local"], "'/clusterDomain'"),
])
def test_values_schema_refuses_mistakes(helm, values, fragment):
    out = subprocess.run([helm, "template", "octavo", str(CHART), *values], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and fragment in out.stderr, out.stderr


def test_service_account_allow_list_reaches_the_operator_and_the_policy(helm):
    docs = render(helm, ["--set", "policy.allowedServiceAccounts={inference-*}"])
    assert operator_env(docs)["OCTAVO_ALLOWED_SERVICE_ACCOUNTS"] == "inference-*"
    policy, = by_kind(docs, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    import re
    pattern, = json.loads(variables["serviceAccountPatterns"])
    assert re.fullmatch(pattern, "inference-a") and not re.fullmatch(pattern, "default")
    assert operator_env(render(helm, []))["OCTAVO_ALLOWED_SERVICE_ACCOUNTS"] == ""  # none
