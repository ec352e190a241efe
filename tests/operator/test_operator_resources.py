"""The pure builders: for each example, the fields that matter, and every object accepted by the
Kubernetes schemas (kubernetes-validate, strict: unknown fields fail too)."""

from __future__ import annotations

import re
import subprocess
import sys

import kubernetes_validate
import pytest
from operator_helpers import EXAMPLES, K8S_VERSION, REPO, as_stored, load_example

from octavo.operator import crd, resources
from octavo.operator.spec import LLMServiceSpec

pytestmark = pytest.mark.timeout(60)

EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def build(name):
    body = as_stored(load_example(name))
    spec = LLMServiceSpec.from_dict(body["spec"])
    return body, spec


def flag(args, name):
    return args[args.index(name) + 1]


def container_of(obj):
    return obj["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_object_validates(name):
    body, spec = build(name)
    objects = resources.serving_objects(body, spec)
    if spec.draft is not None:
        objects.append(resources.validation_job(body, spec))
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "serving.octavo.dev/v1alpha1", "kind": "LLMService",
            "name": body["metadata"]["name"], "uid": "uid-1234", "controller": True,
            "blockOwnerDeletion": True}]
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "octavo-operator"


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_pods_are_locked_down(name):
    body, spec = build(name)
    objects = [resources.deployment(body, spec)]
    if spec.draft is not None:
        objects.append(resources.validation_job(body, spec))
    for obj in objects:
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_speculative_deployment():
    body, spec = build("speculative.yaml")
    deployment = resources.deployment(body, spec)
    c = container_of(deployment)
    assert c["command"] == ["octavo", "serve"]
    args = c["args"]
    assert flag(args, "--model") == "meta-llama/Meta-Llama-3.1-70B-Instruct"
    assert flag(args, "--speculative-model") == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert flag(args, "--num-speculative-tokens") == "5"
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--max-num-seqs") == "8"
    assert flag(args, "--dtype") == "half"
    assert flag(args, "--max-model-len") == "8192"
    assert "--gpu-memory-utilization" not in args  # 0.9 is the engine's default: only changes are flags
    assert "--revision" not in args  # no revision pinned
    assert flag(args, "--served-model-name") == "meta-llama/Meta-Llama-3.1-70B-Instruct"
    assert flag(args, "--shutdown-timeout") == "60"
    assert flag(args, "--download-dir") == "/models"
    assert (flag(args, "--host"), flag(args, "--port")) == ("0.0.0.0", "8000")

    assert c["resources"]["limits"] == {"nvidia.com/gpu": "4", "memory": "200Gi", "cpu": "16",
                                        "ephemeral-storage": "20Gi"}
    assert c["resources"]["requests"] == {"memory": "200Gi", "cpu": "16",
                                          "ephemeral-storage": "10Gi"}
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-weights",
                                                             "readOnly": False}} in pod["volumes"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # The grace period covers the server's drain plus the preStop pause.
    assert pod["terminationGracePeriodSeconds"] == 60 + 5 + 10
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 5

    env = {e["name"]: e for e in c["env"]}
    assert env["OCTAVO_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "llama-70b-key",
                                                                   "key": "api-key"}}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}

    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # 30 min to load
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]

    # Autoscaling: the HPA owns replicas, so the applied Deployment leaves them out.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert deployment["metadata"]["annotations"] == {
        "serving.octavo.dev/model": "meta-llama/Meta-Llama-3.1-70B-Instruct",
        "serving.octavo.dev/draft": "meta-llama/Meta-Llama-3.1-8B-Instruct"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_speculative_service_pdb_hpa():
    body, spec = build("speculative.yaml")
    service = resources.service(body, spec)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http",
                                         "protocol": "TCP", "appProtocol": "http"}]
    assert service["spec"]["selector"] == resources.selector_labels("llama-70b")
    pdb = resources.pod_disruption_budget(body, spec)
    assert pdb["spec"] == {"maxUnavailable": 1,
                           "selector": {"matchLabels": resources.selector_labels("llama-70b")}}
    hpa = resources.horizontal_pod_autoscaler(body, spec)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "llama-70b"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "octavo:num_requests_waiting"},
        "target": {"type": "AverageValue", "averageValue": "8"}}}]
    assert resources.endpoint(body, spec) == "http://llama-70b.ml.svc:8000/v1"


