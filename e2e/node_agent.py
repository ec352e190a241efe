"""TEST HARNESS ONLY - a stand-in for a kubelet, a scheduler and kube-proxy on one fake node.

This machine has no kubelet and no container runtime, so the end-to-end tests run pods with this
agent. It is not part of octavo, never ships, and does only what the e2e scenarios need:

* Scheduling: pending pods in namespaces labelled `e2e.octavo.dev/node-agent=enabled` are bound
  to the agent's Node (the only node).
* Containers are local processes. A container's command and args (or its image's entry point,
  read from docker/Dockerfile.<name> for octavo images) run with the pod's environment, with the
  project's virtualenv first on PATH, so the real `octavo serve` and the real operator run.
* Each pod gets its own address (pod IP) from a /24 routed to the loopback device, so every
  container keeps its declared ports. The single rewrite: the wildcard address 0.0.0.0 in
  command, args and env values becomes the pod IP (two pods cannot both bind 0.0.0.0:8000).
* Volumes (emptyDir, configMap, secret, downwardAPI, projected service account tokens, hostPath;
  a persistentVolumeClaim is one directory per claim, shared by its pods) are materialised per pod and bind-mounted at their mount paths inside a private mount namespace
  (`unshare`), as is each container's termination message file; so the operator finds its service
  account token where a real pod would, and a Job's termination message reaches pod status.
* Status: phase, pod IP, conditions, container states, restart counts, readiness from the
  readinessProbe (httpGet, tcpSocket, exec; probed at most every 2 s), termination messages
  (FallbackToLogsOnError included), restarts per restartPolicy.
* Deletion: preStop (exec, httpGet, sleep), SIGTERM, the grace period, SIGKILL, then the final
  delete, as a kubelet does.
* Services: for each cluster IP and TCP port the agent listens and forwards each connection to a
  ready endpoint from the Service's EndpointSlices, round-robin (kube-proxy's job). A connection
  with no ready endpoint is refused. The listeners live in a network namespace of their own
  (--service-netns), so they hold no port that a pod may want to bind.

Not implemented: liveness and startup probes, image pulls, securityContext (processes run as the
agent's user), resource limits (except that a CPU limit sets OMP_NUM_THREADS), service environment
variables, port-forward, logs through the API (container logs are files under the agent's state
directory: <state>/pods/<ns>/<pod>/<container>.log). All pods share this machine's network
namespace: a process that binds the wildcard address in its code (not through args or env, which
are rewritten) takes that port for every pod.

Run: python -m e2e.node_agent run --kubeconfig ... (see `main`). Each of its roles acts with the
real component's identity, so only the bootstrap RBAC roles, Node authorization and
NodeRestriction apply: the kubelet part as system:node:<name>, the scheduler part as
system:kube-scheduler, the proxy part as system:kube-proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from e2e.kube import Kube, KubeError, list_and_watch, resource_path  # noqa: E402

log = logging.getLogger("node-agent")

# What every container command needs to see: the checkout and the Python environment running it.
HARNESS_PATHS = sorted({Path(p).resolve() for p in (REPO_ROOT, sys.prefix, sys.base_prefix)})


def hides_harness(mount_path: str) -> bool:
    """True when a mount at mount_path would cover the checkout or the Python environment."""
    target = Path(mount_path).resolve()
    return any(target == path or target in path.parents for path in HARNESS_PATHS)

NAMESPACE_LABEL = "e2e.octavo.dev/node-agent"
PROBE_PERIOD_CAP_S = 2.0
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
# Entry points of octavo's images when docker/Dockerfile.<name> cannot be read.
FALLBACK_ENTRYPOINTS = {"octavo-runtime": ["octavo", "serve"], "octavo-operator": ["octavo", "operator"]}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------- images
def image_name(image: str) -> str:
    """'ghcr.io/org/octavo-runtime:0.1.0' -> 'octavo-runtime'."""
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def image_config(image: str) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT, CMD) of an octavo image, from docker/Dockerfile.<suffix> when it exists."""
    name = image_name(image)
    suffix = name.removeprefix("octavo-")
    entrypoint: list[str] = list(FALLBACK_ENTRYPOINTS.get(name, []))
    cmd: list[str] = []
    dockerfile = REPO_ROOT / "docker" / f"Dockerfile.{suffix}"
    if dockerfile.exists():
        for instruction, value in _dockerfile_instructions(dockerfile.read_text()):
            if instruction in ("ENTRYPOINT", "CMD"):
                try:
                    words = json.loads(value)
                except ValueError:
                    words = ["/bin/sh", "-c", value]
                if instruction == "ENTRYPOINT":
                    entrypoint, cmd = words, []  # a later ENTRYPOINT resets CMD, as in Docker
                else:
                    cmd = words
    return entrypoint, cmd


def _dockerfile_instructions(text: str):
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, value = line.partition(" ")
            yield instruction.upper(), value.strip()


