"""A real Kubernetes control plane on this machine, for the end-to-end tests.

etcd, kube-apiserver and kube-controller-manager (built from pinned Go modules by
`controlplane/build.sh`) run as child processes on loopback with generated certificates, RBAC and
Node authorization, and service account tokens signed by a generated key. The test driver talks to
it as cluster-admin through a client-certificate kubeconfig; everything else (the node agent, the
operator) gets narrower identities.

Pods and Services get addresses from private /24s of 198.18.0.0/15 (the range set aside for
network tests): Endpoints and EndpointSlices reject loopback addresses, so 127.x cannot be a pod
IP. Routes on the loopback device and a veth pair keep them reachable from this machine only
(see `LocalRange`).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from e2e import pki

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
BUILD_SCRIPT = E2E_DIR / "controlplane" / "build.sh"

NODE_NAME = "octavo-e2e-node"
# Namespaces carrying this label are the ones the node agent runs pods for.
AGENT_NAMESPACE_LABEL = "e2e.octavo.dev/node-agent"

CONTROLLERS = ",".join([
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "disruption-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
])


class ClusterError(RuntimeError):
    pass


def build_binaries(timeout_s: float = 80 * 60) -> Path:
    """Run build.sh (a no-op once the binaries are cached) and return the bin directory;
    OCTAVO_E2E_BIN_DIR names prebuilt binaries instead."""
    if os.environ.get("OCTAVO_E2E_BIN_DIR"):
        return Path(os.environ["OCTAVO_E2E_BIN_DIR"])
    env = dict(os.environ)
    env.setdefault("GOMAXPROCS", str(os.cpu_count() or 2))
    if not shutil.which("go", path=env.get("PATH")) and Path("/usr/local/go/bin/go").exists():
        env["PATH"] = f"/usr/local/go/bin:{env.get('PATH', '')}"
    result = subprocess.run(
        ["nice", "-n", "5", "bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE, stderr=None, text=True, env=env, timeout=timeout_s,
    )
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (output above)")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.25):
    """Poll until `predicate()` returns something truthy, and return it; raise after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ClusterError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}")
        time.sleep(interval_s)


