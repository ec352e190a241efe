"""Helpers the scenario tests share: LLMService objects, their owned resources, and requests to
the runtime through the Service's cluster IP (the node agent proxies it to ready pods)."""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from e2e.cluster import REPO_ROOT, wait_for
from e2e.kube import resource_path

GROUP_VERSION = "serving.octavo.dev/v1alpha1"
PLURAL = "llmservices"
KIND = "LLMService"


def example(name: str) -> dict:
    """The LLMService document of examples/<name>; skips the test while the file is missing."""
    path = REPO_ROOT / "examples" / name
    if not path.exists():
        pytest.skip(f"examples/{name} does not exist yet")
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == KIND:
            document["metadata"].pop("namespace", None)
            return document
    raise AssertionError(f"examples/{name} holds no {KIND}")


def llms_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return resource_path(GROUP_VERSION, PLURAL, namespace, name, subresource)


def apply(cluster, namespace: str, document: dict, check: bool = True):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document), check=check)


def get(cluster, namespace: str, name: str) -> dict:
    return cluster.kube.get(llms_path(namespace, name))


def condition(obj: dict, kind: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def wait_phase(cluster, namespace: str, name: str, phase: str, timeout_s: float) -> dict:
    def reached():
        cluster.check_alive()
        obj = get(cluster, namespace, name)
        status = obj.get("status") or {}
        if status.get("phase") == phase and status.get("observedGeneration", 0) >= obj["metadata"]["generation"]:
            return obj
        return None

    try:
        return wait_for(reached, timeout_s, f"LLMService {namespace}/{name} phase {phase}", interval_s=1)
    except TimeoutError as exc:
        status = (get(cluster, namespace, name).get("status")) or {}
        raise AssertionError(f"{exc}\nstatus: {json.dumps(status, indent=1)}\n"
                             f"{cluster.diagnostics(namespace)}") from None


def owned(cluster, namespace: str, owner_uid: str, api_version: str, plural: str) -> list[dict]:
    items = cluster.kube.get(resource_path(api_version, plural, namespace))["items"]
    return [item for item in items
            if any(ref.get("uid") == owner_uid for ref in item["metadata"].get("ownerReferences") or [])]


def owned_deployment(cluster, namespace: str, llms: dict) -> dict:
    deployments = owned(cluster, namespace, llms["metadata"]["uid"], "apps/v1", "deployments")
    assert len(deployments) == 1, f"expected one Deployment owned by the LLMService, found {len(deployments)}"
    return deployments[0]


def service_url(cluster, namespace: str, llms: dict) -> str:
    """http://<cluster IP>:<port> of the Service the LLMService owns."""
    services = owned(cluster, namespace, llms["metadata"]["uid"], "v1", "services")
    assert services, "the LLMService owns no Service"
    spec = services[0]["spec"]
    ports = spec["ports"]
    port = next((p for p in ports if p.get("name") in ("http", "openai")), ports[0])
    return f"http://{spec['clusterIP']}:{port['port']}"


def api_key(cluster, namespace: str, llms: dict) -> str:
    """The key clients of this LLMService send: from the Secret its status names (the one the
    operator generated when the spec names none), read as cluster admin."""
    ref = (get(cluster, namespace, llms["metadata"]["name"]).get("status") or {}).get("apiKey")
    assert ref, "the LLMService's status names no API key Secret"
    secret = cluster.kube.get(resource_path("v1", "secrets", namespace, ref["secretName"]))
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def _headers(api_key: str | None, **extra: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **extra}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def post_json(url: str, body: dict, timeout_s: float = 120, api_key: str | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=_headers(api_key))
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def served_model(base_url: str, api_key: str | None = None) -> str:
    request = urllib.request.Request(f"{base_url}/v1/models", headers=_headers(api_key))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"][0]["id"]


def complete(base_url: str, model: str, prompt: str = "Hello, my name is", max_tokens: int = 8,
             api_key: str | None = None) -> dict:
    return post_json(f"{base_url}/v1/completions",
                     {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
                     api_key=api_key)


def stream_completion(base_url: str, model: str, prompt: str = "Once upon a time", max_tokens: int = 12,
                      api_key: str | None = None) -> list[dict]:
    """The server-sent events of a streamed completion, up to and excluding [DONE] (asserted)."""
    request = urllib.request.Request(
        f"{base_url}/v1/completions",
        data=json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                         "temperature": 0}).encode(),
        headers=_headers(api_key, Accept="text/event-stream"))
    events, done = [], False
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers.get("Content-Type", "").startswith("text/event-stream")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            if payload == "[DONE]":
                done = True
                break
            events.append(json.loads(payload))
    assert done, "the stream did not end with data: [DONE]"
    return events


@dataclass
class RequestStream:
    """A steady stream of completions through the Service, on its own thread; one new TCP
    connection per request (as a client behind kube-proxy that does not retry)."""

    base_url: str
    model: str
    api_key: str | None = None
    interval_s: float = 0.2
    successes: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "RequestStream":
        self._thread = threading.Thread(target=self._run, daemon=True, name="request-stream")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(180)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = complete(self.base_url, self.model, max_tokens=4, api_key=self.api_key)
                if not result.get("choices"):
                    raise ValueError(f"no choices in {result}")
                self.successes += 1
            except (urllib.error.URLError, OSError, ValueError) as exc:
                detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
                self.failures.append(f"{time.strftime('%H:%M:%S')} {exc!r} {detail}")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def wait_for_successes(self, count: int, timeout_s: float) -> None:
        wait_for(lambda: self.successes >= count, timeout_s, f"{count} successful requests")


def with_spec(document: dict, name: str | None = None, **changes) -> dict:
    """A copy of an LLMService document, renamed and with top-level spec fields replaced."""
    result = copy.deepcopy(document)
    if name:
        result["metadata"]["name"] = name
    result["spec"].update(changes)
    return result


def events_for(cluster, namespace: str, name: str) -> list[dict]:
    events = cluster.kube.get(resource_path("v1", "events", namespace))["items"]
    return [e for e in events if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == KIND]


def printer_columns(crd: dict) -> list[str]:
    for version in crd["spec"]["versions"]:
        if version["name"] == GROUP_VERSION.split("/")[1]:
            return [c["name"] for c in version.get("additionalPrinterColumns") or []]
    return []


def crd_spec_schema(crd: dict) -> dict:
    for version in crd["spec"]["versions"]:
        if version["name"] == GROUP_VERSION.split("/")[1]:
            return version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    raise AssertionError("the CRD has no v1alpha1 schema")


def repo_path(*parts: str) -> Path:
    return REPO_ROOT.joinpath(*parts)
