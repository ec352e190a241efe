"""A small dict-in, dict-out Kubernetes API client for the operator's reconcile.

Connection details (server, CA, client certificates, tokens with their refresh hooks) come from
the official `kubernetes` library's config loaders, in-cluster or kubeconfig; requests go out
through urllib3 with plain JSON bodies. That keeps the reconcile code free of the generated
model classes, whose calling conventions change between library releases.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from octavo.operator import crd

# apiVersion, kind -> plural: every kind the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("v1", "Event"): "events",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("batch/v1", "Job"): "jobs",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepools",
    (crd.API_VERSION, crd.KIND): crd.PLURAL,
}

APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


def load_configuration() -> Any:
    """The `kubernetes.client.Configuration` for this process: in-cluster, else kubeconfig."""
    import kubernetes.client
    import kubernetes.config

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.Configuration.get_default_copy()


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = prefix
    if namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    """Get, list, create, apply, patch status, delete and post Events; 404 on get is None."""

    def __init__(self, configuration: Any = None, field_manager: str = "octavo-operator",
                 timeout: float = 30.0):
        import urllib3

        self.configuration = configuration if configuration is not None else load_configuration()
        self.field_manager = field_manager
        self.timeout = timeout
        cfg = self.configuration
        pool_kwargs: dict[str, Any] = {"num_pools": 4, "maxsize": 8}
        if cfg.host.startswith("https"):
            pool_kwargs["cert_reqs"] = "CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE"
            if cfg.ssl_ca_cert:
                pool_kwargs["ca_certs"] = cfg.ssl_ca_cert
            if cfg.cert_file:
                pool_kwargs["cert_file"] = cfg.cert_file
            if cfg.key_file:
                pool_kwargs["key_file"] = cfg.key_file
            if not cfg.verify_ssl:
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._http = urllib3.PoolManager(**pool_kwargs)
        self._token_lock = threading.Lock()

    @classmethod
    def for_server(cls, host: str, **kwargs: Any) -> Kube:
        """A client for a server with no authentication (tests, `kubectl proxy`)."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = host.rstrip("/")
        return cls(configuration, **kwargs)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        cfg = self.configuration
        headers = {"Accept": "application/json", "User-Agent": "octavo-operator"}
        if content_type:
            headers["Content-Type"] = content_type
        with self._token_lock:
            if getattr(cfg, "refresh_api_key_hook", None) is not None:
                cfg.refresh_api_key_hook(cfg)  # rotates projected service-account tokens
            token = (cfg.get_api_key_with_prefix("BearerToken")
                     or cfg.get_api_key_with_prefix("authorization"))
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        elif cfg.username or cfg.password:
            import urllib3

            headers.update(urllib3.make_headers(basic_auth=f"{cfg.username}:{cfg.password}"))
        return headers

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str | None = None) -> Any:
        url = self.configuration.host.rstrip("/") + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode("utf-8")
        if data is not None and content_type is None:
            content_type = "application/json"
        response = self._http.request(method, url, body=data, headers=self._headers(content_type),
                                      timeout=self.timeout, retries=False)
        text = response.data.decode("utf-8") if response.data else ""
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        if response.status >= 400:
            message = payload.get("message") if isinstance(payload, dict) else text
            raise ApiError(response.status, message or response.reason or "", payload)
        return payload

    # --- verbs -------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None,
             labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in (labels or {}).items()) or None
        payload = self.request("GET", resource_path(api_version, kind, namespace),
                               query={"labelSelector": selector})
        items = (payload or {}).get("items") or []
        # Filter here too: the selector is a request, and cheap to re-check.
        return [item for item in items
                if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v
                       for k, v in (labels or {}).items())]

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self.request("POST", resource_path(obj["apiVersion"], obj["kind"],
                                                  meta.get("namespace")),
                            body=obj, query={"fieldManager": self.field_manager})

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the operator owns exactly the fields it sends; `force` takes them
        back from whoever changed them (that is the drift being repaired)."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        try:
            return self.request("PATCH", path, body=obj, content_type=APPLY_PATCH,
                                query={"fieldManager": self.field_manager, "force": "true"})
        except ApiError as exc:
            # A real API server creates on apply. Servers that treat PATCH of a missing object
            # as 404 (test emulators) get an explicit create instead.
            if exc.status != 404:
                raise
            return self.create(obj)

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", resource_path(api_version, kind, namespace, name, "status"),
                            body={"status": status}, content_type=MERGE_PATCH)

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               propagation: str = "Background") -> bool:
        """True when it was there to delete."""
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name),
                         body={"apiVersion": "v1", "kind": "DeleteOptions",
                               "propagationPolicy": propagation})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                   time: str) -> None:
        """A core/v1 Event about `involved` (what `kubectl describe` shows)."""
        meta = involved["metadata"]
        namespace = meta.get("namespace", "default")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": namespace},
            "involvedObject": {"apiVersion": involved.get("apiVersion"),
                               "kind": involved.get("kind"), "name": meta["name"],
                               "namespace": namespace, "uid": meta.get("uid")},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
        }
        self.request("POST", resource_path("v1", "Event", namespace), body=event)