def test_basic_example_on_one_gpu():
    body, spec = build("llmservice.yaml")
    deployment = resources.deployment(body, spec)
    c = container_of(deployment)
    assert flag(c["args"], "--model") == "bigscience/bloomz-560m"
    assert "--speculative-model" not in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert deployment["spec"]["replicas"] == 1
    assert not any(v["name"] == "dshm" for v in deployment["spec"]["template"]["spec"]["volumes"])
    assert resources.horizontal_pod_autoscaler(body, spec) is None
    assert [o["kind"] for o in resources.serving_objects(body, spec)] == \
        ["Deployment", "Service", "PodDisruptionBudget"]


@pytest.mark.parametrize("name, draft", [("demo.yaml", None),
                                         ("demo-speculative.yaml", "octavo-demo-draft")])
def test_demo_examples_run_on_cpu(name, draft):
    body, spec = build(name)
    c = container_of(resources.deployment(body, spec))
    assert flag(c["args"], "--model") == "octavo-demo"
    assert flag(c["args"], "--served-model-name") == "octavo-demo"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert c["imagePullPolicy"] == "IfNotPresent"
    if draft:
        assert flag(c["args"], "--speculative-model") == draft
        assert flag(c["args"], "--num-speculative-tokens") == "4"
    else:
        assert "--speculative-model" not in c["args"]


