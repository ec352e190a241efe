"""A typed, defaulted view of an LLMService's spec: what the builders and checks read."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from octavo import __version__
from octavo.operator import crd, model_source as ms
from octavo.runtime.config import EngineArgs

# Where the runtime image keeps writable scratch space (its root filesystem is read-only) and
# where model weights go when there is no model cache claim.
MODEL_CACHE_MOUNT = "/models"
# pvc:// and oci:// sources are mounted read-only here, one directory per role (target, draft).
MODEL_SOURCES_MOUNT = "/model-sources"
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
    uri: str | None = None  # spec.model.source, parsed by model_source.parse
    role: str = "target"
    hub_token_secret: dict[str, str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, role: str = "target") -> ModelRef | None:
        if not data:
            return None
        return cls(name=data.get("name"), path=data.get("path"), revision=data.get("revision"),
                   uri=data.get("source"), role=role,
                   hub_token_secret=data.get("hubTokenSecretRef"))

    @property
    def parsed(self) -> ms.ModelSource | None:
        """The parsed spec.model.source (None without one; admission reports a bad one)."""
        if not self.uri:
            return None
        try:
            return ms.parse(self.uri, self.revision)
        except ms.SourceError:
            return None

    @property
    def hub_revision(self) -> str | None:
        parsed = self.parsed
        return parsed.revision if parsed is not None else self.revision

    def cache_dir(self) -> str | None:
        """The directory under the model cache that an hf:// source is fetched into: one per
        (hub id, revision), so a new revision never overwrites what replicas are reading."""
        parsed = self.parsed
        if parsed is None or not parsed.needs_download:
            return None
        return posixpath.join("hf", parsed.location.replace("/", "--"), parsed.revision or "main")

    def mount_dir(self) -> str:
        """Where a pvc:// or oci:// source is mounted in the pod."""
        return posixpath.join(MODEL_SOURCES_MOUNT, self.role)

    def source(self, cache_mount: str, cached: bool = False) -> str:
        """The MODEL argument of `octavo serve` / `check-pair`: a path in the container when one
        is set (relative paths live on the model cache), else the hub id or demo name. An hf://
        source is its directory on the model cache when the operator delivers it (`cached`),
        else the hub id the server downloads itself."""
        parsed = self.parsed
        if parsed is not None:
            if parsed.kind == ms.HF:
                return posixpath.join(cache_mount, self.cache_dir() or "") if cached \
                    else parsed.location
            if parsed.kind == ms.PVC:
                return posixpath.join(self.mount_dir(), parsed.location).rstrip("/")
            if parsed.kind == ms.OCI:
                return self.mount_dir()
            path = parsed.location
            return path if path.startswith("/") else posixpath.join(cache_mount, path)
        if self.path:
            return self.path if self.path.startswith("/") else posixpath.join(cache_mount, self.path)
        return self.name or ""

    @property
    def display(self) -> str:
        """How status and events name it: the source, hub id or path, with the revision if
        pinned."""
        parsed = self.parsed
        if parsed is not None:
            return parsed.display
        base = self.name or self.path or self.uri or ""
        return f"{base}@{self.revision}" if self.revision else base

    @property
    def served_name(self) -> str:
        """The model name clients send: the hub/demo name, else the directory's base name."""
        parsed = self.parsed
        if parsed is not None:
            return parsed.served_name
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
            draft=ModelRef.from_dict(speculative.get("draftModel"), role="draft"),
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
        # A cache the operator fills is read-only for every pod but the download Job's.
        return not (self.model_cache or {}).get("readOnly", False) and not self.cache_delivery

    @property
    def cache_delivery(self) -> bool:
        """Whether the operator fetches hf:// sources into the model cache with a download Job
        (a modelCache is set and some model has an hf:// source)."""
        return self.model_cache is not None and bool(self.downloads())

    def downloads(self) -> list[ModelRef]:
        """The models a download Job fetches: those with an hf:// source."""
        refs = [self.model] + ([self.draft] if self.draft is not None else [])
        return [ref for ref in refs if ref.cache_dir() is not None]

    def delivery_hash(self) -> str | None:
        """A digest of what the download Job fetches: its identity and the operator-made cache
        claim's (a new source or revision is a new Job and a new claim). None: nothing to
        fetch."""
        if not self.cache_delivery:
            return None
        key = [[ref.role, ref.display] for ref in self.downloads()]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    @property
    def cache_claim_owned(self) -> bool:
        """Whether the operator makes the cache claim (modelCache without claimName)."""
        return self.model_cache is not None and not self.model_cache.get("claimName")

    def cache_claim(self, service_name: str) -> str | None:
        """The model cache's claim: the one modelCache names, else the operator-made
        `<name>-model-<hash>` (a new hash, a new claim), None without a modelCache."""
        if self.model_cache is None:
            return None
        if self.model_cache.get("claimName"):
            return str(self.model_cache["claimName"])
        return f"{service_name[:40].rstrip('-')}-model-{(self.delivery_hash() or 'cache')[:10]}"

    @property
    def model_source(self) -> str:
        return self.model.source(self.cache_mount, cached=self.cache_delivery)

    @property
    def draft_source(self) -> str | None:
        return self.draft.source(self.cache_mount, cached=self.cache_delivery) \
            if self.draft else None

    def engine_args(self) -> EngineArgs:
        """What the serving pods' engine runs: the one mapping from a spec to `octavo serve`'s
        engine flags (`EngineArgs.to_cli_args()`), so no flag the server lacks can appear."""
        revision = None if self.cache_delivery else self.model.hub_revision
        return EngineArgs(model=self.model_source, revision=revision, download_dir=self.cache_mount,
                          speculative_model=self.draft_source,
                          **{name: getattr(self, name) for name in ENGINE_SETTINGS.values()})

    def pair_hash(self) -> str | None:
        """A digest of (target, draft) including revisions: the validation Job's identity.
        None when there is no draft (nothing to validate)."""
        if self.draft is None:
            return None
        key = {"target": [self.model_source, self.model.hub_revision],
               "draft": [self.draft_source, self.draft.hub_revision]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
