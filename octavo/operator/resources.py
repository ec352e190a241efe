"""Pure builders: an LLMService -> the Kubernetes objects that serve it.

Every function takes the LLMService body (a dict as the API returns it) and its typed spec, and
returns plain dicts ready for server-side apply. Nothing here talks to a cluster, so the tests
check the manifests field by field and validate them against the Kubernetes schemas.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from octavo.operator import crd, inference_pool, model_volumes, pod_override, scaling
from octavo.operator.spec import LLMServiceSpec

CONTAINER_PORT = 8000
SERVER_CONTAINER = pod_override.SERVER_CONTAINER
CHECK_CONTAINER = "check-pair"
TERMINATION_LOG = "/dev/termination-log"
FIELD_MANAGER = "octavo-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SERVICE = f"{crd.GROUP}/llmservice"
LABEL_PAIR_HASH = f"{crd.GROUP}/pair-hash"
MANAGED_BY = "octavo-operator"

ANNOTATION_MODEL = f"{crd.GROUP}/model"
ANNOTATION_DRAFT = f"{crd.GROUP}/draft"

# The serving container gets this much grace beyond the server's own drain: the preStop pause
# (endpoints leave the Service first) plus a margin for the process to exit.
PRE_STOP_SECONDS = 5
GRACE_MARGIN_SECONDS = 10
# Loading a 70B model from a cold cache takes minutes; liveness must not kill it meanwhile.
STARTUP_PROBE_PERIOD_SECONDS = 10
STARTUP_PROBE_FAILURES = 180  # 30 minutes

QUEUE_METRIC = scaling.QUEUE_METRIC

# Validation Job: one pod, no retries inside the Job. Exit 1 (incompatible) is a verdict; exit 2
# (a model could not be read), a crash or the deadline (spec.speculative.validationTimeoutSeconds)
# fail the Job, and the operator retries with its own backoff, shown in status.
EXIT_INCOMPATIBLE = 1
JOB_BACKOFF_LIMIT = 0
JOB_TTL_SECONDS = 86400
# A validation pod reads config and tokenizer files only; of the spec's secret-sourced env it
# gets the hub credentials and nothing else (plain values pass: they are no secrets).
CHECK_PAIR_SECRET_ENV = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
CHECK_PAIR_RESOURCES = {"requests": {"cpu": "250m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                        "limits": {"cpu": "1", "memory": "4Gi", "ephemeral-storage": "10Gi"}}

# Serving pods' resources when the spec names none: requests equal limits (Guaranteed QoS for
# CPU and memory). Without a model cache claim the weights are downloaded into the pod's
# ephemeral storage, so its limit must hold them.
DEFAULT_CPU_PER_GPU = 4
DEFAULT_MEMORY_GI_PER_GPU = 32
DEFAULT_CPU_WITHOUT_GPU = "2"
DEFAULT_MEMORY_WITHOUT_GPU = "8Gi"
DEFAULT_EPHEMERAL_REQUEST = "10Gi"
DEFAULT_EPHEMERAL_LIMIT_WITH_CACHE = "20Gi"
DEFAULT_EPHEMERAL_LIMIT_WITHOUT_CACHE = "200Gi"

# The API key Secret the operator makes when the spec names none.
API_KEY_ENV = "OCTAVO_API_KEY"
API_KEY_KEY = "api-key"


def _meta(body: dict[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata", {})
    return meta["name"], meta.get("namespace", "default")


def selector_labels(name: str) -> dict[str, str]:
    """The pod selector of the Deployment, Service and PDB (immutable once created)."""
    return {LABEL_NAME: "octavo", LABEL_INSTANCE: name, LABEL_COMPONENT: "server"}


def labels(name: str, component: str = "server") -> dict[str, str]:
    return {
        LABEL_NAME: "octavo",
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SERVICE: name,
    }


def selector_string(name: str) -> str:
    """The selector as `kubectl scale` and the scale subresource want it (status.selector)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    """Makes the object the LLMService's dependent: deleted with it by garbage collection."""
    meta = body["metadata"]
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _object_meta(body: dict[str, Any], name: str, component: str = "server",
                 extra_labels: dict[str, str] | None = None,
                 annotations: dict[str, str] | None = None) -> dict[str, Any]:
    service_name, namespace = _meta(body)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**labels(service_name, component), **(extra_labels or {})},
        "ownerReferences": [owner_reference(body)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def endpoint(body: dict[str, Any], spec: LLMServiceSpec) -> str:
    name, namespace = _meta(body)
    return f"http://{name}.{namespace}.svc:{spec.service_port}/v1"


def service_url(body: dict[str, Any], spec: LLMServiceSpec,
                cluster_domain: str | None = None) -> str:
    """The in-cluster base URL of the Service (status.url): http://NAME.NAMESPACE.svc:PORT,
    with the cluster domain appended when one is configured."""
    name, namespace = _meta(body)
    host = f"{name}.{namespace}.svc" + (f".{cluster_domain.strip('.')}" if cluster_domain else "")
    return f"http://{host}:{spec.service_port}"


def operator_serve_args(spec: LLMServiceSpec) -> list[str]:
    """The `octavo serve` command line the spec's fields make: the engine's flags from
    EngineArgs, then the server's own options (spec.extraArgs not included)."""
    return ["octavo", "serve", *spec.engine_args().to_cli_args(),
            "--host", "0.0.0.0",
            "--port", str(CONTAINER_PORT),
            "--served-model-name", spec.model.served_name,
            "--shutdown-timeout", str(spec.shutdown_timeout_seconds)]


def serve_args(spec: LLMServiceSpec) -> list[str]:
    """The serving container's full command line: the operator's flags, then spec.extraArgs
    (checked against the server's parser by admission, extra_args.check, before any rollout)."""
    return [*operator_serve_args(spec), *spec.extra_args]


def check_pair_args(spec: LLMServiceSpec) -> list[str]:
    """The validation Job's command: the verdict goes to the termination log as JSON."""
    assert spec.draft is not None, "only a speculative spec has a pair to check"
    args = ["octavo", "check-pair", "--target", spec.model_source, "--draft", spec.draft_source or "",
            "--json", "--termination-log", TERMINATION_LOG]
    if spec.model.revision:
        args += ["--target-revision", spec.model.revision]
    if spec.draft.revision:
        args += ["--draft-revision", spec.draft.revision]
    # Only config and tokenizer files are fetched; a read-only cache gets them in /tmp.
    args += ["--download-dir", spec.cache_mount if spec.cache_writable else "/tmp/hf"]
    return args


def api_key_secret_name(service_name: str) -> str:
    """The Secret the operator generates for an LLMService that names none."""
    return f"{service_name}-api-key"


def api_key_ref(service_name: str, spec: LLMServiceSpec) -> tuple[str, str]:
    """(Secret name, key) of the serving pods' API key: the spec's, else the generated one."""
    return spec.api_key_ref or (api_key_secret_name(service_name), API_KEY_KEY)


def api_key_secret(body: dict[str, Any], token: str) -> dict[str, Any]:
    """The generated API key Secret (created once, never overwritten: the operator only ever
    creates it, so it needs no right to read Secrets). Owned by the LLMService, so garbage
    collection removes it with the service."""
    name, _ = _meta(body)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _object_meta(body, api_key_secret_name(name), component="api-key"),
        "type": "Opaque",
        "stringData": {API_KEY_KEY: token},
    }


