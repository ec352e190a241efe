"""Fixtures for the end-to-end suite: a real control plane on loopback, the test node agent, the
operator installed by its Helm chart, and a namespace per test.

The control-plane binaries are built (first run only) before any test starts, in
`pytest_sessionstart`, so the build does not count against a test's timeout.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from e2e.cluster import (AGENT_NAMESPACE_LABEL, NODE_NAME, REPO_ROOT, ClusterError, ControlPlane, Process,
                         build_binaries, wait_for)
from e2e.kube import Kube, resource_path

CRD_FILE = REPO_ROOT / "crds" / "llmservice.yaml"
CHART_DIR = REPO_ROOT / "charts" / "octavo-operator"
EXAMPLES = REPO_ROOT / "examples"
OPERATOR_NAMESPACE = "octavo-system"
OPERATOR_RELEASE = "octavo"
# The chart's policy for every scenario (test_abuse.py probes it), and a short validation backoff
# (2 s, 4 s, ...) so that a retry shows within a test's patience.
ALLOWED_IMAGE_PREFIX = "registry.e2e.invalid/allowed/"
ALLOWED_SECRETS = ("hf-token", "e2e-allowed-*")
OPERATOR_VALUES = ["--set", f"policy.allowedImages={{{ALLOWED_IMAGE_PREFIX}*}}",
                   "--set", f"policy.allowedSecrets={{{','.join(ALLOWED_SECRETS)}}}",
                   "--set", "validation.retryBaseSeconds=2", "--set", "validation.retryMaxSeconds=8",
                   # test_production.py: the InferencePool and its endpoint picker
                   "--set", "inferenceExtension.enabled=true"]

_binaries: dict[str, Path | BaseException] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    started = time.monotonic()
    capture = session.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():  # a first build takes long: show its progress
            _binaries["bin_dir"] = build_binaries()
    except BaseException as exc:  # noqa: BLE001 - reported by every test through the fixture
        _binaries["error"] = exc
    took = time.monotonic() - started
    if took > 30:
        sys.stderr.write(f"\ne2e: control-plane binaries built in {took:.0f}s (cached from now on)\n")


# ------------------------------------------------------------------------------------ skips
def missing_module(name: str) -> str | None:
    """Why `name` cannot be imported, or None when it can."""
    try:
        if importlib.util.find_spec(name) is None:
            return f"{name} does not exist yet"
    except ModuleNotFoundError as exc:
        return f"{name} does not exist yet ({exc})"
    return None


def require_paths(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"{path.relative_to(REPO_ROOT)} does not exist yet")


def require_modules(*names: str) -> None:
    for name in names:
        reason = missing_module(name)
        if reason:
            pytest.skip(reason)


# ------------------------------------------------------------------------------------ cluster
class Cluster:
    """What a test needs: the control plane, clients, and the node agent's view of pods."""

    def __init__(self, control_plane: ControlPlane, agent: Process, agent_state: Path):
        self.cp = control_plane
        self.agent = agent
        self.agent_state = agent_state
        self.kube = Kube(control_plane.admin_kubeconfig)

    def kubectl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        self.check_alive()
        return self.cp.kubectl(*args, **kwargs)

    def helm(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.cp.helm(*args, **kwargs)

    def check_alive(self) -> None:
        self.cp.check_alive()
        if not self.agent.alive():
            raise ClusterError(f"node agent exited:\n{self.agent.tail()}")

    def create_namespace(self, prefix: str) -> str:
        name = f"{prefix[:40].rstrip('-')}-{uuid.uuid4().hex[:5]}"
        self.kube.create("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {AGENT_NAMESPACE_LABEL: "enabled"}},
        })
        # Pods can be created once the service account controller made `default`.
        wait_for(lambda: self.kube.get_or_none(resource_path("v1", "serviceaccounts", name, "default")),
                 30, f"ServiceAccount default in {name}")
        return name

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        path = self.agent_state / "pods" / namespace / pod / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def container_pid(self, namespace: str, pod: str, container: str) -> int:
        return int((self.agent_state / "pods" / namespace / pod / f"{container}.pid").read_text())

    def pods(self, namespace: str, selector: str = "") -> list[dict]:
        params = {"labelSelector": selector} if selector else {}
        return self.kube.get(resource_path("v1", "pods", namespace), **params)["items"]

    def diagnostics(self, namespace: str) -> str:
        """Pods, events and container log tails of a namespace, for failure messages."""
        out = [self.kubectl("get", "all,events", "-n", namespace, "-o", "wide", check=False).stdout]
        for pod in self.pods(namespace):
            for container in pod["spec"]["containers"]:
                tail = "\n".join(self.container_log(namespace, pod["metadata"]["name"],
                                                    container["name"]).splitlines()[-25:])
                out.append(f"--- {pod['metadata']['name']}/{container['name']}:\n{tail}")
        return "\n".join(out)


