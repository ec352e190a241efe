"""spec.inferencePool: the Gateway API Inference Extension's objects for an LLMService.

An `InferencePool` (inference.networking.k8s.io/v1, the upstream CRD) selecting the LLMService's
serving pods on port 8000, and the upstream endpoint picker (EPP) wired to it as upstream's
inferencepool chart does: a Deployment of the picker image with `--pool-name`/`--pool-namespace`
and the model-server metric names (octavo's: `octavo:num_requests_waiting`,
`octavo:kv_cache_usage_perc`; no LoRA metric), its gRPC ext-proc port 9002 (health 9003,
metrics 9090), a Service the pool's endpointPickerRef names, and a ServiceAccount with a Role to
read pods and InferencePools. A Gateway implementation that supports InferencePool backends then
routes an HTTPRoute's requests by queue depth, KV cache usage and prefix affinity. octavo writes
no routing logic: the picker is upstream's image.

The picker's pods carry their own `app.kubernetes.io/name` (octavo-endpoint-picker), so the
LLMService's NetworkPolicy (serving port in, DNS and HTTPS out) does not select them: the picker
must reach the pods' metrics and the API server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

API_VERSION = "inference.networking.k8s.io/v1"
KIND = "InferencePool"
EPP_IMAGE_ENV = "OCTAVO_EPP_IMAGE"
DEFAULT_EPP_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.0"
EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090
EPP_COMPONENT = "endpoint-picker"
EPP_APP_NAME = "octavo-endpoint-picker"
QUEUE_METRIC = "octavo:num_requests_waiting"
KV_CACHE_METRIC = "octavo:kv_cache_usage_perc"
EPP_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
                 "limits": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "256Mi"}}

Meta = Callable[[str, str], dict[str, Any]]  # (object name, component) -> ObjectMeta


def epp_image(settings: dict[str, Any]) -> str:
    """The picker image: the spec's, else the operator's OCTAVO_EPP_IMAGE (chart value
    inferenceExtension.endpointPickerImage), else upstream's release."""
    picker = settings.get("endpointPicker") or {}
    return picker.get("image") or os.environ.get(EPP_IMAGE_ENV) or DEFAULT_EPP_IMAGE


def epp_name(service_name: str) -> str:
    return f"{service_name[:58].rstrip('-')}-epp"


def epp_selector(service_name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": EPP_APP_NAME, "app.kubernetes.io/instance": service_name}


def inference_pool(meta: Meta, service_name: str, pod_selector: dict[str, str], port: int,
                   settings: dict[str, Any]) -> dict[str, Any]:
    picker = settings.get("endpointPicker") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta(service_name, "inference-pool"),
        "spec": {
            "selector": {"matchLabels": dict(pod_selector)},
            "targetPorts": [{"number": port}],
            "endpointPickerRef": {
                "name": epp_name(service_name),
                "port": {"number": EPP_GRPC_PORT},
                "failureMode": picker.get("failureMode") or "FailClose",
            },
        },
    }


def endpoint_picker_objects(meta: Meta, service_name: str, namespace: str,
                            settings: dict[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, Deployment and Service of the picker, in apply order."""
    name = epp_name(service_name)
    picker = settings.get("endpointPicker") or {}
    selector = epp_selector(service_name)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(name, EPP_COMPONENT),
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [API_VERSION.split("/")[0]], "resources": ["inferencepools"],
             "verbs": ["get", "list", "watch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(name, EPP_COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, EPP_COMPONENT)}
    health = {"port": EPP_HEALTH_PORT, "service": "inference-extension"}
    container = {
        "name": "epp",
        "image": epp_image(settings),
        "args": ["--pool-name", service_name, "--pool-namespace", namespace,
                 "--zap-encoder", "json",
                 "--total-queued-requests-metric", QUEUE_METRIC,
                 "--kv-cache-usage-percentage-metric", KV_CACHE_METRIC,
                 "--lora-info-metric", "",
                 *[str(arg) for arg in picker.get("extraArgs") or []]],
        "ports": [{"name": "grpc", "containerPort": EPP_GRPC_PORT, "protocol": "TCP"},
                  {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": EPP_METRICS_PORT, "protocol": "TCP"}],
        "env": [{"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "livenessProbe": {"grpc": health, "initialDelaySeconds": 5, "periodSeconds": 10},
        "readinessProbe": {"grpc": health, "initialDelaySeconds": 5, "periodSeconds": 10},
        "resources": EPP_RESOURCES,
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, EPP_COMPONENT),
        "spec": {
            "replicas": int(picker.get("replicas", 1)),
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(selector)},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [container],
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    # Upstream: mirror the longest grace period of the pool's pods.
                    "terminationGracePeriodSeconds": 130,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, EPP_COMPONENT),
        "spec": {
            "selector": dict(selector),
            "ports": [{"name": "grpc-ext-proc", "port": EPP_GRPC_PORT, "targetPort": "grpc",
                       "protocol": "TCP", "appProtocol": "http2"}],
        },
    }
    return [account, role, binding, deployment, service]