def _base_env() -> list[dict[str, Any]]:
    # The root filesystem is read-only: every library that caches (hub, Triton, pip) writes
    # under /tmp, an emptyDir.
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
    ]


def _with_user_env(env: list[dict[str, Any]],
                   user_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    user_names = {var.get("name") for var in user_env}
    return [var for var in env if var["name"] not in user_names] + [dict(v) for v in user_env]


def _hub_token_env(spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """HF_TOKEN from spec.model.hubTokenSecretRef for pods that fetch from the hub themselves
    (no model cache delivery: with one, only the download Job holds the token)."""
    ref = spec.model.hub_token_secret
    if spec.cache_delivery or not ref:
        return []
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": ref["name"], "key": ref.get("key", "HF_TOKEN")}}}]


def _env(service_name: str, spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """The serving container's environment: scratch paths, the API key, the spec's env."""
    secret, key = api_key_ref(service_name, spec)
    env = _base_env() + _hub_token_env(spec) + [{"name": API_KEY_ENV, "valueFrom": {
        "secretKeyRef": {"name": secret, "key": key}}}]
    # Admission refuses a spec that sets the key itself; dropping it here too means no spec can
    # serve without one.
    return _with_user_env(env, [var for var in spec.env if var.get("name") != API_KEY_ENV])


def _check_pair_env(spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """The validation pod's environment: no API key, and of the spec's secret-sourced variables
    only the hub credentials it may need to read a gated tokenizer."""
    def needed(var: dict[str, Any]) -> bool:
        source = var.get("valueFrom") or {}
        return "secretKeyRef" not in source or var.get("name") in CHECK_PAIR_SECRET_ENV
    return _with_user_env(_base_env() + _hub_token_env(spec),
                          [var for var in spec.env if needed(var)])


def _add_placement(pod_spec: dict[str, Any], spec) -> None:
    """The spec's nodeSelector and tolerations: the serving pods and the validation Job's pod land
    on the same kind of node."""
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _model_volumes(service_name: str, spec: LLMServiceSpec
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model cache and the pvc:// / oci:// sources (model_volumes.py)."""
    volumes, mounts = model_volumes.source_volumes(spec)
    return ([model_volumes.cache_volume(service_name, spec), *volumes],
            [model_volumes.cache_mount(spec), *mounts])


def serving_resources(spec: LLMServiceSpec) -> dict[str, Any]:
    """The serving container's requests and limits: the spec's, else defaults that scale with the
    GPUs. CPU and memory requests equal their limits; ephemeral storage is bounded too (a pod
    without limits can starve its node)."""
    gpus = spec.gpus_per_replica
    cpu = spec.cpu or (str(DEFAULT_CPU_PER_GPU * gpus) if gpus else DEFAULT_CPU_WITHOUT_GPU)
    memory = spec.memory or (f"{DEFAULT_MEMORY_GI_PER_GPU * gpus}Gi" if gpus
                             else DEFAULT_MEMORY_WITHOUT_GPU)
    if spec.ephemeral_storage:
        ephemeral_request = ephemeral_limit = spec.ephemeral_storage
    else:
        ephemeral_request = DEFAULT_EPHEMERAL_REQUEST
        ephemeral_limit = (DEFAULT_EPHEMERAL_LIMIT_WITH_CACHE if spec.model_cache is not None
                           else DEFAULT_EPHEMERAL_LIMIT_WITHOUT_CACHE)
    requests = {"cpu": cpu, "memory": memory, "ephemeral-storage": ephemeral_request}
    limits = {"cpu": cpu, "memory": memory, "ephemeral-storage": ephemeral_limit}
    if gpus > 0:
        # Extended resources are requested through limits (requests default to them).
        limits[spec.gpu_resource_name] = str(gpus)
    for resource_name, quantity in (spec.extra_resources or {}).items():
        limits[resource_name] = str(quantity)
    return {"requests": requests, "limits": limits}


def pod_template(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any]:
    name, _ = _meta(body)
    model_vols, model_mounts = _model_volumes(name, spec)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, *model_vols]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, *model_mounts]
    if spec.tensor_parallel_size > 1:
        # NCCL and the TP workers exchange tensors through shared memory; a container's default
        # 64 MiB /dev/shm is far too small.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})

    http_get = {"path": "/health", "port": "http"}
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": spec.image,
        "command": serve_args(spec)[:2],
        "args": serve_args(spec)[2:],
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": _env(name, spec),
        "resources": serving_resources(spec),
        "volumeMounts": mounts,
        "startupProbe": {"httpGet": http_get, "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
                         "failureThreshold": STARTUP_PROBE_FAILURES, "timeoutSeconds": 5},
        "readinessProbe": {"httpGet": http_get, "periodSeconds": 5, "failureThreshold": 3,
                           "timeoutSeconds": 5},
        # /live stays 200 while the engine loads or drains; only a dead engine restarts the pod.
        "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}, "periodSeconds": 20, "failureThreshold": 6,
                          "timeoutSeconds": 10},
        # The pause lets endpoint removal reach every proxy before the server stops accepting.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": _container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": _pod_security_context(),
        "terminationGracePeriodSeconds": (spec.shutdown_timeout_seconds + PRE_STOP_SECONDS
                                          + GRACE_MARGIN_SECONDS),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    _add_placement(pod_spec, spec)
    template = {
        "metadata": {
            "labels": {**labels(name), **selector_labels(name)},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(CONTAINER_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }
    return pod_override.merge(template, spec.pod_template, frozenset({API_KEY_ENV}))


def deployment(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any]:
    name, _ = _meta(body)
    annotations = {ANNOTATION_MODEL: spec.model.display}
    if spec.draft is not None:
        annotations[ANNOTATION_DRAFT] = spec.draft.display
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        # Default: a new pod must be ready before an old one goes (spec.rollout can change it).
        "strategy": scaling.rolling_update(spec.rollout),
        "progressDeadlineSeconds": STARTUP_PROBE_PERIOD_SECONDS * STARTUP_PROBE_FAILURES + 600,
        "revisionHistoryLimit": 3,
        "template": pod_template(body, spec),
    }
    if spec.autoscaling is None:
        # With autoscaling the HPA (or KEDA's) owns replicas; leaving the field out of the
        # applied object keeps the operator from fighting it.
        deploy_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _object_meta(body, name, annotations=annotations),
        "spec": deploy_spec,
    }


def service(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any]:
    name, _ = _meta(body)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _object_meta(body, name),
        "spec": {
            "type": spec.service_type,
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": spec.service_port, "targetPort": "http",
                       "protocol": "TCP", "appProtocol": "http"}],
        },
    }


