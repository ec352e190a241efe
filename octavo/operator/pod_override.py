"""spec.podTemplate: what a user may add to the serving pods, and what stays the operator's.

The override is shaped like a PodTemplateSpec (`metadata.labels/annotations`, `spec.*`, and at
most one entry of `spec.containers`, named `server`), so a fragment of an existing pod manifest
can be pasted in. Only the fields in POD_FIELDS and CONTAINER_FIELDS may be set; everything else
belongs to the operator and is refused with a message naming the field and where its setting
lives instead (SpecValid=False, or the webhook's refusal):

- the container's name, image, command/args, ports, probes, lifecycle (preStop drain) and
  resources (spec.image, spec.extraArgs, spec.resources, spec.shutdownTimeoutSeconds);
- other containers and init containers;
- the operator's volumes (tmp, model-cache, dshm, model-source-*) and mounts at their paths
  (/tmp, the model cache, /dev/shm, anything under the model sources' /model-sources);
- the labels the selectors and owner lookups use (app.kubernetes.io/name, instance, component,
  managed-by, serving.octavo.dev/*) and the prometheus.io scrape annotations;
- terminationGracePeriodSeconds (follows spec.shutdownTimeoutSeconds, so draining still works).

`merge()` is a pure function: the operator's pod template in, the merged one out.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

SERVER_CONTAINER = "server"  # resources.SERVER_CONTAINER (imported there from here)
# model-source-<role>: model_volumes.py mounts pvc:// / oci:// sources under these names.
OPERATOR_VOLUMES = frozenset({"tmp", "model-cache", "dshm", "model-source-target",
                              "model-source-draft"})

# Pod spec fields the override may set: scheduling, identity, pulling, hardening, extra volumes.
POD_FIELDS = frozenset({
    "affinity", "nodeSelector", "tolerations", "topologySpreadConstraints", "priorityClassName",
    "runtimeClassName", "schedulerName", "serviceAccountName", "automountServiceAccountToken",
    "imagePullSecrets", "securityContext", "volumes", "dnsPolicy", "dnsConfig", "hostAliases",
    "containers",
})
# Fields of the `server` container the override may set.
CONTAINER_FIELDS = frozenset({"name", "env", "envFrom", "volumeMounts", "securityContext"})

_WHERE_INSTEAD = {
    "image": "set spec.image instead", "imagePullPolicy": "set spec.imagePullPolicy instead",
    "command": "add server flags in spec.extraArgs instead",
    "args": "add server flags in spec.extraArgs instead",
    "resources": "set spec.resources instead (gpusPerReplica, gpuResourceName, extended, cpu, "
                 "memory, ephemeralStorage)",
    "terminationGracePeriodSeconds": "set spec.shutdownTimeoutSeconds instead (the grace period "
                                     "follows it, so in-flight requests drain)",
    "initContainers": "the serving pod runs the server container only",
}
OWNED_LABEL_PREFIXES = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                        "app.kubernetes.io/component", "app.kubernetes.io/managed-by",
                        "serving.octavo.dev/")
OWNED_ANNOTATION_PREFIXES = ("prometheus.io/",)


def _owned_message(path: str, key: str) -> str:
    hint = _WHERE_INSTEAD.get(key)
    if hint is None:
        allowed = CONTAINER_FIELDS if "containers[" in path else POD_FIELDS
        hint = f"only {', '.join(sorted(allowed - {'name', 'containers'}))} may be set here"
    return f"{path}.{key} is owned by the operator and may not be overridden: {hint}"


# The shapes check() insists on before reading further (the rest is the Deployment's validation):
# free-form fields must not crash the checks, the webhook or the policy.
_LIST_FIELDS = ("containers", "volumes", "tolerations", "imagePullSecrets",
                "topologySpreadConstraints", "hostAliases")
_OBJECT_FIELDS = ("affinity", "nodeSelector", "securityContext", "dnsConfig")
_CONTAINER_LIST_FIELDS = ("env", "envFrom", "volumeMounts")


def _pod(override: Mapping[str, Any] | None) -> Mapping[str, Any]:
    pod = (override or {}).get("spec") if isinstance(override, Mapping) else None
    return pod if isinstance(pod, Mapping) else {}


def _objects(value: Any) -> list[Mapping[str, Any]]:
    """The mappings of a list (anything else: none)."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def server_container(override: Mapping[str, Any] | None) -> dict[str, Any]:
    """The override's `server` container entry ({} when there is none)."""
    for container in _objects(_pod(override).get("containers")):
        if container.get("name") == SERVER_CONTAINER:
            return dict(container)
    return {}