@pytest.fixture(scope="session")
def cluster():
    if "error" in _binaries:
        pytest.fail(f"building the control plane failed: {_binaries['error']}", pytrace=False)
    bin_dir = _binaries.get("bin_dir") or build_binaries()
    # Not pytest's tmp_path: other pytest runs on this machine prune those directories.
    workdir = Path(tempfile.mkdtemp(prefix="octavo-e2e-"))
    control_plane = ControlPlane(bin_dir, workdir)
    control_plane.start()
    agent_state = workdir / "agent"
    agent = control_plane.spawn("node-agent", [
        sys.executable, "-m", "e2e.node_agent", "run",
        "--kubeconfig", str(control_plane.node_kubeconfig),
        "--scheduler-kubeconfig", str(control_plane.scheduler_kubeconfig),
        "--proxy-kubeconfig", str(control_plane.proxy_kubeconfig),
        "--node-name", NODE_NAME,
        "--node-ip", control_plane.local.node_ip,
        "--pod-cidr", control_plane.local.pod_cidr,
        "--service-cidr", control_plane.local.service_cidr,
        "--service-netns", control_plane.local.service_netns,
        "--apiserver", f"127.0.0.1:{control_plane.apiserver_port}",
        "--state-dir", str(agent_state),
    ], cwd=REPO_ROOT)
    def agent_ready() -> bool:
        if not agent.alive():
            raise ClusterError(f"node agent exited:\n{agent.tail()}")
        return (agent_state / "ready").exists()

    try:
        wait_for(agent_ready, 30, "the node agent")
        result = Cluster(control_plane, agent, agent_state)
        yield result
    finally:
        agent.stop(grace_s=30)
        control_plane.stop()
        if os.environ.get("OCTAVO_E2E_KEEP"):
            sys.stderr.write(f"\ne2e: kept {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest):
    name = cluster.create_namespace("e2e-" + request.node.name.lower().replace("_", "-").replace("[", "-"))
    yield name
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n=== diagnostics for {name}\n{cluster.diagnostics(name)}\n")
    cluster.kube.delete(f"/api/v1/namespaces/{name}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# ------------------------------------------------------------------------------------ CRD + operator
@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> dict:
    """The LLMService CRD, applied from crds/llmservice.yaml and Established."""
    require_paths(CRD_FILE)
    document = yaml.safe_load(CRD_FILE.read_text())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    name = document["metadata"]["name"]
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", timeout_s=70)
    return document


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> dict:
    """The chart installed with helm; its operator pod Ready (run by the node agent as the chart's
    ServiceAccount)."""
    require_paths(CHART_DIR / "Chart.yaml", CRD_FILE)
    require_modules("octavo.operator.main")
    kube = cluster.kube
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": OPERATOR_NAMESPACE, "labels": {AGENT_NAMESPACE_LABEL: "enabled"}}})
    wait_for(lambda: kube.get_or_none(resource_path("v1", "serviceaccounts", OPERATOR_NAMESPACE, "default")),
             30, "the operator namespace's default ServiceAccount")
    # A test may have applied the CRD from crds/ already; let the release adopt it, since a chart
    # that templates its CRD refuses to install over one it does not own.
    crd_name = yaml.safe_load(CRD_FILE.read_text())["metadata"]["name"]
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}"
    if kube.get_or_none(crd_path):
        kube.merge_patch(crd_path, {"metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": OPERATOR_RELEASE,
                            "meta.helm.sh/release-namespace": OPERATOR_NAMESPACE}}})
    cluster.helm("install", OPERATOR_RELEASE, str(CHART_DIR), "--namespace", OPERATOR_NAMESPACE,
                 "--set", "webhook.enabled=true", *OPERATOR_VALUES, "--wait", "--timeout", "5m",
                 timeout_s=330)
    pods = cluster.pods(OPERATOR_NAMESPACE)
    assert pods, "the chart created no operator pod"
    return {"namespace": OPERATOR_NAMESPACE, "release": OPERATOR_RELEASE, "pod": pods[0]}


@pytest.fixture(scope="session")
def runtime_available() -> None:
    require_modules("octavo.runtime.server")