def pod_disruption_budget(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any]:
    name, _ = _meta(body)
    # maxUnavailable rather than minAvailable: a one-replica service still lets nodes drain.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _object_meta(body, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }


def horizontal_pod_autoscaler(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any] | None:
    """The HPA of spec.autoscaling (mode HPA); None otherwise (see scaling.py)."""
    if scaling.mode(spec.autoscaling) != scaling.MODE_HPA:
        return None
    name, _ = _meta(body)
    return scaling.horizontal_pod_autoscaler(_object_meta(body, name), name, spec.autoscaling)


def scaled_object(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any] | None:
    """The KEDA ScaledObject of spec.autoscaling (mode KEDA); None otherwise."""
    if scaling.mode(spec.autoscaling) != scaling.MODE_KEDA:
        return None
    name, namespace = _meta(body)
    return scaling.scaled_object(_object_meta(body, name), namespace, name, spec.autoscaling)


def inference_pool_objects(body: dict[str, Any], spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """The InferencePool and its endpoint picker's objects (spec.inferencePool); [] without."""
    if spec.inference_pool is None:
        return []
    name, namespace = _meta(body)

    def meta(object_name: str, component: str) -> dict[str, Any]:
        return _object_meta(body, object_name, component=component)

    return [inference_pool.inference_pool(meta, name, selector_labels(name), CONTAINER_PORT,
                                          spec.inference_pool),
            *inference_pool.endpoint_picker_objects(meta, name, namespace, spec.inference_pool)]


# Egress of an LLMService's pods under the default NetworkPolicy: DNS, and HTTPS anywhere (the
# hub, for weights and tokenizers). Nothing else: the pods talk to no other workload.
DEFAULT_EGRESS: list[dict[str, Any]] = [
    {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    {"ports": [{"protocol": "TCP", "port": 443}]},
]


@dataclass(frozen=True)
class NetworkPolicySettings:
    """The NetworkPolicy the operator gives every LLMService (the chart's `networkPolicy`).
    ingress_from: NetworkPolicyPeers allowed to reach the serving port (empty: any source, that
    port only). egress: NetworkPolicyEgressRules (None: DEFAULT_EGRESS; [] denies all)."""

    ingress_from: tuple[dict[str, Any], ...] = ()
    egress: tuple[dict[str, Any], ...] | None = None


def network_policy(body: dict[str, Any], settings: NetworkPolicySettings) -> dict[str, Any]:
    """Selects the LLMService's serving and validation pods: in, only the serving port (named
    `http`, so validation pods, which listen on nothing, get no ingress); out, `egress`."""
    name, _ = _meta(body)
    ingress: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": "http"}]}
    if settings.ingress_from:
        ingress["from"] = [dict(peer) for peer in settings.ingress_from]
    egress = DEFAULT_EGRESS if settings.egress is None else settings.egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _object_meta(body, name),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_NAME: "octavo", LABEL_INSTANCE: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [ingress],
            "egress": copy.deepcopy([dict(rule) for rule in egress]),
        },
    }