@dataclass
class LocalRange:
    """Addresses for pods and Services, reachable from this machine only.

    Pod IPs come from 198.18.N.0/24, routed to the loopback device so every address in it is
    local. Service cluster IPs come from 198.19.N.0/24, which lives in a network namespace of its
    own ("octavo-e2e-N", joined to this one by a veth pair): the node agent's Service proxy
    listens there, as kube-proxy's virtual IPs occupy no port on a node, so a pod binding 0.0.0.0
    on its Service's port does not collide with the proxy. N is random, so two e2e runs on one
    machine do not collide. Everything is removed at teardown.
    """

    octet: int
    undo: list[list[str]] = field(default_factory=list)

    @classmethod
    def claim(cls) -> "LocalRange":
        for octet in random.sample(range(1, 255), 254):
            local = cls(octet)
            if _route_exists(local.pod_cidr) or _route_exists(local.service_cidr) \
                    or Path(f"/var/run/netns/{local.service_netns}").exists():
                continue
            try:
                local._set_up()
            except ClusterError:
                local.release()
                continue
            return local
        raise ClusterError("no free 198.18.N.0/24 range for pod addresses")

    def _set_up(self) -> None:
        ns, host, peer = self.service_netns, f"oe2e{self.octet}h", f"oe2e{self.octet}s"
        _ip("route", "add", "local", self.pod_cidr, "dev", "lo")
        self.undo.append(["route", "del", "local", self.pod_cidr, "dev", "lo"])
        _ip("netns", "add", ns)
        self.undo.append(["netns", "del", ns])
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        self.undo.append(["link", "del", host])
        _ip("link", "set", peer, "netns", ns)
        _ip("addr", "add", f"{self.gateway_ip}/32", "dev", host)
        _ip("link", "set", host, "up")
        _ip("route", "add", self.service_cidr, "dev", host)
        self.undo.append(["route", "del", self.service_cidr, "dev", host])
        for command in (["link", "set", "lo", "up"], ["link", "set", peer, "up"],
                        ["addr", "add", f"198.19.{self.octet}.254/32", "dev", peer],
                        ["route", "add", f"{self.gateway_ip}/32", "dev", peer],
                        ["route", "add", "default", "via", self.gateway_ip, "dev", peer],
                        ["route", "add", "local", self.service_cidr, "dev", "lo"]):
            _ip("-n", ns, *command)

    @property
    def pod_cidr(self) -> str:
        return f"198.18.{self.octet}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"198.19.{self.octet}.0/24"

    @property
    def node_ip(self) -> str:
        return f"198.18.{self.octet}.1"

    @property
    def gateway_ip(self) -> str:
        """This side of the veth pair to the Service namespace (never a pod IP)."""
        return f"198.18.{self.octet}.254"

    @property
    def service_netns(self) -> str:
        return f"octavo-e2e-{self.octet}"

    def release(self) -> None:
        for command in reversed(self.undo):
            subprocess.run(["ip", *command], capture_output=True)
        self.undo.clear()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _route_exists(cidr: str) -> bool:
    out = subprocess.run(["ip", "route", "show", "table", "local", cidr], capture_output=True, text=True)
    return bool(out.stdout.strip())


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict, name: str = "octavo-e2e") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, started and stopped by the tests."""

    def __init__(self, bin_dir: Path, workdir: Path | None = None):
        self.bin_dir = bin_dir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="octavo-e2e-"))
        self.pki_dir = self.workdir / "pki"
        self.log_dir = self.workdir / "logs"
        self.processes: list[Process] = []
        self.local: LocalRange | None = None
        self.apiserver_port = 0
        self.server = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ControlPlane":
        try:
            self.pki_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.local = LocalRange.claim()
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.local:
            self.local.release()

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise ClusterError(f"{process.name} exited ({process.popen.returncode}):\n{process.tail()}")

    # ------------------------------------------------------------------ certificates
    def _make_pki(self) -> None:
        d = self.pki_dir
        self.ca = pki.make_ca(d)
        self.serving = pki.issue(
            d, self.ca, "apiserver", "kube-apiserver",
            ip_sans=("127.0.0.1", f"198.19.{self.local.octet}.1"),
            dns_sans=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                      "kubernetes.default.svc.cluster.local"),
            server=True,
        )
        self.admin = pki.issue(d, self.ca, "admin", "octavo-e2e-admin", organizations=("system:masters",))
        self.controller_manager = pki.issue(d, self.ca, "controller-manager", "system:kube-controller-manager")
        # The node agent's three roles, each with the identity the real component has, so only
        # the bootstrap RBAC roles (and Node authorization) apply: no grants made for the tests.
        self.node = pki.issue(d, self.ca, "node", f"system:node:{NODE_NAME}", organizations=("system:nodes",))
        self.scheduler = pki.issue(d, self.ca, "scheduler", "system:kube-scheduler")
        self.proxy = pki.issue(d, self.ca, "proxy", "system:kube-proxy")
        self.kubelet_client = pki.issue(d, self.ca, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                        organizations=("system:masters",))
        self.service_account_key = pki.make_signing_key(d, "service-account")

    # ------------------------------------------------------------------ processes
    def spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> Process:
        """Start a process that is stopped with the control plane; its output goes to logs/."""
        log = self.log_dir / f"{name}.log"
        handle = open(log, "ab")
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cwd or self.workdir,
        )
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait_healthy(self, process: Process, url: str, timeout_s: float, tls: bool) -> None:
        context = None
        if tls:
            context = ssl.create_default_context(cafile=str(self.ca.cert))
            context.load_cert_chain(str(self.admin.cert), str(self.admin.key))

        def healthy() -> bool:
            if not process.alive():
                raise ClusterError(f"{process.name} exited ({process.popen.returncode}):\n{process.tail()}")
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200

        try:
            wait_for(healthy, timeout_s, f"{process.name} at {url}", interval_s=0.5)
        except TimeoutError as exc:
            raise ClusterError(f"{exc}\n{process.tail()}") from None

    def _start_etcd(self) -> None:
        # Plain HTTP is acceptable here: etcd listens on 127.0.0.1 only and only the API server
        # talks to it.
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        process = self.spawn("etcd", [
            str(self.bin_dir / "etcd"),
            "--name", "e2e",
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", self.etcd_url,
            "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"e2e=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # a throw-away store: durability is not worth the disk waits
            "--log-level", "warn",
        ])
        self._wait_healthy(process, f"{self.etcd_url}/health", 60, tls=False)

    def _start_apiserver(self) -> None:
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        process = self.spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.apiserver_port),
            "--tls-cert-file", str(self.serving.cert),
            "--tls-private-key-file", str(self.serving.key),
            "--client-ca-file", str(self.ca.cert),
            "--kubelet-client-certificate", str(self.kubelet_client.cert),
            "--kubelet-client-key", str(self.kubelet_client.key),
            "--kubelet-certificate-authority", str(self.ca.cert),
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction",
            "--anonymous-auth=false",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(self.service_account_key.cert),
            "--service-account-signing-key-file", str(self.service_account_key.key),
            "--service-cluster-ip-range", self.local.service_cidr,
            # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints reject; pods
            # reach the API server through KUBERNETES_SERVICE_HOST instead (the node agent sets it).
            "--endpoint-reconciler-type", "none",
            # Webhook calls go straight to the Service's ready endpoints (pod IPs).
            "--enable-aggregator-routing=true",
            "--profiling=false",
            "--v=1",
        ])
        self._wait_healthy(process, f"{self.server}/readyz", 120, tls=True)
        self.admin_kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig", self.server, self.ca.cert,
            {"client-certificate": str(self.admin.cert), "client-key": str(self.admin.key)},
        )
        self.node_kubeconfig, self.scheduler_kubeconfig, self.proxy_kubeconfig = (
            write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, self.ca.cert,
                             {"client-certificate": str(pair.cert), "client-key": str(pair.key)})
            for name, pair in (("node", self.node), ("scheduler", self.scheduler), ("proxy", self.proxy))
        )

    def _start_controller_manager(self) -> None:
        kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", self.server, self.ca.cert,
            {"client-certificate": str(self.controller_manager.cert),
             "client-key": str(self.controller_manager.key)},
        )
        process = self.spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig),
            "--authorization-kubeconfig", str(kubeconfig),
            "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()),
            "--leader-elect=false",
            "--controllers", CONTROLLERS,
            # Each controller acts as its own service account, so RBAC applies to them too.
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(self.service_account_key.key),
            "--root-ca-file", str(self.ca.cert),
            "--cluster-name", "octavo-e2e",
            "--concurrent-gc-syncs", "5",
            "--v=1",
        ])
        # The service account controller creating `default` in `default` shows the controller
        # manager is up, authenticated and authorized.
        def default_service_account() -> bool:
            self.check_alive()
            result = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            return result.returncode == 0

        try:
            wait_for(default_service_account, 90, "kube-controller-manager to create the default ServiceAccount",
                     interval_s=0.5)
        except TimeoutError as exc:
            raise ClusterError(f"{exc}\n{process.tail()}") from None

    # ------------------------------------------------------------------ clients
    @property
    def kubectl_path(self) -> str:
        override = os.environ.get("OCTAVO_E2E_KUBECTL")
        return override or str(self.bin_dir / "kubectl")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 60,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        argv = [self.kubectl_path, "--kubeconfig", str(kubeconfig or self.admin_kubeconfig), *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def helm(self, *args: str, check: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess:
        helm_home = self.workdir / "helm"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(helm_home),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
            "KUBECONFIG": str(self.admin_kubeconfig),
        }
        argv = [str(self.bin_dir / "helm"), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
        if check and result.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def api_client(self, kubeconfig: Path | None = None):
        """A `kubernetes` Python client bound to this cluster (admin unless told otherwise)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig or self.admin_kubeconfig),
                                client_configuration=configuration)
        return client.ApiClient(configuration)