def server_env(override: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The env entries the override gives the server container."""
    return _objects(server_container(override).get("env"))


def _shape_errors(pod: Mapping[str, Any]) -> list[str]:
    path = "spec.podTemplate.spec"
    errors = [f"{path}.{key} must be a list of objects" for key in _LIST_FIELDS
              if key in pod and (not isinstance(pod[key], list)
                                 or len(_objects(pod[key])) != len(pod[key]))]
    errors += [f"{path}.{key} must be an object" for key in _OBJECT_FIELDS
               if key in pod and not isinstance(pod[key], Mapping)]
    for i, container in enumerate(_objects(pod.get("containers"))):
        errors += [f"{path}.containers[{i}].{key} must be a list of objects"
                   for key in _CONTAINER_LIST_FIELDS if key in container and (
                       not isinstance(container[key], list)
                       or len(_objects(container[key])) != len(container[key]))]
        if "securityContext" in container and not isinstance(container["securityContext"], Mapping):
            errors.append(f"{path}.containers[{i}].securityContext must be an object")
    return errors


def check(override: Mapping[str, Any] | None, cache_mount: str,
          sources_mount: str | None = None) -> list[str]:
    """Why this override cannot be merged (empty: it can). `sources_mount`: the directory the
    operator mounts pvc:// and oci:// model sources under (no override mount at or below it)."""
    if not override:
        return []
    errors: list[str] = []
    path = "spec.podTemplate"
    meta = override.get("metadata") or {}
    for key in meta:
        if key not in ("labels", "annotations"):
            errors.append(f"{path}.metadata.{key} may not be set: only labels and annotations")
    for key in meta.get("labels") or {}:
        if key.startswith(OWNED_LABEL_PREFIXES):
            errors.append(f"{path}.metadata.labels[{key}] is owned by the operator (its selectors "
                          "and owner lookups use it): choose another label key")
    for key in meta.get("annotations") or {}:
        if key.startswith(OWNED_ANNOTATION_PREFIXES):
            errors.append(f"{path}.metadata.annotations[{key}] is owned by the operator (metrics "
                          "scraping): choose another annotation key")
    for key in override:
        if key not in ("metadata", "spec"):
            errors.append(f"{path}.{key} may not be set: only metadata and spec")
    pod = _pod(override)
    shape = _shape_errors(pod)
    if shape:
        return errors + shape
    for key in pod:
        if key not in POD_FIELDS:
            errors.append(_owned_message(f"{path}.spec", key))
    for i, container in enumerate(pod.get("containers") or []):
        where = f"{path}.spec.containers[{i}]"
        if not isinstance(container, Mapping) or container.get("name") != SERVER_CONTAINER:
            errors.append(f"{where} must be named {SERVER_CONTAINER!r} (the serving container; "
                          "other containers are not supported)")
            continue
        if i > 0 and any(c.get("name") == SERVER_CONTAINER for c in pod["containers"][:i]):
            errors.append(f"{where} repeats container {SERVER_CONTAINER!r}: merge the entries")
        for key in container:
            if key not in CONTAINER_FIELDS:
                errors.append(_owned_message(where, key))
        reserved_paths = {"/tmp", cache_mount.rstrip("/") or "/", "/dev/shm"}
        for j, mount in enumerate(container.get("volumeMounts") or []):
            mount_path = str((mount or {}).get("mountPath", "")).rstrip("/") or "/"
            under_sources = sources_mount is not None and (
                mount_path + "/").startswith(sources_mount.rstrip("/") + "/")
            if mount_path in reserved_paths or under_sources or \
                    (mount or {}).get("name") in OPERATOR_VOLUMES:
                errors.append(f"{where}.volumeMounts[{j}] ({mount_path}) is owned by the operator "
                              "(scratch space, model cache, model sources, shared memory): "
                              "mount elsewhere")
    for i, volume in enumerate(pod.get("volumes") or []):
        if (volume or {}).get("name") in OPERATOR_VOLUMES:
            errors.append(f"{path}.spec.volumes[{i}] is named {volume['name']!r}, which the operator "
                          f"uses ({', '.join(sorted(OPERATOR_VOLUMES))}): rename it")
    return errors


def merge(template: dict[str, Any], override: Mapping[str, Any] | None,
          operator_env_names: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The pod template with the (checked) override merged in: labels, annotations, nodeSelector
    and the pod securityContext key by key (the override's value wins); tolerations, volumes,
    imagePullSecrets, topologySpreadConstraints appended; other pod fields set; the server
    container's env appended (a name the operator sets is replaced by the override's, except the
    API key, which check_llmservice refuses), envFrom and volumeMounts appended, and its
    securityContext merged key by key."""
    merged = copy.deepcopy(template)
    if not override:
        return merged
    override = copy.deepcopy(dict(override))
    meta = override.get("metadata") or {}
    merged.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if meta.get(key):
            merged["metadata"][key] = {**(merged["metadata"].get(key) or {}), **meta[key]}
    pod = merged["spec"]
    for key, value in (override.get("spec") or {}).items():
        if key == "containers":
            continue
        if key in ("nodeSelector", "securityContext"):
            pod[key] = {**(pod.get(key) or {}), **value}
        elif key in ("tolerations", "volumes", "imagePullSecrets", "topologySpreadConstraints"):
            pod[key] = list(pod.get(key) or []) + list(value)
        else:
            pod[key] = value
    extra = server_container(override)
    if extra:
        container = next(c for c in pod["containers"] if c["name"] == SERVER_CONTAINER)
        if extra.get("env"):
            names = {var.get("name") for var in extra["env"]}
            container["env"] = [var for var in container.get("env") or []
                                if var["name"] not in names or var["name"] in operator_env_names
                                ] + [v for v in extra["env"] if v.get("name") not in operator_env_names]
        for key in ("envFrom", "volumeMounts"):
            if extra.get(key):
                container[key] = list(container.get(key) or []) + list(extra[key])
        if extra.get("securityContext"):
            container["securityContext"] = {**(container.get("securityContext") or {}),
                                            **extra["securityContext"]}
    return merged


# Of the override, what a helper pod the operator runs with the same image (the validation Job)
# needs too: to pull the image, and to land on the same kind of node.
PLACEMENT_FIELDS = ("affinity", "nodeSelector", "tolerations", "imagePullSecrets",
                    "priorityClassName", "runtimeClassName", "schedulerName")


def with_placement(pod_spec: dict[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """`pod_spec` with the override's PLACEMENT_FIELDS merged in as merge() does it."""
    pod = (override or {}).get("spec") or {}
    placement = {k: pod[k] for k in PLACEMENT_FIELDS if k in pod}
    if not placement:
        return pod_spec
    return merge({"spec": pod_spec}, {"spec": placement})["spec"]


# --- what the override makes the pods read (for the cluster's policy) ----------------------


def secret_refs(override: Mapping[str, Any] | None) -> Iterator[tuple[str, str]]:
    """(where, Secret name) for every Secret the override makes the pods read: volumes (secret,
    projected), envFrom, env valueFrom.secretKeyRef, imagePullSecrets."""
    path = "spec.podTemplate.spec"
    pod = _pod(override)
    for i, volume in enumerate(_objects(pod.get("volumes"))):
        if isinstance(volume.get("secret"), Mapping):
            yield f"{path}.volumes[{i}].secret", str(volume["secret"].get("secretName") or "")
        projected = volume.get("projected")
        sources = projected.get("sources") if isinstance(projected, Mapping) else None
        for j, source in enumerate(_objects(sources)):
            if isinstance(source.get("secret"), Mapping):
                yield (f"{path}.volumes[{i}].projected.sources[{j}].secret",
                       str(source["secret"].get("name") or ""))
    for i, ref in enumerate(_objects(pod.get("imagePullSecrets"))):
        yield f"{path}.imagePullSecrets[{i}]", str(ref.get("name") or "")
    container = server_container(override)
    for i, source in enumerate(_objects(container.get("envFrom"))):
        if isinstance(source.get("secretRef"), Mapping):
            yield f"{path}.containers[server].envFrom[{i}].secretRef", \
                str(source["secretRef"].get("name") or "")
    for i, var in enumerate(_objects(container.get("env"))):
        source = var.get("valueFrom")
        ref = source.get("secretKeyRef") if isinstance(source, Mapping) else None
        if isinstance(ref, Mapping):
            yield (f"{path}.containers[server].env[{i}] ({var.get('name', '')}) valueFrom.secretKeyRef",
                   str(ref.get("name") or ""))


def claim_refs(override: Mapping[str, Any] | None) -> Iterator[tuple[str, str]]:
    """(where, PersistentVolumeClaim name) for the override's claim volumes."""
    for i, volume in enumerate(_objects(_pod(override).get("volumes"))):
        claim = volume.get("persistentVolumeClaim")
        if isinstance(claim, Mapping):
            yield f"spec.podTemplate.spec.volumes[{i}].persistentVolumeClaim", \
                str(claim.get("claimName") or "")


def image_refs(override: Mapping[str, Any] | None) -> Iterator[tuple[str, str]]:
    """(where, image) for the override's image volumes (an image is code the pod can run)."""
    for i, volume in enumerate(_objects(_pod(override).get("volumes"))):
        image = volume.get("image")
        if isinstance(image, Mapping):
            yield f"spec.podTemplate.spec.volumes[{i}].image", str(image.get("reference") or "")