def validation_job_name(service_name: str, pair_hash: str) -> str:
    """Deterministic from the pair, so a repeated reconcile finds the Job it made before.
    Fits a label value (63 characters): the Job controller labels its pods with it."""
    return f"{service_name[:40].rstrip('-')}-pair-{pair_hash[:12]}"


def validation_job(body: dict[str, Any], spec: LLMServiceSpec) -> dict[str, Any]:
    """A Job that runs `octavo check-pair` on the target and draft tokenizers; its pod's
    termination message carries the JSON verdict."""
    service_name, _ = _meta(body)
    pair_hash = spec.pair_hash()
    assert pair_hash is not None, "only a speculative spec has a pair to check"
    name = validation_job_name(service_name, pair_hash)
    job_labels = {LABEL_PAIR_HASH: pair_hash[:63]}
    container: dict[str, Any] = {
        "name": CHECK_CONTAINER,
        "image": spec.image,
        "command": check_pair_args(spec),
        "env": _check_pair_env(spec),
        "resources": copy.deepcopy(CHECK_PAIR_RESOURCES),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         *_model_volumes(service_name, spec)[1]],
        "terminationMessagePath": TERMINATION_LOG,
        # If the command dies before writing its verdict, the log tail explains why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *_model_volumes(service_name, spec)[0]],
        "securityContext": _pod_security_context(),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    _add_placement(pod_spec, spec)
    pod_spec = pod_override.with_placement(pod_spec, spec.pod_template)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _object_meta(body, name, component="validation", extra_labels=job_labels),
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "activeDeadlineSeconds": spec.validation_timeout_seconds,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": CHECK_CONTAINER, "operator": "In",
                                "values": [EXIT_INCOMPATIBLE]},
            }]},
            "template": {
                "metadata": {"labels": {**labels(service_name, "validation"), **job_labels}},
                "spec": pod_spec,
            },
        },
    }


def optional_objects(body: dict[str, Any], spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """Objects of kinds a cluster may lack (their CRDs come with KEDA and the Gateway API
    Inference Extension), in apply order: the ScaledObject, the InferencePool and its picker."""
    objects = inference_pool_objects(body, spec)
    keda = scaled_object(body, spec)
    return objects + ([keda] if keda is not None else [])


def serving_objects(body: dict[str, Any], spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """Everything that serves the spec, in apply order (the HPA only with autoscaling)."""
    objects = [deployment(body, spec), service(body, spec), pod_disruption_budget(body, spec)]
    hpa = horizontal_pod_autoscaler(body, spec)
    if hpa is not None:
        objects.append(hpa)
    return objects