# ------------------------------------------------------------------------------ env and commands
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are substituted, $$ escapes, the rest stays."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def field_ref(pod: dict, path: str, pod_ip: str, node_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": node_ip,
        "status.hostIPs": node_ip,
    }
    if path in values:
        return values[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise ValueError(f"unsupported fieldRef {path}")


def quantity_to_float(quantity: str) -> float:
    if quantity.endswith("m"):
        return float(quantity[:-1]) / 1000
    return float(quantity)


# ----------------------------------------------------------------------------------- containers
@dataclass
class ContainerState:
    spec: dict
    init: bool = False
    process: subprocess.Popen | None = None
    started_at: str = ""
    restart_count: int = 0
    ready: bool = False
    readiness_successes: int = 0
    readiness_failures: int = 0
    next_probe: float = 0.0
    terminated: dict | None = None  # state.terminated of the latest exit
    last_terminated: dict | None = None
    restart_at: float | None = None
    waiting_reason: str = "ContainerCreating"

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class PodRunner:
    """Runs one pod's containers and keeps its status, in a thread of its own."""

    def __init__(self, agent: "NodeAgent", pod: dict, pod_ip: str):
        self.agent = agent
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.pod_ip = pod_ip
        self.dir = agent.state_dir / "pods" / self.namespace / self.name
        self.deleting = threading.Event()
        self.finished = threading.Event()
        self.start_time = now()
        self.init_done = False
        spec = pod["spec"]
        self.init_containers = [ContainerState(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [ContainerState(c) for c in spec["containers"]]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.last_status: dict | None = None
        self.condition_times: dict[str, tuple[str, str]] = {}
        self.volume_dirs: dict[str, Path] = {}
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    # ---------------------------------------------------------------- main loop
    def _run(self) -> None:
        try:
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            self._publish_status()
            if not self._materialise_volumes_with_retries():
                return
            while not self.deleting.is_set():
                self._step()
                self._publish_status()
                if self._terminal_phase():
                    break
                self.deleting.wait(0.25)
            if self.deleting.is_set():
                self._terminate()
                self._publish_status()
                self.agent.finish_deletion(self)
        except Exception as exc:  # noqa: BLE001 - a harness bug must show up in the pod and the log
            log.exception("pod %s failed in the agent", self.key)
            self.agent.event(self.pod, "Warning", "NodeAgentError", f"test node agent: {exc}")
            self._kill_all()
        finally:
            self.agent.release_ip(self.pod_ip)
            self.finished.set()

    def _step(self) -> None:
        if not self.init_done:
            self.init_done = self._step_init_containers()
            if not self.init_done:
                return
        for container in self.containers:
            self._reap(container)
            if container.process is None and container.terminated is None and container.restart_at is None:
                self._start(container)
            self._restart_when_due(container)
            if container.running:
                self._probe_readiness(container)

    def _step_init_containers(self) -> bool:
        """Init containers run one at a time, in order; True once all have succeeded."""
        for container in self.init_containers:
            self._reap(container)
            self._restart_when_due(container)
            if container.running or container.restart_at is not None:
                return False
            if container.terminated is None:
                self._start(container)
                return False
            if container.terminated["exitCode"] != 0:
                return False  # failed for good (restartPolicy Never): the pod fails
        return True

    def _restart_when_due(self, container: ContainerState) -> None:
        if container.restart_at is not None and time.monotonic() >= container.restart_at:
            container.restart_at = None
            self._start(container)

    def _reap(self, container: ContainerState) -> None:
        if container.process is None or container.process.poll() is None:
            return
        code = container.process.returncode
        container.process = None
        container.ready = False
        message = self._termination_message(container, code)
        container.terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": container.started_at,
            "finishedAt": now(),
            **({"message": message} if message else {}),
        }
        if code < 0:
            container.terminated["signal"] = -code
        log.info("%s/%s exited with %s", self.key, container.name, code)
        self._kill_group(container)
        if container.init:
            restart = code != 0 and self.restart_policy != "Never"
        else:
            restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if restart and not self.deleting.is_set():
            self._schedule_restart(container)

    def _schedule_restart(self, container: ContainerState) -> None:
        container.restart_count += 1
        container.last_terminated = container.terminated
        backoff = min(10.0, 0.5 * 2 ** min(container.restart_count, 5))
        container.restart_at = time.monotonic() + backoff
        container.waiting_reason = "CrashLoopBackOff" if container.restart_count > 2 else "ContainerCreating"

    def _terminal_phase(self) -> bool:
        return self._phase() in ("Succeeded", "Failed")

    # ---------------------------------------------------------------- processes
    def _container_env(self, container: dict) -> dict[str, str]:
        env = {
            "PATH": f"{self.agent.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.dir),
            "HOSTNAME": self.name,
            # The octavo package as an image would contain it.
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "KUBERNETES_SERVICE_HOST": self.agent.apiserver_host,
            "KUBERNETES_SERVICE_PORT": str(self.agent.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.agent.apiserver_port),
        }
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._config_map(source["configMapRef"]["name"], source["configMapRef"].get("optional"))
            else:
                data = self._secret(source["secretRef"]["name"], source["secretRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "valueFrom" in var:
                value = self._env_value(var["valueFrom"], container)
                if value is not None:
                    env[var["name"]] = value
            else:
                env[var["name"]] = ""
        cpu_limit = ((container.get("resources") or {}).get("limits") or {}).get("cpu")
        if cpu_limit and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, math.ceil(quantity_to_float(str(cpu_limit)))))
        return {k: self._rewrite_wildcard(v) for k, v in env.items()}

    def _env_value(self, source: dict, container: dict) -> str | None:
        if "fieldRef" in source:
            return field_ref(self.pod, source["fieldRef"]["fieldPath"], self.pod_ip, self.agent.node_ip)
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._config_map(ref["name"], ref.get("optional")).get(ref["key"])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._secret(ref["name"], ref.get("optional")).get(ref["key"])
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            kind, _, resource = ref["resource"].partition(".")
            value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
            return str(value) if value is not None else "0"
        return None

    def _rewrite_wildcard(self, text: str) -> str:
        return text.replace("0.0.0.0", self.pod_ip)

    def _config_map(self, name: str, optional: bool | None) -> dict[str, str]:
        obj = self.agent.kube.get_or_none(resource_path("v1", "configmaps", self.namespace, name))
        if obj is None and not optional:
            raise RuntimeError(f"configmap {self.namespace}/{name} not found")
        return (obj or {}).get("data") or {}

    def _secret(self, name: str, optional: bool | None) -> dict[str, str]:
        obj = self.agent.kube.get_or_none(resource_path("v1", "secrets", self.namespace, name))
        if obj is None and not optional:
            raise RuntimeError(f"secret {self.namespace}/{name} not found")
        return {k: base64.b64decode(v).decode() for k, v in ((obj or {}).get("data") or {}).items()}

    def _argv(self, container: dict, env: dict[str, str]) -> list[str]:
        entrypoint, default_cmd = image_config(container.get("image", ""))
        command = container.get("command")
        args = container.get("args")
        if command:
            argv = list(command) + list(args or [])
        else:
            argv = entrypoint + (list(args) if args is not None else default_cmd)
        if not argv:
            raise RuntimeError(f"container {container['name']} has no command and image "
                               f"{container.get('image')!r} has no known entry point")
        argv = [self._rewrite_wildcard(expand(word, env)) for word in argv]
        resolved = shutil.which(argv[0], path=env["PATH"])
        if resolved:
            argv[0] = resolved
        elif argv[0] == "octavo":  # the package is importable but its console script not installed
            argv = [sys.executable, "-m", "octavo.cli", *argv[1:]]
        return argv

    def _mounts(self, container: ContainerState) -> list[tuple[Path, str]]:
        mounts = []
        for mount in container.spec.get("volumeMounts") or []:
            if hides_harness(mount["mountPath"]):
                # A real pod has its own root filesystem; here a volume over /tmp (say) would hide
                # the checkout or the virtualenv the container's command runs from.
                log.warning("%s: volume %s not mounted at %s: it would hide %s", container.name, mount["name"],
                            mount["mountPath"], ", ".join(str(p) for p in HARNESS_PATHS))
                continue
            source = self.volume_dirs[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            mounts.append((source, mount["mountPath"]))
        mounts.append((self._termination_file(container),
                       container.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH))
        # Parents before children, as a kubelet orders them.
        return sorted(mounts, key=lambda mount: Path(mount[1]).parts)

    def _termination_file(self, container: ContainerState) -> Path:
        return self.dir / f"{container.name}.termination-log"

    def _launch(self, container: ContainerState, argv: list[str], env: dict[str, str], log_file) -> subprocess.Popen:
        mounts = self._mounts(container)
        for source, target in mounts:
            self.agent.ensure_mount_point(target, directory=source.is_dir())
        wrapper = [
            "unshare", "--mount", "--propagation", "private",
            sys.executable, "-m", "e2e.node_agent", "exec",
            *itertools.chain.from_iterable(("--mount", f"{s}={t}") for s, t in mounts),
            "--", *argv,
        ]
        workdir = container.spec.get("workingDir")
        cwd = workdir if workdir and Path(workdir).is_dir() else str(self.dir)
        wrapper_env = dict(env)
        # The wrapper itself must import e2e; the container's PYTHONPATH already has the repo.
        return subprocess.Popen(wrapper, env=wrapper_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def _start(self, container: ContainerState) -> None:
        try:
            env = self._container_env(container.spec)
            argv = self._argv(container.spec, env)
        except Exception as exc:  # noqa: BLE001 - reported as the container's waiting reason
            container.waiting_reason = "CreateContainerConfigError"
            self.agent.event(self.pod, "Warning", "Failed", f"{container.name}: {exc}")
            container.restart_at = time.monotonic() + 2
            return
        self._termination_file(container).write_text("")
        log_path = self.dir / f"{container.name}.log"
        with open(log_path, "ab") as log_file:
            log_file.write(f"--- {now()} start: {' '.join(argv)}\n".encode())
            log_file.flush()
            container.process = self._launch(container, argv, env, log_file)
        (self.dir / f"{container.name}.pid").write_text(str(container.process.pid))
        container.started_at = now()
        container.terminated = None
        container.ready = False
        container.readiness_successes = container.readiness_failures = 0
        probe = container.spec.get("readinessProbe") or {}
        container.next_probe = time.monotonic() + probe.get("initialDelaySeconds", 0)
        log.info("%s/%s started (pid %d): %s", self.key, container.name, container.process.pid, argv)
        self.agent.event(self.pod, "Normal", "Started", f"Started container {container.name}")

    def _termination_message(self, container: ContainerState, code: int) -> str:
        try:
            message = self._termination_file(container).read_bytes()[:MAX_TERMINATION_MESSAGE_BYTES]
        except OSError:
            message = b""
        text = message.decode(errors="replace").strip()
        if not text and code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = (self.dir / f"{container.name}.log").read_bytes().splitlines()[-80:]
            text = b"\n".join(lines)[-2048:].decode(errors="replace")
        return text

    # ---------------------------------------------------------------- probes
    def _probe_readiness(self, container: ContainerState) -> None:
        probe = container.spec.get("readinessProbe")
        if not probe:
            container.ready = True
            return
        if time.monotonic() < container.next_probe:
            return
        period = min(float(probe.get("periodSeconds", 10)), PROBE_PERIOD_CAP_S)
        container.next_probe = time.monotonic() + period
        ok = self._run_probe(container, probe)
        if ok:
            container.readiness_failures = 0
            container.readiness_successes += 1
            if container.readiness_successes >= probe.get("successThreshold", 1):
                container.ready = True
        else:
            container.readiness_successes = 0
            container.readiness_failures += 1
            if container.readiness_failures >= probe.get("failureThreshold", 3):
                container.ready = False

    def _resolve_port(self, container: dict, port) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"unknown named port {port!r}")

    def _run_probe(self, container: ContainerState, probe: dict) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                action = probe["httpGet"]
                host = action.get("host") or self.pod_ip
                port = self._resolve_port(container.spec, action["port"])
                scheme = action.get("scheme", "HTTP").lower()
                request = urllib.request.Request(f"{scheme}://{host}:{port}{action.get('path', '/')}")
                for header in action.get("httpHeaders") or []:
                    request.add_header(header["name"], header["value"])
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return 200 <= response.status < 400
            if "tcpSocket" in probe:
                port = self._resolve_port(container.spec, probe["tcpSocket"]["port"])
                with socket.create_connection((probe["tcpSocket"].get("host") or self.pod_ip, port), timeout):
                    return True
            if "exec" in probe:
                return self._exec_in(container, probe["exec"]["command"], timeout) == 0
        except Exception:  # noqa: BLE001 - any failure is a failed probe
            return False
        return False

    def _exec_in(self, container: ContainerState, command: list[str], timeout: float) -> int:
        env = self._container_env(container.spec)
        argv = [self._rewrite_wildcard(expand(w, env)) for w in command]
        with open(self.dir / f"{container.name}.log", "ab") as log_file:
            process = self._launch(container, argv, env, log_file)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -1

    # ---------------------------------------------------------------- termination
    def _terminate(self) -> None:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        deadline = time.monotonic() + float(grace)
        for container in self.containers + self.init_containers:
            container.restart_at = None
        running = [c for c in self.containers + self.init_containers if c.running]
        hooks = [threading.Thread(target=self._pre_stop, args=(c, deadline), daemon=True) for c in running]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(max(0.0, deadline - time.monotonic()))
        for container in running:
            if container.running:
                try:
                    container.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for container in running:
            if container.process is None:
                continue
            try:
                container.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.info("%s/%s ignored SIGTERM for %ss; killing", self.key, container.name, grace)
                self._kill_group(container, signal.SIGKILL)
                container.process.wait()
            self._reap(container)

    def _pre_stop(self, container: ContainerState, deadline: float) -> None:
        hook = ((container.spec.get("lifecycle") or {}).get("preStop")) or {}
        remaining = max(0.0, deadline - time.monotonic())
        try:
            if "sleep" in hook:
                time.sleep(min(float(hook["sleep"]["seconds"]), remaining))
            elif "exec" in hook:
                self._exec_in(container, hook["exec"]["command"], remaining)
            elif "httpGet" in hook:
                self._run_probe(container, {"httpGet": hook["httpGet"], "timeoutSeconds": remaining})
        except Exception:  # noqa: BLE001 - a failed hook does not stop termination
            log.exception("preStop of %s/%s failed", self.key, container.name)

    def _kill_group(self, container: ContainerState, sig: int = signal.SIGKILL) -> None:
        """Kill what the container left behind (a pid namespace would, when its init exits)."""
        pid_file = self.dir / f"{container.name}.pid"
        try:
            os.killpg(int(pid_file.read_text()), sig)
        except (OSError, ValueError):
            pass

    def _kill_all(self) -> None:
        for container in self.containers + self.init_containers:
            if container.process is not None:
                self._kill_group(container)

    # ---------------------------------------------------------------- volumes
    def _materialise_volumes_with_retries(self) -> bool:
        """Volumes can fail for a while and then work (Node authorization learns of a pod's
        binding a moment after the binding; a Secret may come later): retry, as a kubelet does,
        until they are ready (True) or the pod is deleted (False)."""
        delay, reported = 0.2, 0.0
        while True:
            try:
                self._materialise_volumes()
                return True
            except Exception as exc:  # noqa: BLE001 - reported as an Event, then retried
                if time.monotonic() - reported > 10:
                    self.agent.event(self.pod, "Warning", "FailedMount", f"test node agent: {exc}")
                    reported = time.monotonic()
            if self.deleting.wait(delay):
                self._publish_status()
                self.agent.finish_deletion(self)
                return False
            delay = min(2.0, delay * 2)

    def _materialise_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "hostPath" in volume:
                self.volume_dirs[name] = Path(volume["hostPath"]["path"])
                continue
            if "persistentVolumeClaim" in volume:
                # One directory per claim, shared by every pod that mounts it and kept across
                # pod restarts, as a bound volume would be (no provisioner, no binding checks).
                claim = volume["persistentVolumeClaim"]["claimName"]
                target = self.agent.state_dir / "claims" / self.namespace / claim
                target.mkdir(parents=True, exist_ok=True)
                self.volume_dirs[name] = target
                continue
            target = self.dir / "volumes" / name
            target.mkdir(parents=True, exist_ok=True)
            self.volume_dirs[name] = target
            if "configMap" in volume:
                self._write_items(target, self._config_map(volume["configMap"]["name"],
                                                           volume["configMap"].get("optional")),
                                  volume["configMap"].get("items"))
            elif "secret" in volume:
                self._write_items(target, self._secret(volume["secret"]["secretName"],
                                                       volume["secret"].get("optional")),
                                  volume["secret"].get("items"))
            elif "downwardAPI" in volume:
                self._write_downward(target, volume["downwardAPI"].get("items") or [])
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    self._write_projection(target, source)
            elif "emptyDir" not in volume:
                log.warning("%s: volume %s of an unsupported type is an empty directory", self.key, name)

    def _write_items(self, target: Path, data: dict[str, str], items: list | None) -> None:
        if items:
            data = {item["path"]: data[item["key"]] for item in items if item["key"] in data}
        for path, value in data.items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_text(value)

    def _write_downward(self, target: Path, items: list) -> None:
        for item in items:
            if "fieldRef" in item:
                value = field_ref(self.pod, item["fieldRef"]["fieldPath"], self.pod_ip, self.agent.node_ip)
                (target / item["path"]).write_text(value)

    def _write_projection(self, target: Path, source: dict) -> None:
        if "serviceAccountToken" in source:
            token_source = source["serviceAccountToken"]
            token = self.agent.service_account_token(self.pod, token_source.get("audience"),
                                                     token_source.get("expirationSeconds", 3607))
            (target / token_source["path"]).write_text(token)
        elif "configMap" in source:
            self._write_items(target, self._config_map(source["configMap"]["name"],
                                                       source["configMap"].get("optional")),
                              source["configMap"].get("items"))
        elif "secret" in source:
            self._write_items(target, self._secret(source["secret"]["name"], source["secret"].get("optional")),
                              source["secret"].get("items"))
        elif "downwardAPI" in source:
            self._write_downward(target, source["downwardAPI"].get("items") or [])

    # ---------------------------------------------------------------- status
    def _phase(self) -> str:
        every = self.init_containers + self.containers
        if any(c.terminated and c.terminated["exitCode"] != 0 and c.restart_at is None and not c.running
               for c in every) and self.restart_policy == "Never":
            return "Failed"
        if self.init_done and all(c.terminated is not None and not c.running and c.restart_at is None
                                  for c in self.containers):
            if all(c.terminated["exitCode"] == 0 for c in self.containers):
                return "Succeeded"
            return "Failed"
        if self.init_done and any(c.process is not None or c.terminated for c in self.containers):
            return "Running"
        return "Pending"

    def _container_status(self, container: ContainerState) -> dict:
        if container.running:
            state = {"running": {"startedAt": container.started_at}}
        elif container.terminated and container.restart_at is None:
            state = {"terminated": container.terminated}
        else:
            state = {"waiting": {"reason": container.waiting_reason}}
        status = {
            "name": container.name,
            "image": container.spec.get("image", ""),
            "imageID": "",
            "containerID": f"octavo-e2e://{self.uid}/{container.name}/{container.restart_count}",
            "ready": container.ready and container.running,
            "started": container.running,
            "restartCount": container.restart_count,
            "state": state,
        }
        last = container.last_terminated
        if last:
            status["lastState"] = {"terminated": last}
        return status

    def _publish_status(self) -> None:
        phase = self._phase()
        ready = phase == "Running" and all(c.ready and c.running for c in self.containers)
        started = self.init_done

        def condition(kind: str, value: bool) -> dict:
            return {"type": kind, "status": "True" if value else "False"}

        status = {
            "phase": phase,
            "hostIP": self.agent.node_ip,
            "hostIPs": [{"ip": self.agent.node_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": [
                condition("PodReadyToStartContainers", True),
                condition("Initialized", started),
                condition("ContainersReady", ready),
                condition("Ready", ready),
                condition("PodScheduled", True),
            ],
            "initContainerStatuses": [self._container_status(c) for c in self.init_containers],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if status == self.last_status:
            return
        to_send = json.loads(json.dumps(status))
        for cond in to_send["conditions"]:
            # lastTransitionTime moves only when a condition's status does.
            before = self.condition_times.get(cond["type"])
            if before is None or before[0] != cond["status"]:
                self.condition_times[cond["type"]] = (cond["status"], now())
            cond["lastTransitionTime"] = self.condition_times[cond["type"]][1]
        try:
            self.agent.kube.strategic_patch(
                resource_path("v1", "pods", self.namespace, self.name, "status"), {"status": to_send})
        except KubeError as exc:
            if exc.status == 404:
                self.deleting.set()
                return
            log.warning("status of %s: %s", self.key, exc)
            return
        self.last_status = status


# ---------------------------------------------------------------------------------------- agent
class NodeAgent:
    def __init__(self, args: argparse.Namespace):
        self.kube = Kube(Path(args.kubeconfig))  # the kubelet's identity
        self.scheduler = Kube(Path(args.scheduler_kubeconfig))
        self.proxy_kube = Kube(Path(args.proxy_kubeconfig))
        self.node_name = args.node_name
        self.state_dir = Path(args.state_dir)
        self.node_ip = args.node_ip
        self.apiserver_host, _, port = args.apiserver.rpartition(":")
        self.apiserver_port = int(port)
        self.venv_bin = Path(sys.executable).parent
        pod_network = ipaddress.ip_network(args.pod_cidr)
        # .1 is the node, .254 the gateway to the Service namespace (see e2e/cluster.py).
        self.free_ips = [str(ip) for ip in pod_network.hosts() if ip.packed[-1] not in (1, 254)]
        self.service_network = ipaddress.ip_network(args.service_cidr)
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.pods: dict[str, dict] = {}  # uid -> pod
        self.runners: dict[str, PodRunner] = {}  # uid -> runner
        self.enabled_namespaces: set[str] = set()
        self.services: dict[str, dict] = {}  # ns/name -> service
        self.slices: dict[str, dict] = {}  # ns/name -> endpointslice
        self.created_mount_points: list[Path] = []
        self.wake = threading.Event()
        self.proxy = ServiceProxy(self, args.service_netns)

    # ---------------------------------------------------------------- informers
    def _cache_handler(self, cache: dict, key_of, after=None):
        def handle(kind: str, obj):
            with self.lock:
                if kind == "SYNCED":
                    cache.clear()
                    cache.update({key_of(o): o for o in obj})
                elif kind == "DELETED":
                    cache.pop(key_of(obj), None)
                else:
                    cache[key_of(obj)] = obj
            if after:
                after()
            self.wake.set()
        return handle

    def _namespace_handler(self, kind: str, obj) -> None:
        with self.lock:
            items = obj if kind == "SYNCED" else [obj]
            if kind == "SYNCED":
                self.enabled_namespaces.clear()
            for ns in items:
                name = ns["metadata"]["name"]
                enabled = (ns["metadata"].get("labels") or {}).get(NAMESPACE_LABEL) == "enabled"
                if enabled and kind != "DELETED":
                    self.enabled_namespaces.add(name)
                else:
                    self.enabled_namespaces.discard(name)
        self.wake.set()

    def _informer(self, kube: Kube, path: str, handler, **params) -> None:
        threading.Thread(target=list_and_watch, args=(kube, path, handler, self.stop), kwargs=params,
                         daemon=True, name=f"watch {path}").start()

    # ---------------------------------------------------------------- node
    def register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {
                "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "e2e.octavo.dev/test-node-agent": "true"}},
            "spec": {},
        }
        try:
            self.kube.create("/api/v1/nodes", node)
        except KubeError as exc:
            if exc.status != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        stamp = now()
        status = {
            "addresses": [{"type": "InternalIP", "address": self.node_ip},
                          {"type": "Hostname", "address": self.node_name}],
            "capacity": {"cpu": str(os.cpu_count() or 2), "memory": "64Gi", "pods": "250"},
            "allocatable": {"cpu": str(os.cpu_count() or 2), "memory": "64Gi", "pods": "250"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "TestNodeAgentReady",
                            "message": "octavo e2e test node agent", "lastHeartbeatTime": stamp,
                            "lastTransitionTime": stamp}],
            "nodeInfo": {"kubeletVersion": "octavo-e2e-node-agent", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://",
                         "kernelVersion": "", "osImage": "", "kubeProxyVersion": "", "machineID": "",
                         "systemUUID": "", "bootID": ""},
        }
        self.kube.strategic_patch(f"/api/v1/nodes/{self.node_name}/status", {"status": status})

    # ---------------------------------------------------------------- pods
    def allocate_ip(self) -> str:
        with self.lock:
            if not self.free_ips:
                raise RuntimeError("pod address range exhausted")
            return self.free_ips.pop(0)

    def release_ip(self, ip: str) -> None:
        with self.lock:
            if ip not in self.free_ips:
                self.free_ips.append(ip)

    def service_account_token(self, pod: dict, audience: str | None, expiration_s: int) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec = {"expirationSeconds": max(600, int(expiration_s)),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}
        if audience:
            spec["audiences"] = [audience]
        response = self.kube.create(resource_path("v1", "serviceaccounts", meta["namespace"], account, "token"),
                                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return response["status"]["token"]

    def ensure_mount_point(self, target: str, directory: bool) -> None:
        """A bind mount needs something at its target: create it (recorded, removed at exit)."""
        path = Path(target)
        with self.lock:
            if path.exists():
                return
            missing = []
            parent = path if directory else path.parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for item in reversed(missing):
                item.mkdir()
                self.created_mount_points.append(item)
            if not directory:
                path.touch()
                self.created_mount_points.append(path)

    def remove_mount_points(self) -> None:
        for path in reversed(self.created_mount_points):
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:
                pass

    def event(self, pod: dict, kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": "octavo-e2e-node-agent", "host": self.node_name},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        }
        try:
            self.kube.create(resource_path("v1", "events", meta["namespace"]), body)
        except KubeError as exc:
            log.debug("event for %s: %s", meta["name"], exc)

    def finish_deletion(self, runner: PodRunner) -> None:
        """After the containers stopped, remove the pod object for good (grace period 0)."""
        try:
            self.kube.delete(resource_path("v1", "pods", runner.namespace, runner.name),
                             {"gracePeriodSeconds": 0, "preconditions": {"uid": runner.uid}})
        except KubeError as exc:
            if exc.status != 409:
                log.warning("final delete of %s: %s", runner.key, exc)

    def bind(self, pod: dict) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            self.scheduler.create(resource_path("v1", "pods", meta["namespace"], meta["name"], "binding"), body)
            log.info("bound %s/%s", meta["namespace"], meta["name"])
        except KubeError as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], exc)

    def sync_pods(self) -> None:
        with self.lock:
            pods = dict(self.pods)
            enabled = set(self.enabled_namespaces)
        for uid, pod in pods.items():
            meta, spec = pod["metadata"], pod["spec"]
            node = spec.get("nodeName")
            if not node:
                if meta["namespace"] in enabled and not meta.get("deletionTimestamp") \
                        and spec.get("schedulerName", "default-scheduler") == "default-scheduler":
                    self.bind(pod)
                continue
            if node != self.node_name:
                continue
            runner = self.runners.get(uid)
            if runner is None:
                if meta.get("deletionTimestamp"):
                    self.finish_deletion(PodRunner(self, pod, ""))
                    continue
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                runner = PodRunner(self, pod, self.allocate_ip())
                self.runners[uid] = runner
                runner.start()
            else:
                runner.update(pod)
                if runner.finished.is_set() and meta.get("deletionTimestamp"):
                    self.finish_deletion(runner)
        # Pods removed behind our back (force deletion): stop their processes.
        for uid, runner in list(self.runners.items()):
            if uid not in pods:
                runner.deleting.set()
                if runner.finished.is_set():
                    del self.runners[uid]

    # ---------------------------------------------------------------- main
    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.register_node()
        self._informer(self.scheduler, "/api/v1/namespaces", self._namespace_handler)
        pod_key = lambda o: o["metadata"]["uid"]  # noqa: E731
        self._informer(self.scheduler, "/api/v1/pods", self._cache_handler(self.pods, pod_key))
        ns_key = lambda o: f"{o['metadata']['namespace']}/{o['metadata']['name']}"  # noqa: E731
        self._informer(self.proxy_kube, "/api/v1/services",
                       self._cache_handler(self.services, ns_key, self.proxy.changed))
        self._informer(self.proxy_kube, "/apis/discovery.k8s.io/v1/endpointslices",
                       self._cache_handler(self.slices, ns_key, self.proxy.changed))
        self.proxy.start()
        (self.state_dir / "ready").write_text(str(os.getpid()))
        last_heartbeat = time.monotonic()
        while not self.stop.is_set():
            self.wake.wait(0.5)
            self.wake.clear()
            try:
                self.sync_pods()
                if time.monotonic() - last_heartbeat > 20:
                    self.heartbeat()
                    last_heartbeat = time.monotonic()
            except Exception:  # noqa: BLE001 - keep serving; the log shows what went wrong
                log.exception("sync failed")

    def shutdown(self) -> None:
        self.stop.set()
        for runner in list(self.runners.values()):
            runner.deleting.set()
        deadline = time.monotonic() + 15
        for runner in list(self.runners.values()):
            runner.finished.wait(max(0.1, deadline - time.monotonic()))
            runner._kill_all()
        self.remove_mount_points()


# ------------------------------------------------------------------------------- service proxy
class ServiceProxy:
    """kube-proxy's part: cluster IP:port -> a ready endpoint, round-robin, per TCP connection."""

    def __init__(self, agent: NodeAgent, netns: str | None):
        self.agent = agent
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self.listeners: dict[tuple[str, int], asyncio.base_events.Server] = {}
        self.counter = itertools.count()
        self.sync_lock: asyncio.Lock | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="service-proxy").start()
        self.changed()

    def _run(self) -> None:
        if self.netns:
            # A network namespace belongs to a thread: only this one's sockets (the listeners on
            # cluster IPs and the connections to pods) live in the Service namespace.
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{self.netns}", os.O_RDONLY)
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                log.error("cannot enter network namespace %s: %s", self.netns, os.strerror(ctypes.get_errno()))
            os.close(fd)
        self.loop.run_forever()

    def changed(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._sync()))

    def _wanted(self) -> dict[tuple[str, int], tuple[str, str, str]]:
        wanted = {}
        with self.agent.lock:
            services = list(self.agent.services.values())
        for service in services:
            ip = (service.get("spec") or {}).get("clusterIP")
            if not ip or ip == "None" or ipaddress.ip_address(ip) not in self.agent.service_network:
                continue
            for port in service["spec"].get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    meta = service["metadata"]
                    wanted[(ip, int(port["port"]))] = (meta["namespace"], meta["name"], port.get("name", ""))
        return wanted

    async def _sync(self) -> None:
        if self.sync_lock is None:
            self.sync_lock = asyncio.Lock()
        async with self.sync_lock:
            await self._sync_listeners()

    async def _sync_listeners(self) -> None:
        wanted = self._wanted()
        for key in list(self.listeners):
            if key not in wanted:
                self.listeners.pop(key).close()
        for key, target in wanted.items():
            if key in self.listeners:
                continue
            try:
                self.listeners[key] = await asyncio.start_server(
                    lambda r, w, t=target: self._forward(r, w, t), host=key[0], port=key[1], reuse_address=True)
            except OSError as exc:
                log.warning("cannot listen on %s:%s for %s: %s", key[0], key[1], target, exc)

    def endpoints(self, namespace: str, service: str, port_name: str) -> list[tuple[str, int]]:
        with self.agent.lock:
            slices = [s for s in self.agent.slices.values()
                      if s["metadata"]["namespace"] == namespace
                      and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == service]
        found = []
        for slice_ in slices:
            ports = [p for p in slice_.get("ports") or [] if (p.get("name") or "") == port_name]
            if not ports or ports[0].get("port") is None:
                continue
            for endpoint in slice_.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready", True) is False:
                    continue
                for address in endpoint.get("addresses") or []:
                    found.append((address, int(ports[0]["port"])))
        return sorted(found)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target) -> None:
        endpoints = self.endpoints(*target)
        if not endpoints:
            writer.transport.abort()
            return
        host, port = endpoints[next(self.counter) % len(endpoints)]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    if sink.can_write_eof():
                        sink.write_eof()
                except (ConnectionError, OSError, RuntimeError):
                    pass

        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))
        for stream in (writer, upstream_writer):
            stream.close()


