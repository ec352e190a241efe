"""A small Kubernetes REST client that speaks plain dicts (list, get, watch, create, patch, delete),
used by the node agent and the tests. Credentials come from a kubeconfig with either a client
certificate or a bearer token."""

from __future__ import annotations

import json
import logging
import ssl
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import urllib3
import yaml

log = logging.getLogger(__name__)


class KubeError(RuntimeError):
    def __init__(self, status: int, body: str, what: str):
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            self.message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            self.reason, self.message = "", body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


def resource_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """`/api/v1/namespaces/ns/pods/name/status` and friends."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    def __init__(self, kubeconfig: Path):
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.headers = {"Accept": "application/json"}
        if "client-certificate" in user:
            context.load_cert_chain(user["client-certificate"], user["client-key"])
        if "token" in user:
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self.pool = urllib3.PoolManager(ssl_context=context, maxsize=8, retries=False)

    def request(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                content_type: str = "application/json", timeout_s: float = 30) -> dict:
        url = self.server + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        response = self.pool.request(method, url, body=data, headers=headers,
                                     timeout=urllib3.Timeout(connect=5, read=timeout_s))
        text = response.data.decode(errors="replace")
        if response.status >= 400:
            raise KubeError(response.status, text, f"{method} {path}")
        return json.loads(text) if text else {}

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params or None)

    def get_or_none(self, path: str) -> dict | None:
        try:
            return self.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict) -> dict:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def strategic_patch(self, path: str, body: dict) -> dict:
        return self.request("PATCH", path, body, content_type="application/strategic-merge-patch+json")

    def delete(self, path: str, body: dict | None = None) -> dict | None:
        try:
            return self.request("DELETE", path, body)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout_s: int = 60, **params) -> Iterator[dict]:
        """Yield watch events ({type, object}) until the server closes the stream."""
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_s), **params}
        url = f"{self.server}{path}?{urlencode(query)}"
        response = self.pool.request("GET", url, headers=self.headers, preload_content=False,
                                     timeout=urllib3.Timeout(connect=5, read=timeout_s + 10))
        try:
            if response.status >= 400:
                raise KubeError(response.status, response.read().decode(errors="replace"), f"watch {path}")
            buffer = b""
            for chunk in response.stream(4096, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()


def list_and_watch(kube: Kube, path: str, on_event, stop, **params) -> None:
    """An informer loop: list, report every object as ADDED, then watch; relist when the watch
    expires (410) or fails. `on_event(type, object)` is called for each change, and with
    ("SYNCED", list of objects) after each list so a cache can drop objects that disappeared."""
    while not stop.is_set():
        try:
            listing = kube.get(path, **params)
            on_event("SYNCED", listing.get("items", []))
            version = listing["metadata"]["resourceVersion"]
            while not stop.is_set():
                for event in kube.watch(path, version, **params):
                    if stop.is_set():
                        return
                    kind = event["type"]
                    if kind == "ERROR":
                        raise KubeError(event["object"].get("code", 500), json.dumps(event["object"]), "watch")
                    version = event["object"]["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        on_event(kind, event["object"])
        except Exception as exc:  # noqa: BLE001 - relist after any failure, as informers do
            log.warning("list/watch %s: %r; relisting", path, exc)
            if stop.wait(0.5):
                return
            time.sleep(0)
