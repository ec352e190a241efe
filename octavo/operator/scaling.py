"""How an LLMService's replica count moves: an HPA, a KEDA ScaledObject, or the spec's replicas.

spec.autoscaling.mode picks the owner of the Deployment's replicas:
- `HPA` (default): a HorizontalPodAutoscaler on `octavo:num_requests_waiting` per pod, through a
  custom metrics adapter; `behavior` replaces the default (scale up at once, down slowly).
- `KEDA`: a keda.sh/v1alpha1 ScaledObject with a Prometheus trigger on octavo's metrics (waiting
  requests summed over the service's pods, or mean KV cache usage), so KEDA's own HPA scales it;
  minReplicas 0 lets it scale to zero, activationThreshold says when it wakes from zero.
  KEDA reads Prometheus directly: no metrics adapter. At zero replicas no pod exports metrics, so
  waking up needs a query on something observed outside the pods (`keda.query`, e.g. the
  gateway's or the endpoint picker's request metrics).
Without autoscaling, spec.replicas (which `kubectl scale llmservice/NAME` sets through the scale
subresource) is the Deployment's.

Pure builders: the LLMService body and spec in, manifests out.
"""

from __future__ import annotations

import copy
from typing import Any

MODE_HPA = "HPA"
MODE_KEDA = "KEDA"
QUEUE_METRIC = "octavo:num_requests_waiting"
KV_CACHE_METRIC = "octavo:kv_cache_usage_perc"
KEDA_API_VERSION = "keda.sh/v1alpha1"
KEDA_KIND = "ScaledObject"

# Loading a replica takes minutes: scale up promptly, scale down slowly.
DEFAULT_BEHAVIOR: dict[str, Any] = {
    "scaleUp": {"stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
    "scaleDown": {"stabilizationWindowSeconds": 600,
                  "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
}
# A new pod must be ready before an old one goes: with no spare GPUs the rollout waits and the old
# pods keep serving, rather than dropping capacity.
DEFAULT_ROLLOUT = {"maxSurge": 1, "maxUnavailable": 0}


def mode(autoscaling: dict[str, Any] | None) -> str | None:
    """MODE_HPA, MODE_KEDA, or None without autoscaling."""
    if autoscaling is None:
        return None
    return str(autoscaling.get("mode") or MODE_HPA)


def behavior(autoscaling: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(autoscaling.get("behavior") or DEFAULT_BEHAVIOR)


def rolling_update(rollout: dict[str, Any] | None) -> dict[str, Any]:
    """The Deployment's strategy: RollingUpdate with the spec's maxSurge/maxUnavailable (counts or
    percentages). Pods still drain: preStop and the grace period do not depend on it."""
    settings = {**DEFAULT_ROLLOUT, **{k: v for k, v in (rollout or {}).items()
                                      if k in DEFAULT_ROLLOUT}}
    return {"type": "RollingUpdate", "rollingUpdate": settings}


def horizontal_pod_autoscaler(meta: dict[str, Any], name: str,
                              autoscaling: dict[str, Any]) -> dict[str, Any]:
    """Scales on the waiting-queue length per pod, read from the custom metrics API (a Prometheus
    adapter serving the runtime's gauge as a pods metric)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": max(1, int(autoscaling.get("minReplicas", 1))),
            "maxReplicas": int(autoscaling["maxReplicas"]),
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": QUEUE_METRIC},
                    "target": {"type": "AverageValue",
                               "averageValue": str(autoscaling.get("targetQueueDepth", 8))},
                },
            }],
            "behavior": behavior(autoscaling),
        },
    }


def pod_matcher(namespace: str, name: str) -> str:
    """A PromQL label matcher for the LLMService's serving pods (named <deployment>-<hash>-<id>
    by the ReplicaSet controller; the chart's PodMonitor keeps namespace and pod labels)."""
    return f'namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'


def keda_trigger(namespace: str, name: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    """The Prometheus trigger. `queue` (default): waiting requests summed over the pods, target
    `targetQueueDepth` per replica (AverageValue). `kvCache`: mean KV cache usage (0..1) against
    `keda.threshold` as a plain Value."""
    keda = autoscaling.get("keda") or {}
    metric = keda.get("metric") or "queue"
    matcher = pod_matcher(namespace, name)
    if metric == "kvCache":
        query = f"avg({KV_CACHE_METRIC}{{{matcher}}})"
        threshold, metric_type = str(keda.get("threshold", "0.8")), "Value"
    else:
        query = f"sum({QUEUE_METRIC}{{{matcher}}})"
        threshold = str(keda.get("threshold", autoscaling.get("targetQueueDepth", 8)))
        metric_type = "AverageValue"
    metadata = {"serverAddress": str(keda["prometheusServerAddress"]),
                "query": str(keda.get("query") or query),
                "threshold": threshold}
    if keda.get("activationThreshold") is not None:
        metadata["activationThreshold"] = str(keda["activationThreshold"])
    trigger: dict[str, Any] = {"type": "prometheus", "metricType": metric_type,
                               "metadata": metadata}
    if keda.get("authenticationRef"):
        trigger["authenticationRef"] = dict(keda["authenticationRef"])
    return trigger


def scaled_object(meta: dict[str, Any], namespace: str, name: str,
                  autoscaling: dict[str, Any]) -> dict[str, Any]:
    """A KEDA ScaledObject for the Deployment (KEDA makes and owns the HPA itself)."""
    keda = autoscaling.get("keda") or {}
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": int(autoscaling.get("minReplicas", 1)),
        "maxReplicaCount": int(autoscaling["maxReplicas"]),
        "triggers": [keda_trigger(namespace, name, autoscaling)],
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(autoscaling)}},
    }
    for key in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod"):
        if keda.get(key) is not None:
            spec[key] = int(keda[key])
    return {"apiVersion": KEDA_API_VERSION, "kind": KEDA_KIND, "metadata": meta, "spec": spec}