# ------------------------------------------------------------------------------------ exec stub
def exec_in_mounts(mounts: list[str], argv: list[str]) -> None:
    """Runs inside `unshare --mount`: bind the pod's files at their paths, then become argv.

    Every source is opened before the first mount, and mounted through /proc/self/fd, so a mount
    over a directory that holds later sources (an emptyDir at /tmp, say) cannot hide them. A
    working directory that a mount hid (the pod's folder, under /tmp) becomes "/", as in a container
    without WORKDIR: a kubelet never starts a process whose working directory has no path (Python's
    multiprocessing spawn, for one, changes into the parent's directory by its path)."""
    libc = ctypes.CDLL(None, use_errno=True)
    workdir = os.getcwd()
    ms_bind, ms_rec = 4096, 16384
    opened = []
    for spec in mounts:
        source, _, target = spec.partition("=")
        opened.append((os.open(source, os.O_PATH), target))
    for fd, target in opened:
        if not os.path.lexists(target):  # inside a volume mounted just before (parents go first)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
        if libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, ms_bind | ms_rec, None) != 0:
            error = ctypes.get_errno()
            print(f"test node agent: cannot mount at {target}: {os.strerror(error)}", file=sys.stderr)
            sys.exit(126)
        os.close(fd)
    try:
        still_there = os.path.samestat(os.stat(workdir), os.stat("."))
    except OSError:
        still_there = False
    if not still_there:
        os.chdir("/")
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as exc:
        print(f"test node agent: cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        sys.exit(127)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.node_agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--kubeconfig", required=True, help="a kubeconfig with the node's identity")
    run.add_argument("--scheduler-kubeconfig", required=True, help="... with the scheduler's identity")
    run.add_argument("--proxy-kubeconfig", required=True, help="... with kube-proxy's identity")
    run.add_argument("--node-name", required=True)
    run.add_argument("--node-ip", required=True)
    run.add_argument("--pod-cidr", required=True)
    run.add_argument("--service-cidr", required=True)
    run.add_argument("--service-netns", default=None, help="network namespace the Service proxy listens in")
    run.add_argument("--apiserver", required=True, help="host:port pods use as KUBERNETES_SERVICE_HOST/PORT")
    run.add_argument("--state-dir", required=True)
    execute = sub.add_parser("exec", help="(internal) bind mounts, then exec a container's command")
    execute.add_argument("--mount", action="append", default=[])
    execute.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "exec":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        exec_in_mounts(args.mount, command)
        return 127

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = NodeAgent(args)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    try:
        agent.run()
    finally:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
