"""The LLMService CustomResourceDefinition, written once here.

`crds/llmservice.yaml` and the Helm chart's copy are rendered from `build_crd()`
(`python -m octavo.operator.crd > crds/llmservice.yaml`; a test keeps them in sync), and the
operator applies the same schema's defaults with `apply_defaults()`, so a spec read before the
API server defaulted it (an old object, a test emulator) still means what the schema says.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

GROUP = "serving.octavo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMService"
PLURAL = "llmservices"
SINGULAR = "llmservice"
SHORT_NAMES = ["llms"]

PHASES = ["Validating", "Deploying", "Ready", "Degraded", "Blocked"]
DTYPES = ["auto", "half", "float16", "bfloat16", "float", "float32"]

DEFAULT_VALIDATION_TIMEOUT_SECONDS = 600
_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"  # the API server's own quantity regex
# An extended resource: a domain-prefixed name outside kubernetes.io (the API server's rule).
_EXTENDED_RESOURCE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# A count or a percentage, as a Deployment's maxSurge takes it (an IntOrString).
_INT_OR_PERCENT = {"x-kubernetes-int-or-string": True,
                   "anyOf": [{"type": "integer"}, {"type": "string"}],
                   "x-kubernetes-validations": [{
                       "rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')",
                       "message": "a count (0 or more) or a percentage like 25%"}]}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "format": "int32", "description": description, **extra}


def _model_ref(what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"The {what}: a Hugging Face hub id or embedded demo name (`name`), or a "
                       "directory inside the container (`path`; relative paths are under the "
                       "model cache).",
        "properties": {
            "name": _string("Hub id (org/model) or a demo model name (octavo-demo, "
                            "octavo-demo-draft).", minLength=1, maxLength=256),
            "path": _string("Directory holding config.json and the weights.", minLength=1,
                            maxLength=1024),
            "revision": _string("Hub revision (branch, tag or commit).", minLength=1,
                                maxLength=128),
            "source": _string("Where the files come from: hf://org/name[@revision] (fetched "
                              "once into modelCache by a download Job, or by the server "
                              "without one), pvc://claim/path (mounted read-only), "
                              "oci://image[:tag] (an image volume, where the operator allows "
                              "them), or a path.", minLength=1, maxLength=1024),
            "hubTokenSecretRef": {
                "type": "object",
                "description": "Secret key holding a hub token for gated or private hf:// "
                               "models (env HF_TOKEN of the download Job).",
                "required": ["name"],
                "properties": {"name": _string("Secret name.", minLength=1),
                               "key": _string("Key in the Secret.", minLength=1,
                                              default="HF_TOKEN")},
            },
        },
        "x-kubernetes-validations": [
            {"rule": "has(self.name) || has(self.path) || has(self.source)",
             "message": "set source (hf://, pvc://, oci:// or a path), name (a hub id or demo "
                        "name) or path (a directory in the container)"},
        ],
    }


_TOLERATION = {
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "operator": {"type": "string", "enum": ["Exists", "Equal"]},
        "value": {"type": "string"},
        "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": "integer", "format": "int64"},
    },
}

_ENV_VAR = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "value": {"type": "string"},
        # An EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef...): the Deployment's own
        # validation checks it, so the schema keeps it opaque.
        "valueFrom": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": _model_ref("target model to serve"),
        "speculative": {
            "type": "object",
            "description": "Speculative decoding with a smaller draft model of the same "
                           "tokenizer family. The pair is validated by a Job before rollout.",
            "required": ["draftModel"],
            "properties": {
                "draftModel": _model_ref("draft model"),
                "numSpeculativeTokens": _integer("Most tokens the draft proposes per step "
                                                 "(adaptive k picks up to it).",
                                                 minimum=1, maximum=16, default=4),
                "validationTimeoutSeconds": _integer(
                    "How long one validation Job may run (it reads config and tokenizer files "
                    "only) before it counts as failed and is retried with backoff.",
                    minimum=30, maximum=86400,
                    default=DEFAULT_VALIDATION_TIMEOUT_SECONDS),
            },
        },
        "replicas": _integer("Serving pods (ignored while autoscaling is set).", minimum=0,
                             maximum=1024, default=1),
        "tensorParallelSize": _integer("GPUs one engine shards the model over.", minimum=1,
                                       maximum=64, default=1),
        "dtype": _string("Weight and activation dtype.", enum=DTYPES, default="auto"),
        "maxNumSeqs": _integer("Most sequences in one batch.", minimum=1, maximum=65536,
                               default=256),
        "maxModelLen": _integer("Context length (default: the model's).", minimum=1),
        "gpuMemoryUtilization": {"type": "number", "description": "Fraction of GPU memory for "
                                 "weights, activations and the KV cache.", "minimum": 0,
                                 "exclusiveMinimum": True, "maximum": 1, "default": 0.9},
        "shutdownTimeoutSeconds": _integer("How long a stopping server drains in-flight "
                                           "requests; the pod's grace period follows it.",
                                           minimum=0, maximum=3600, default=30),
        "resources": {
            "type": "object",
            "default": {},
            "properties": {
                "gpusPerReplica": _integer("nvidia.com/gpu per pod (default: "
                                           "tensorParallelSize; 0 runs on CPU).", minimum=0,
                                           maximum=64),
                "memory": _string("Memory request and limit per pod (default: 32Gi per GPU, "
                                  "8Gi without GPUs).", pattern=_QUANTITY),
                "cpu": _string("CPU request and limit per pod (default: 4 per GPU, 2 without "
                               "GPUs).", pattern=_QUANTITY),
                "ephemeralStorage": _string("Ephemeral storage request and limit per pod "
                                            "(default: request 10Gi; limit 20Gi with a "
                                            "modelCache, else 200Gi, since the weights are "
                                            "then downloaded into the pod).",
                                            pattern=_QUANTITY),
                "nodeSelector": {"type": "object",
                                 "additionalProperties": {"type": "string"}},
                "tolerations": {"type": "array", "items": _TOLERATION},
                "gpuResourceName": _string("The extended resource gpusPerReplica counts "
                                           "(default nvidia.com/gpu; amd.com/gpu, "
                                           "nvidia.com/mig-1g.10gb, ...).",
                                           pattern=_EXTENDED_RESOURCE),
                "extended": {"type": "object", "description": "Other extended resources per "
                             "pod (name: quantity), requested through limits, e.g. "
                             "rdma/hca_shared_devices_a: 1.",
                             "additionalProperties": {"type": "string", "pattern": _QUANTITY},
                             "maxProperties": 16},
            },
        },
        "image": _string("Runtime image (default: the operator's OCTAVO_RUNTIME_IMAGE)."),
        "imagePullPolicy": _string("Image pull policy.", enum=["Always", "IfNotPresent", "Never"]),
        "env": {"type": "array", "description": "Extra environment for the server and the "
                "validation Job (e.g. HF_TOKEN from a Secret).", "items": _ENV_VAR},
        "apiKeySecretRef": {
            "type": "object",
            "description": "Secret key holding the API key clients must send (env "
                           "OCTAVO_API_KEY). Without it the operator creates a Secret "
                           "<name>-api-key (key api-key) with a random key, owned by the "
                           "LLMService and never overwritten: no LLMService serves without a "
                           "key.",
            "required": ["name"],
            "properties": {
                "name": _string("Secret name.", minLength=1),
                "key": _string("Key in the Secret.", minLength=1, default="api-key"),
            },
        },
        "modelCache": {
            "type": "object",
            "description": "A PersistentVolumeClaim holding (or receiving) model weights: the "
                           "one claimName names, or one the operator creates (size, "
                           "storageClassName, accessModes) per model source. hf:// sources are "
                           "fetched into it once by a download Job, then every replica and the "
                           "validation Job mount it read-only.",
            "properties": {
                "claimName": _string("An existing PVC (the operator never deletes it).",
                                     minLength=1),
                "size": _string("Size of the claim the operator creates.", pattern=_QUANTITY),
                "storageClassName": _string("Storage class of the claim the operator creates "
                                            "(default: the cluster's)."),
                "accessModes": {"type": "array", "description": "Access modes of the claim the "
                                "operator creates (default ReadWriteOnce; ReadOnlyMany or "
                                "ReadWriteMany for replicas on several nodes).",
                                "items": {"type": "string", "enum": [
                                    "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                    "ReadWriteOncePod"]}},
                "downloadTimeoutSeconds": _integer("How long the download Job may run.",
                                                   minimum=60, maximum=604800),
                "mountPath": _string("Where it is mounted.", pattern="^/", default="/models"),
                "readOnly": {"type": "boolean", "default": False},
            },
            "x-kubernetes-validations": [
                {"rule": "has(self.claimName) || has(self.size)",
                 "message": "set claimName (an existing claim) or size (the operator creates "
                            "one)"},
            ],
        },
        "autoscaling": {
            "type": "object",
            "description": "Autoscaling, which then owns the replica count (spec.replicas and "
                           "`kubectl scale` are ignored). mode HPA: a HorizontalPodAutoscaler on "
                           "octavo:num_requests_waiting per pod (needs a custom metrics adapter, "
                           "see charts/octavo-operator). mode KEDA: a KEDA ScaledObject with a "
                           "Prometheus trigger (needs KEDA), which can scale to zero.",
            "required": ["maxReplicas"],
            "properties": {
                "mode": _string("Who scales: HPA or KEDA.", enum=["HPA", "KEDA"], default="HPA"),
                "minReplicas": _integer("Fewest pods (0, scale to zero, with mode KEDA only).",
                                        minimum=0, default=1),
                "maxReplicas": _integer("Most pods.", minimum=1, maximum=1024),
                "targetQueueDepth": _integer("Waiting requests per pod to aim for.", minimum=1,
                                             default=8),
                "behavior": {"type": "object", "description": "HorizontalPodAutoscalerBehavior "
                             "(scaleUp, scaleDown) replacing the default: up by one pod a "
                             "minute at once, down by one per 5 minutes after 10 minutes.",
                             "x-kubernetes-preserve-unknown-fields": True},
                "keda": {
                    "type": "object",
                    "description": "The ScaledObject's Prometheus trigger (mode KEDA).",
                    "required": ["prometheusServerAddress"],
                    "properties": {
                        "prometheusServerAddress": _string("Prometheus URL KEDA queries.",
                                                           minLength=1),
                        "metric": _string("queue: waiting requests summed over the pods, "
                                          "targetQueueDepth per replica (or threshold); "
                                          "kvCache: mean KV cache usage (0..1) against "
                                          "threshold.", enum=["queue", "kvCache"],
                                          default="queue"),
                        "threshold": _string("The trigger's target (default: targetQueueDepth "
                                             "for queue, 0.8 for kvCache).", pattern=_QUANTITY),
                        "activationThreshold": _string("Scaling from zero starts above this "
                                                       "value.", pattern=_QUANTITY),
                        "query": _string("A PromQL query replacing the built-in one (e.g. a "
                                         "gateway's request metric, which exists at zero pods)."),
                        "pollingInterval": _integer("Seconds between queries.", minimum=1),
                        "cooldownPeriod": _integer("Seconds after the last activity before "
                                                   "scaling to zero.", minimum=0),
                        "initialCooldownPeriod": _integer("Seconds after creation before "
                                                          "scaling to zero.", minimum=0),
                        "authenticationRef": {"type": "object", "required": ["name"],
                                              "properties": {
                                                  "name": _string("TriggerAuthentication name."),
                                                  "kind": _string("Its kind.", enum=[
                                                      "TriggerAuthentication",
                                                      "ClusterTriggerAuthentication"])}},
                    },
                },
            },
            "x-kubernetes-validations": [
                {"rule": "self.maxReplicas >= self.minReplicas",
                 "message": "maxReplicas must be at least minReplicas"},
                {"rule": "self.minReplicas > 0 || self.mode == 'KEDA'",
                 "message": "minReplicas 0 (scale to zero) needs mode KEDA"},
                {"rule": "self.mode != 'KEDA' || has(self.keda)",
                 "message": "mode KEDA needs keda.prometheusServerAddress"},
            ],
        },
        "podTemplate": {
            "type": "object",
            "description": "Added to the serving pods (PodTemplateSpec-shaped). metadata: labels "
                           "and annotations. spec: affinity, nodeSelector, tolerations, "
                           "topologySpreadConstraints, priorityClassName, runtimeClassName, "
                           "schedulerName, serviceAccountName, automountServiceAccountToken, "
                           "imagePullSecrets, securityContext, volumes, dnsPolicy, dnsConfig, "
                           "hostAliases, and containers: one entry named server with env, "
                           "envFrom, volumeMounts, securityContext. Anything else is the "
                           "operator's (name, image, command, args, ports, probes, lifecycle, "
                           "resources, other containers, the tmp/model-cache/dshm/model-source-* "
                           "volumes and their mounts, selector labels, "
                           "terminationGracePeriodSeconds) and is refused. Placement and "
                           "imagePullSecrets also apply to the validation and download Jobs.",
            "properties": {
                "metadata": {"type": "object", "properties": {
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object",
                                    "additionalProperties": {"type": "string"}}},
                    "x-kubernetes-preserve-unknown-fields": True},
                # PodSpec fields: the Deployment's own validation checks their shapes, admission
                # (pod_override.check) which may be set.
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "extraArgs": {"type": "array", "maxItems": 128,
                      "description": "Extra `octavo serve` flags, checked against the server's "
                                     "parser before rollout (an unknown flag, or one the spec "
                                     "sets elsewhere, is SpecValid=False and nothing rolls out).",
                      "items": {"type": "string", "maxLength": 4096}},
        "rollout": {
            "type": "object",
            "description": "The Deployment's RollingUpdate (default maxSurge 1, maxUnavailable 0: "
                           "a new pod is ready before an old one goes). Stopping pods still "
                           "drain (preStop pause, shutdownTimeoutSeconds).",
            "properties": {"maxSurge": dict(_INT_OR_PERCENT),
                           "maxUnavailable": dict(_INT_OR_PERCENT)},
        },
        "inferencePool": {
            "type": "object",
            "description": "Gateway API Inference Extension: an InferencePool "
                           "(inference.networking.k8s.io/v1) named after the LLMService, "
                           "selecting its pods, and the upstream endpoint picker (<name>-epp) "
                           "it refers to. Needs the upstream CRD and a Gateway that supports it.",
            "properties": {
                "endpointPicker": {"type": "object", "properties": {
                    "image": _string("Picker image (default: the operator's "
                                     "OCTAVO_EPP_IMAGE, else upstream's release)."),
                    "replicas": _integer("Picker pods.", minimum=1, maximum=16, default=1),
                    "failureMode": _string("What the gateway does when the picker does not "
                                           "answer.", enum=["FailOpen", "FailClose"],
                                           default="FailClose"),
                    "extraArgs": {"type": "array", "items": {"type": "string"},
                                  "description": "Extra picker flags (e.g. --config-file)."},
                }},
            },
        },
        "service": {
            "type": "object",
            "default": {},
            "properties": {
                "type": _string("Service type.", enum=["ClusterIP", "NodePort", "LoadBalancer"],
                                default="ClusterIP"),
                "port": _integer("Service port of the OpenAI API.", minimum=1, maximum=65535,
                                 default=8000),
            },
        },
    },
}

_CONDITION = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "observedGeneration": {"type": "integer", "format": "int64"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    },
}

_SIDE = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "vocab_size": {"type": "integer", "nullable": True},
        "tokenizer_size": {"type": "integer", "nullable": True},
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "enum": PHASES},
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {
            "type": "array",
            "items": _CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "apiKey": {
            "type": "object",
            "description": "Where the key clients send as 'Authorization: Bearer <key>' is: "
                           "the Secret apiKeySecretRef names, or the one the operator made.",
            "properties": {"secretName": {"type": "string"}, "key": {"type": "string"},
                           "generated": {"type": "boolean"}},
        },
        "replicas": {"type": "integer", "format": "int32"},
        "readyReplicas": {"type": "integer", "format": "int32"},
        "selector": {"type": "string"},
        "endpoint": {"type": "string", "description": "The OpenAI API base (url + /v1)."},
        "url": {"type": "string", "description": "The Service's in-cluster URL: "
                "http://NAME.NAMESPACE.svc:PORT (the chart's clusterDomain appended if set)."},
        "model": {"type": "string", "description": "The spec's model (hub id, source or path, "
                  "with its revision): the Model printer column."},
        "draft": {"type": "string", "description": "The spec's draft model, if any."},
        "download": {
            "type": "object",
            "description": "The model cache's download Job (hf:// sources with a modelCache).",
            "properties": {
                "phase": {"type": "string", "enum": ["Pending", "Downloading", "Succeeded",
                                                     "Failed"]},
                "hash": {"type": "string"},
                "job": {"type": "string"},
                "claim": {"type": "string"},
                "models": {"type": "array", "items": {"type": "string"}},
                "files": {"type": "integer", "format": "int64"},
                "bytes": {"type": "integer", "format": "int64"},
                "message": {"type": "string"},
                "completedAt": {"type": "string", "format": "date-time"},
            },
        },
        "served": {
            "type": "object",
            "description": "What the Deployment runs now (it keeps the last good spec while a "
                           "new one is validating or blocked).",
            "properties": {"model": {"type": "string"}, "draft": {"type": "string"}},
        },
        "pair": {
            "type": "object",
            "description": "The verdict of the last target/draft validation.",
            "properties": {
                "hash": {"type": "string"},
                "job": {"type": "string"},
                "target": {"type": "string"},
                "draft": {"type": "string"},
                "verdict": {"type": "string", "enum": ["compatible", "compatible-with-padding",
                                                       "incompatible", "error"]},
                "compatible": {"type": "boolean"},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "differences": {"type": "array", "items": {"type": "string"}},
                "targetVocab": _SIDE,
                "draftVocab": _SIDE,
                "failures": {"type": "integer"},
                "attempt": {"type": "integer", "description": "The attempt running (Validating) "
                            "or the next one (after a failure)."},
                "lastFailureTime": {"type": "string", "format": "date-time"},
                "nextRetryTime": {"type": "string", "format": "date-time"},
                "startedAt": {"type": "string", "format": "date-time"},
                "failedJobUid": {"type": "string"},
                "checkedAt": {"type": "string", "format": "date-time"},
            },
        },
    },
}

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".status.model"},
    {"name": "Draft", "type": "string", "jsonPath": ".status.draft"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas",
     "description": "Live pods (spec.replicas is the request)."},
    {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "URL", "type": "string", "jsonPath": ".status.url"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["octavo"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "An OpenAI-compatible LLM endpoint served by octavo.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": copy.deepcopy(SPEC_SCHEMA),
                        "status": copy.deepcopy(STATUS_SCHEMA),
                    },
                    "required": ["spec"],
                }},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
            }],
        },
    }


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in, the way the API server does it:
    a missing property with a default gets it, then objects are walked recursively."""
    if schema.get("type") == "object" and isinstance(value, dict):
        result = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = apply_defaults(sub, result[key])
        return result
    if schema.get("type") == "array" and isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def render_yaml() -> str:
    import yaml

    header = ("# Generated by `python -m octavo.operator.crd` from octavo/operator/crd.py: edit "
              "that file, then regenerate.\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