def test_validation_job():
    body, spec = build("speculative.yaml")
    job = resources.validation_job(body, spec)
    name = job["metadata"]["name"]
    assert re.fullmatch(r"llama-70b-pair-[0-9a-f]{12}", name) and len(name) <= 63
    assert name == resources.validation_job_name("llama-70b", spec.pair_hash())
    c = container_of(job)
    assert c["command"][:8] == ["octavo", "check-pair",
                                "--target", "meta-llama/Meta-Llama-3.1-70B-Instruct",
                                "--draft", "meta-llama/Meta-Llama-3.1-8B-Instruct",
                                "--json", "--termination-log"]
    assert flag(c["command"], "--termination-log") == "/dev/termination-log"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                "key": "token"}}} in c["env"]
    # No API key: the validation pod serves nothing.
    assert "OCTAVO_API_KEY" not in {e["name"] for e in c["env"]}
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # One pod: a verdict (exit 1) or an error (exit 2) ends the Job; the operator retries errors
    # with its own backoff, shown in status.
    assert job["spec"]["podFailurePolicy"]["rules"] == [{
        "action": "FailJob", "onExitCodes": {"containerName": "check-pair", "operator": "In",
                                             "values": [1]}}]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600  # spec.speculative.validationTimeoutSeconds
    assert "nvidia.com/gpu" not in str(c["resources"])  # tokenizers only
    assert set(c["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}


def test_job_name_follows_the_pair_only():
    body, spec = build("speculative.yaml")
    same = LLMServiceSpec.from_dict({**body["spec"], "maxNumSeqs": 16, "replicas": 3})
    assert same.pair_hash() == spec.pair_hash()
    other_draft = LLMServiceSpec.from_dict({**body["spec"], "speculative": {
        "draftModel": {"name": "meta-llama/Llama-3.2-1B-Instruct"}}})
    pinned = LLMServiceSpec.from_dict({**body["spec"], "model": {
        "name": "meta-llama/Meta-Llama-3.1-70B-Instruct", "revision": "abc123"}})
    hashes = {spec.pair_hash(), other_draft.pair_hash(), pinned.pair_hash()}
    assert len(hashes) == 3
    assert LLMServiceSpec.from_dict({"model": {"name": "m"}}).pair_hash() is None
    long_name = resources.validation_job_name("x" * 80, spec.pair_hash())
    assert len(long_name) <= 63


def test_paths_resolve_under_the_model_cache():
    body = as_stored({"apiVersion": "serving.octavo.dev/v1alpha1", "kind": "LLMService",
                      "metadata": {"name": "local"},
                      "spec": {"model": {"path": "llama-70b"},
                               "speculative": {"draftModel": {"path": "/weights/llama-8b"}},
                               "modelCache": {"claimName": "weights", "mountPath": "/data",
                                              "readOnly": True}}})
    spec = LLMServiceSpec.from_dict(body["spec"])
    c = container_of(resources.deployment(body, spec))
    assert flag(c["args"], "--model") == "/data/llama-70b"
    assert flag(c["args"], "--served-model-name") == "llama-70b"
    assert flag(c["args"], "--speculative-model") == "/weights/llama-8b"
    assert {"name": "model-cache", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    job_command = container_of(resources.validation_job(body, spec))["command"]
    assert flag(job_command, "--download-dir") == "/tmp/hf"  # the cache is read-only


def _variants():
    """Specs across what the CRD lets a user set that reaches the serve command."""
    base = {"model": {"name": "org/model"}}
    yield "minimal", base
    for dtype in crd.DTYPES:
        yield f"dtype-{dtype}", {**base, "dtype": dtype}
    yield "everything", {"model": {"path": "weights/target", "revision": "v2"},
                         "speculative": {"draftModel": {"path": "/abs/draft"}, "numSpeculativeTokens": 16},
                         "tensorParallelSize": 8, "maxNumSeqs": 1, "maxModelLen": 131072,
                         "gpuMemoryUtilization": 0.55, "shutdownTimeoutSeconds": 0,
                         "modelCache": {"claimName": "c", "mountPath": "/cache", "readOnly": True}}
    yield "default-k", {**base, "speculative": {"draftModel": {"name": "org/draft"}}}
    yield "tiny-memory-fraction", {**base, "gpuMemoryUtilization": 0.0001}
    for name in EXAMPLE_FILES:
        yield name, load_example(name)["spec"]


@pytest.mark.parametrize("name, spec_dict", list(_variants()), ids=[name for name, _ in _variants()])
def test_every_serve_command_parses_with_the_servers_parser(name, spec_dict):
    """The operator's command line, read by `octavo serve`'s own parser, means the spec."""
    import dataclasses

    from octavo.cli import build_parser
    from octavo.runtime.server import cli as serve_cli

    spec = LLMServiceSpec.from_dict(spec_dict)
    full = build_parser().parse_args(resources.serve_args(spec)[1:])  # with spec.extraArgs
    assert serve_cli._check(full) is None
    argv = resources.operator_serve_args(spec)  # the spec's fields alone: compared field by field
    assert argv[:2] == ["octavo", "serve"]
    args = build_parser().parse_args(argv[1:])
    assert serve_cli._check(args) is None
    served = serve_cli.engine_args(args)
    wanted = spec.engine_args()
    assert {f.name: getattr(served, f.name) for f in dataclasses.fields(wanted)} == \
        dataclasses.asdict(dataclasses.replace(wanted, served_model_name=spec.model.served_name))
    assert (args.host, args.port, args.shutdown_timeout) == ("0.0.0.0", resources.CONTAINER_PORT,
                                                             spec.shutdown_timeout_seconds)
    assert serve_cli.served_names(args) == [spec.model.served_name]
    if spec.draft is not None:
        settings = served.speculative_settings()
        assert (settings["model"], settings["num_speculative_tokens"]) == (spec.draft_source,
                                                                          spec.num_speculative_tokens)


def test_the_operator_imports_no_torch():
    """The operator image has no torch; building a Deployment goes through EngineArgs."""
    code = ("import sys\n"
            "import octavo.operator.main\n"
            "from octavo.operator import resources\n"
            "from octavo.operator.spec import LLMServiceSpec\n"
            "spec = LLMServiceSpec.from_dict({'model': {'name': 'm'}, 'maxNumSeqs': 8,\n"
            "                                 'speculative': {'draftModel': {'name': 'd'}}})\n"
            "assert '--max-num-seqs' in resources.serve_args(spec)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_validation_job_gets_only_the_secrets_it_needs():
    """The hub token (a gated tokenizer needs it) and plain values pass; the API key and any other
    Secret the spec hands the server do not."""
    body, _ = build("speculative.yaml")
    body["spec"]["env"] = body["spec"]["env"] + [
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "k"}}},
        {"name": "HF_HUB_OFFLINE", "value": "0"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    spec = LLMServiceSpec.from_dict(body["spec"])
    job_env = {e["name"] for e in container_of(resources.validation_job(body, spec))["env"]}
    assert {"HF_TOKEN", "HF_HUB_OFFLINE", "POD_NAME"} <= job_env
    assert not {"WANDB_API_KEY", "OCTAVO_API_KEY"} & job_env
    server_env = {e["name"] for e in container_of(resources.deployment(body, spec))["env"]}
    assert {"HF_TOKEN", "WANDB_API_KEY", "OCTAVO_API_KEY"} <= server_env


def test_a_spec_without_a_key_gets_the_generated_secret():
    body, _ = build("demo.yaml")
    spec = LLMServiceSpec.from_dict(body["spec"])
    assert spec.api_key_ref is None
    env = {e["name"]: e for e in container_of(resources.deployment(body, spec))["env"]}
    assert env["OCTAVO_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "octavo-demo-api-key",
                                                                   "key": "api-key"}}
    secret = resources.api_key_secret(body, "s3cret")
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["metadata"]["name"] == resources.api_key_secret_name("octavo-demo")
    assert secret["stringData"] == {"api-key": "s3cret"} and secret["type"] == "Opaque"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"  # garbage-collected


def test_the_spec_cannot_replace_or_blank_the_api_key():
    body, _ = build("demo.yaml")
    spec = LLMServiceSpec.from_dict({**body["spec"], "env": [{"name": "OCTAVO_API_KEY",
                                                              "value": ""}]})
    env = [e for e in container_of(resources.deployment(body, spec))["env"]
           if e["name"] == "OCTAVO_API_KEY"]
    assert env == [{"name": "OCTAVO_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "octavo-demo-api-key", "key": "api-key"}}}]


@pytest.mark.parametrize("spec_patch, requests, limits", [
    ({}, {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "10Gi"},
     {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "200Gi", "nvidia.com/gpu": "1"}),
    ({"tensorParallelSize": 2}, {"cpu": "8", "memory": "64Gi", "ephemeral-storage": "10Gi"},
     {"cpu": "8", "memory": "64Gi", "ephemeral-storage": "200Gi", "nvidia.com/gpu": "2"}),
    ({"resources": {"gpusPerReplica": 0}}, {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "10Gi"},
     {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "200Gi"}),
    ({"resources": {"memory": "12Gi"}, "modelCache": {"claimName": "weights"}},
     {"cpu": "4", "memory": "12Gi", "ephemeral-storage": "10Gi"},
     {"cpu": "4", "memory": "12Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"}),
    ({"resources": {"cpu": "500m", "ephemeralStorage": "50Gi"}},
     {"cpu": "500m", "memory": "32Gi", "ephemeral-storage": "50Gi"},
     {"cpu": "500m", "memory": "32Gi", "ephemeral-storage": "50Gi", "nvidia.com/gpu": "1"}),
])
def test_default_resources_when_the_spec_names_none(spec_patch, requests, limits):
    """Every serving container has CPU, memory and ephemeral-storage requests and limits."""
    spec = LLMServiceSpec.from_dict({"model": {"name": "org/m"}, **spec_patch})
    assert resources.serving_resources(spec) == {"requests": requests, "limits": limits}


def test_network_policy_confines_the_services_pods():
    body, spec = build("speculative.yaml")
    policy = resources.network_policy(body, resources.NetworkPolicySettings())
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    serving_labels = resources.deployment(body, spec)["spec"]["template"]["metadata"]["labels"]
    job_labels = resources.validation_job(body, spec)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= serving_labels.items() and selector.items() <= job_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "http"}]}]
    assert {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]} == {53, 443}

    peers = ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},)
    narrow = resources.network_policy(body, resources.NetworkPolicySettings(ingress_from=peers,
                                                                            egress=()))
    kubernetes_validate.validate(narrow, K8S_VERSION, strict=True)
    assert narrow["spec"]["ingress"][0]["from"] == list(peers)
    assert narrow["spec"]["egress"] == []  # no egress at all
