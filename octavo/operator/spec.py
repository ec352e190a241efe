"""A typed, defaulted view of an LLMService's spec: what the builders and checks read."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from octavo import __version__
from octavo.operator import crd
from octavo.runtime.config import EngineArgs

# Where the runtime image keeps writable scratch space (its root filesystem is read-only) and
# where model weights go when there is no model cache claim.
MODEL_CACHE_MOUNT = "/models"
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/octavo-dev/octavo-runtime:{__version__}"


def runtime_image_default() -> str:
    """The image a spec without `image` runs: the operator's OCTAVO_RUNTIME_IMAGE (the Helm chart
    sets it to the release's runtime image), else the built-in tag."""
    return os.environ.get("OCTAVO_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE


@dataclass(frozen=True)
class ModelRef:
    name: str | None = None
    path: str | None = None
    revision: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelRef | None:
        if not data:
            return None
        return cls(name=data.get("name"), path=data.get("path"), revision=data.get("revision"))

    def source(self, cache_mount: str) -> str:
        """The MODEL argument of `octavo serve` / `check-pair`: a path in the container when one
        is set (relative paths live on the model cache), else the hub id or demo name."""
        if self.path:
            return self.path if self.path.startswith("/") else posixpath.join(cache_mount, self.path)
        return self.name or ""

    @property
    def display(self) -> str:
        """How status and events name it: the hub id or path, with the revision if pinned."""
        base = self.name or self.path or ""
        return f"{base}@{self.revision}" if self.revision else base

    @property
    def served_name(self) -> str:
        """The model name clients send: the hub/demo name, else the directory's base name."""
        if self.name:
            return self.name
        return posixpath.basename((self.path or "").rstrip("/")) or "model"


# The spec's engine settings: CRD key (dotted below spec) -> the EngineArgs field it sets, which
# is also the LLMServiceSpec attribute that holds it. `engine_args()` reads them through this
# table; a test holds each CRD default to the engine's.
ENGINE_SETTINGS = {
    "tensorParallelSize": "tensor_parallel_size",
    "dtype": "dtype",
    "maxNumSeqs": "max_num_seqs",
    "maxModelLen": "max_model_len",
    "gpuMemoryUtilization": "gpu_memory_utilization",
    "speculative.numSpeculativeTokens": "num_speculative_tokens",
}


@dataclass(frozen=True)
class LLMServiceSpec:
    model: ModelRef
    draft: ModelRef | None
    num_speculative_tokens: int | None  # None without a draft
    validation_timeout_seconds: int
    replicas: int
    tensor_parallel_size: int
    dtype: str
    max_num_seqs: int
    max_model_len: int | None
    gpu_memory_utilization: float
    shutdown_timeout_seconds: int
    gpus_per_replica: int
    memory: str | None
    cpu: str | None
    ephemeral_storage: str | None
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    image: str
    image_pull_policy: str | None
    env: list[dict[str, Any]]
    api_key_secret: dict[str, str] | None
    model_cache: dict[str, Any] | None
    autoscaling: dict[str, int] | None
    service_type: str
    service_port: int
    # Production fields (pod override, extended resources, extra server flags, scaling, rollout,
    # routing): read as the CRD holds them; pod_override.py, extra_args.py, scaling.py and
    # inference_pool.py give them meaning.
    gpu_resource_name: str = "nvidia.com/gpu"
    extra_resources: dict[str, str] | None = None
    pod_template: dict[str, Any] | None = None
    extra_args: tuple[str, ...] = ()
    rollout: dict[str, Any] | None = None
    inference_pool: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> LLMServiceSpec:
        data = crd.apply_defaults(crd.SPEC_SCHEMA, dict(spec or {}))
        speculative = data.get("speculative") or {}
        resources = data.get("resources") or {}
        service = data.get("service") or {}
        tp = int(data["tensorParallelSize"])
        gpus = resources.get("gpusPerReplica")
        return cls(
            model=ModelRef.from_dict(data.get("model")) or ModelRef(),
            draft=ModelRef.from_dict(speculative.get("draftModel")),
            num_speculative_tokens=int(speculative["numSpeculativeTokens"]) if speculative else None,
            validation_timeout_seconds=int(speculative.get(
                "validationTimeoutSeconds", crd.DEFAULT_VALIDATION_TIMEOUT_SECONDS)),
            replicas=int(data["replicas"]),
            tensor_parallel_size=tp,
            dtype=str(data["dtype"]),
            max_num_seqs=int(data["maxNumSeqs"]),
            max_model_len=int(data["maxModelLen"]) if data.get("maxModelLen") else None,
            gpu_memory_utilization=float(data["gpuMemoryUtilization"]),
            shutdown_timeout_seconds=int(data["shutdownTimeoutSeconds"]),
            gpus_per_replica=int(gpus) if gpus is not None else tp,
            memory=resources.get("memory"),
            cpu=resources.get("cpu"),
            ephemeral_storage=resources.get("ephemeralStorage"),
            node_selector=dict(resources.get("nodeSelector") or {}),
            tolerations=list(resources.get("tolerations") or []),
            image=data.get("image") or runtime_image_default(),
            image_pull_policy=data.get("imagePullPolicy"),
            env=list(data.get("env") or []),
            api_key_secret=data.get("apiKeySecretRef"),
            model_cache=data.get("modelCache"),
            autoscaling=data.get("autoscaling"),
            service_type=str(service.get("type", "ClusterIP")),
            service_port=int(service.get("port", 8000)),
            gpu_resource_name=str(resources.get("gpuResourceName") or "nvidia.com/gpu"),
            extra_resources=dict(resources.get("extended") or {}) or None,
            pod_template=data.get("podTemplate"),
            extra_args=tuple(str(arg) for arg in data.get("extraArgs") or ()),
            rollout=data.get("rollout"),
            inference_pool=data.get("inferencePool"),
        )

    @property
    def api_key_ref(self) -> tuple[str, str] | None:
        """(Secret name, key) the user named for the API key; None: the operator generates one."""
        if self.api_key_secret is None:
            return None
        return self.api_key_secret["name"], self.api_key_secret.get("key", "api-key")

    @property
    def cache_mount(self) -> str:
        return (self.model_cache or {}).get("mountPath") or MODEL_CACHE_MOUNT

    @property
    def cache_writable(self) -> bool:
        return not (self.model_cache or {}).get("readOnly", False)

    @property
    def model_source(self) -> str:
        return self.model.source(self.cache_mount)

    @property
    def draft_source(self) -> str | None:
        return self.draft.source(self.cache_mount) if self.draft else None

    def engine_args(self) -> EngineArgs:
        """What the serving pods' engine runs: the one mapping from a spec to `octavo serve`'s
        engine flags (`EngineArgs.to_cli_args()`), so no flag the server lacks can appear."""
        return EngineArgs(model=self.model_source, revision=self.model.revision, download_dir=self.cache_mount,
                          speculative_model=self.draft_source,
                          **{name: getattr(self, name) for name in ENGINE_SETTINGS.values()})

    def pair_hash(self) -> str | None:
        """A digest of (target, draft) including revisions: the validation Job's identity.
        None when there is no draft (nothing to validate)."""
        if self.draft is None:
            return None
        key = {"target": [self.model_source, self.model.revision],
               "draft": [self.draft_source, self.draft.revision]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
