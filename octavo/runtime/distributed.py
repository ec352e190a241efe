"""Tensor parallelism: the process group, the collectives the parallel layers call, and the worker
processes that hold ranks 1..N-1.

Rank 0 lives in the engine process: it schedules, samples and computes its own shard. Every other
rank is a worker process (spawned, one per GPU) that builds its own shard of each model runner and
then loops: receive one message from rank 0 through its pipe, run it. The per-step message is the
flat batch the model runner built (a few small CPU arrays), so workers never see requests, the
scheduler or the sampler. The collectives inside the forward (NCCL on CUDA, gloo on CPU) keep the
ranks in lockstep; the pipes carry only control, so an idle engine leaves no collective waiting.

A worker that dies: rank 0 watches every worker's process sentinel from a thread. On a death it
records why, aborts the NCCL communicators (so a rank-0 wait on the dead peer returns; gloo notices
the closed socket by itself), and every later call raises WorkerDiedError. The engine's caller
sees the error; the async engine marks itself dead and /health goes red.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import socket
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from octavo.runtime.config import EngineConfig

logger = logging.getLogger("octavo")

# NVLink multicast (NVLS) can take a shared host's GPUs out of service: never turned on here.
_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
             # On a collective timeout: abort the communicators and raise, instead of killing the
             # process (the engine reports the error; the server's /health goes red).
             "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def collective_timeout_s() -> float:
    """How long a collective (or a worker's reply) may wait for a peer: OCTAVO_TP_TIMEOUT_S, 600 s."""
    return float(os.environ.get("OCTAVO_TP_TIMEOUT_S", "600"))


LOAD_TIMEOUT_S = 3600.0  # a worker building its shard (reading a checkpoint) before it answers


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker process exited or failed: the engine cannot compute any more."""


# ---- the group as the layers see it ---------------------------------------------------------
@dataclass(frozen=True)
class TPGroup:
    """This process's place in one tensor-parallel group. Ranks of a group are always the global
    ranks 0..size-1 (rank 0 is the engine process)."""

    rank: int = 0
    size: int = 1
    group: Any = None  # torch ProcessGroup; None is the default (world) group
    one_shot: Any = None  # a SymmetricAllReduce for small CUDA tensors, where built (symm_all_reduce.py)

    def all_reduce(self, x: torch.Tensor, first_of_forward: bool = False) -> torch.Tensor:
        """The sum over the group (a no-op at size 1). Use the result: x itself holds it after
        NCCL or gloo, a new tensor does after the one-shot path. first_of_forward: the forward's
        first collective (the embedding's), where the one-shot path restarts its slots."""
        if self.size > 1:
            if self.one_shot is not None and self.one_shot.fits(x):
                return self.one_shot.all_reduce(x, first_of_forward)
            dist.all_reduce(x, group=self.group)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0 gets every rank's x concatenated along the last dimension; the other ranks get
        their own x back (and must not use it as the whole)."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=0, group=self.group)
        return torch.cat(parts, dim=-1) if parts is not None else x


SINGLE = TPGroup()
_BUILDING: contextvars.ContextVar[TPGroup] = contextvars.ContextVar("octavo_tp_group", default=SINGLE)


def current_tp_group() -> TPGroup:
    """The group the layers being constructed belong to (see `building_with`)."""
    return _BUILDING.get()


@contextlib.contextmanager
def building_with(group: TPGroup):
    """Layers constructed inside take their shard of `group` (model constructors keep their
    signature: the group travels in this context)."""
    token = _BUILDING.set(group)
    try:
        yield
    finally:
        _BUILDING.reset(token)


# ---- what a model runner needs to be one rank of a group -------------------------------------
@dataclass
class RunnerParallel:
    """A model runner's TP group and, on rank 0 of a group larger than one, the workers its calls
    are mirrored to (`role` names the runner on the workers: "target" or "draft")."""

    group: TPGroup = SINGLE
    role: str = "target"
    workers: "WorkerGroup | None" = None

    @property
    def mirrored(self) -> bool:
        return self.workers is not None and self.group.size > 1

    def call(self, method: str, *args: Any) -> None:
        """Have the other ranks of this group run `method(*args)` on their shard of this runner."""
        if self.mirrored:
            self.workers.send(self.role, method, args, ranks=range(1, self.group.size))

    def replies(self) -> list[Any]:
        """The other ranks' results of the last call that returns one, in rank order."""
        return self.workers.collect(range(1, self.group.size)) if self.mirrored else []

    def raise_if_failed(self, cause: BaseException | None = None) -> None:
        if self.workers is not None:
            self.workers.raise_if_failed(cause)


_RUNNER_SCOPE: contextvars.ContextVar[RunnerParallel | None] = contextvars.ContextVar(
    "octavo_runner_parallel", default=None)


def current_runner_parallel() -> RunnerParallel:
    """The parallel setup a ModelRunner built now takes when none is passed: one rank, unless
    inside `runner_scope` (how the engine hands a draft runner its own TP group)."""
    return _RUNNER_SCOPE.get() or RunnerParallel()


@contextlib.contextmanager
def runner_scope(parallel: RunnerParallel | None):
    token = _RUNNER_SCOPE.set(parallel)
    try:
        yield
    finally:
        _RUNNER_SCOPE.reset(token)


# ---- process groups ---------------------------------------------------------------------------
@dataclass
class RunnerSpec:
    """A model runner every rank of its group builds a shard of."""

    role: str
    model_config: Any
    cache_config: Any
    scheduler_config: Any
    enforce_eager: bool
    tp_size: int
    piecewise_cuda_graphs: bool = False


@contextlib.contextmanager
def _main_module_hidden():
    """A spawned child re-runs the parent's __main__ script before its target. Workers need nothing
    from it, and a script that builds an engine at top level (no `if __name__ == "__main__"`) would
    build another in every worker: hide the script while the child starts."""
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main and name in main.__dict__}
    for name in saved:
        setattr(main, name, None) if name == "__spec__" else delattr(main, name)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group(rank: int, world_size: int, init_method: str, device_type: str) -> None:
    for key, value in _SAFE_ENV.items():
        os.environ.setdefault(key, value)
    timeout = datetime.timedelta(seconds=collective_timeout_s())
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timeout, device_id=torch.device("cuda", rank))
    else:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)


def _groups(specs: list[RunnerSpec], rank: int, world_size: int, device_type: str) -> dict[str, TPGroup]:
    """Each runner's TPGroup on this rank. new_group is collective: every rank calls it for every
    size in the same order, members or not; so is the symmetric buffer of a group's one-shot
    all-reduce, built by its members in the same order."""
    from octavo.runtime import symm_all_reduce

    handles: dict[int, Any] = {world_size: None}
    for size in sorted({s.tp_size for s in specs if 1 < s.tp_size < world_size}):
        handles[size] = dist.new_group(ranks=list(range(size)))
    one_shot = {}
    for size in sorted({s.tp_size for s in specs}):
        if rank < size and symm_all_reduce.wanted(device_type, size):
            device = torch.device("cuda", rank)
            one_shot[size] = symm_all_reduce.SymmetricAllReduce(handles[size], device)
    groups = {}
    for spec in specs:
        if spec.tp_size == 1:
            groups[spec.role] = SINGLE
        elif rank < spec.tp_size:
            groups[spec.role] = TPGroup(rank, spec.tp_size, handles[spec.tp_size], one_shot.get(spec.tp_size))
    return groups


def runner_specs(config: "EngineConfig") -> list[RunnerSpec]:
    specs = [RunnerSpec("target", config.model_config, config.cache_config, config.scheduler_config,
                        config.enforce_eager, config.parallel_config.tensor_parallel_size,
                        config.piecewise_cuda_graphs)]
    spec = config.speculative_config
    if spec is not None and spec.draft_tensor_parallel_size > 1:
        specs.append(RunnerSpec("draft", spec.draft_model_config, config.cache_config, config.scheduler_config,
                                config.enforce_eager, spec.draft_tensor_parallel_size, config.piecewise_cuda_graphs))
    return specs


# ---- rank 0's side ----------------------------------------------------------------------------
class WorkerGroup:
    """Ranks 1..N-1 as seen from rank 0: their processes, a pipe to each, and a watchdog."""

    def __init__(self, config: "EngineConfig", runner_class: type) -> None:
        world_size = config.parallel_config.tensor_parallel_size
        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialized in this process: one tensor-parallel "
                               "engine per process (call LLMEngine.shutdown() on the previous one first)")
        self.world_size = world_size
        self.device_type = config.device.type
        self.specs = runner_specs(config)
        self.failure: str | None = None
        self.closed = False
        self._lock = threading.Lock()
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = multiprocessing.get_context("spawn")
        self.processes: list[Any] = [None]  # index = rank; rank 0 is this process
        self.conns: list[Any] = [None]
        for rank in range(1, world_size):
            parent, child = ctx.Pipe(duplex=True)
            process = ctx.Process(target=worker_main, name=f"octavo-tp{rank}", daemon=True,
                                  args=(rank, world_size, init_method, self.device_type, self.specs, runner_class,
                                        child, os.getpid()))
            with _main_module_hidden():
                process.start()
            child.close()
            self.processes.append(process)
            self.conns.append(parent)
        self._stop_r, self._stop_w = multiprocessing.Pipe(duplex=False)
        # Dropping the engine without shutdown() still stops the workers and frees the group.
        self._finalizer = weakref.finalize(self, _release, self.processes[1:], self.conns[1:], self._stop_w,
                                           self.device_type)
        try:
            self.collect(range(1, world_size), timeout=collective_timeout_s())  # each has imported and is ready
            _init_process_group(0, world_size, init_method, self.device_type)
            self.groups = _groups(self.specs, 0, world_size, self.device_type)
        except BaseException:
            self._finalizer()
            raise
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.processes) if rank}
        self._watchdog = threading.Thread(target=_watch, args=(weakref.ref(self), sentinels, self._stop_r),
                                          name="octavo-tp-watchdog", daemon=True)
        self._watchdog.start()
        logger.info("tensor parallel: %d ranks (%s), workers %s", world_size,
                    "nccl" if self.device_type == "cuda" else "gloo", [p.pid for p in self.processes[1:]])

    def parallel(self, role: str) -> RunnerParallel | None:
        """Rank 0's RunnerParallel for the runner of this role (None: it runs on rank 0 alone)."""
        group = self.groups.get(role)
        if group is None or group.size == 1:
            return None
        return RunnerParallel(group=group, role=role, workers=self)

    # ---- messages --------------------------------------------------------------------------
    def send(self, role: str, method: str, args: tuple, ranks: range) -> None:
        self.raise_if_failed()
        blob = pickle.dumps((role, method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for rank in ranks:
            try:
                self.conns[rank].send_bytes(blob)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError) as exc:
                self.raise_if_failed(exc)
                raise

    def collect(self, ranks: range, timeout: float | None = None) -> list[Any]:
        """One reply from each rank, failing as soon as one of them dies."""
        timeout = collective_timeout_s() if timeout is None else timeout
        replies = []
        for rank in ranks:
            conn, process = self.conns[rank], self.processes[rank]
            deadline = time.monotonic() + timeout
            while True:
                ready = multiprocessing.connection.wait([conn, process.sentinel],
                                                        timeout=max(0.0, deadline - time.monotonic()))
                if conn in ready:
                    try:
                        with self._lock:
                            kind, value = conn.recv()
                    except (EOFError, OSError):
                        self._worker_died(rank)
                        continue
                    if kind == "error":
                        self._record(f"tensor-parallel worker rank {rank} (pid {process.pid}) failed:\n{value}")
                        self.raise_if_failed()
                    replies.append(value)
                    break
                if process.sentinel in ready:
                    self._worker_died(rank)
                if not ready:
                    self._record(f"tensor-parallel worker rank {rank} (pid {process.pid}) did not answer "
                                 f"within {timeout:.0f} s (OCTAVO_TP_TIMEOUT_S)")
                    self.raise_if_failed()
        return replies

    # ---- failures --------------------------------------------------------------------------
    def _record(self, message: str) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = message
                logger.error("%s", message)

    def _worker_died(self, rank: int) -> None:
        process, conn = self.processes[rank], self.conns[rank]
        process.join(timeout=1.0)
        detail = ""
        try:  # a worker that caught its own error sent the traceback before exiting
            if self._lock.acquire(timeout=1.0):
                try:
                    while conn.poll():
                        kind, value = conn.recv()
                        if kind == "error":
                            detail = f":\n{value}"
                finally:
                    self._lock.release()
        except (EOFError, OSError):
            pass
        self._record(f"tensor-parallel worker rank {rank} (pid {process.pid}) exited with code "
                     f"{process.exitcode}{detail}")
        self.raise_if_failed()

    def raise_if_failed(self, cause: BaseException | None = None) -> None:
        """Raise WorkerDiedError if a worker has died. Given the error a collective raised, first
        wait briefly for a death to explain it (the socket can close before the sentinel fires)."""
        if self.failure is None and cause is not None and not self.closed:
            sentinels = {p.sentinel: rank for rank, p in enumerate(self.processes) if rank}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=5.0)
            for sentinel in ready:
                with contextlib.suppress(WorkerDiedError):
                    self._worker_died(sentinels[sentinel])
        if self.failure is not None:
            raise WorkerDiedError(f"{self.failure}\nthe engine cannot continue: restart it") from cause

    def on_worker_exit(self, ranks: list[int]) -> None:
        """The watchdog saw these workers exit while the engine was running."""
        for rank in ranks:
            with contextlib.suppress(WorkerDiedError):
                self._worker_died(rank)
        self._abort()

    def _abort(self) -> None:
        """Unblock a rank-0 wait on the dead peer. NCCL kernels wait forever on a dead peer until
        the communicator is aborted; gloo fails by itself when the peer's socket closes."""
        if self.device_type != "cuda":
            return
        try:
            dist.distributed_c10d._abort_process_group()
        except Exception as exc:  # noqa: BLE001 - best effort: the error is already recorded
            logger.warning("could not abort the NCCL communicators: %s", exc)

    # ---- shutdown --------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        if self.closed:
            return
        self.closed = True
        if self.failure is None:
            blob = pickle.dumps(("", "shutdown", ()))
            for conn in self.conns[1:]:
                with contextlib.suppress(Exception):
                    conn.send_bytes(blob)
            deadline = time.monotonic() + timeout
            for process in self.processes[1:]:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
        self._finalizer()


def _watch(ref: "weakref.ref[WorkerGroup]", sentinels: dict[Any, int], stop: Any) -> None:
    """Rank 0's watchdog thread: wakes when a worker exits (or at shutdown). It holds the group
    weakly, so a dropped engine can still be collected."""
    ready = multiprocessing.connection.wait(list(sentinels) + [stop])
    group = ref()
    if group is None or group.closed or stop in ready:
        return
    group.on_worker_exit([sentinels[s] for s in ready])


def _leave_process_group(device_type: str) -> None:
    """NCCL: abort rather than destroy; destroy waits for peers that may already have gone. Both
    hang (2x H200) while CUDA graphs that captured the group's collectives are alive
    (pytorch/pytorch#115388): callers drop their graphs first. gloo: destroy."""
    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):
        if device_type == "cuda":
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()


def _release(processes: list[Any], conns: list[Any], stop: Any, device_type: str = "cpu") -> None:
    """Stop the workers that are left, end the watchdog, leave the process group."""
    with contextlib.suppress(Exception):
        stop.send(None)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5.0)
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()
    _leave_process_group(device_type)


def launch_workers(config: "EngineConfig", runner_class: type) -> WorkerGroup | None:
    """Start ranks 1..N-1 and join the process group as rank 0 (None at tensor_parallel_size 1).
    Each worker builds its shards as `runner_class` (the ModelRunner: passed in, so that this
    module, which the runner imports, does not import it back)."""
    if config.parallel_config.tensor_parallel_size == 1:
        return None
    return WorkerGroup(config, runner_class)


# ---- a worker's side --------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Exit when the engine process is gone (a worker blocked in NCCL would otherwise stay)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(3)


def worker_main(rank: int, world_size: int, init_method: str, device_type: str, specs: list[RunnerSpec],
                runner_class: type, conn: Any, parent_pid: int) -> None:
    """Rank `rank`: build a shard of every runner whose group holds this rank, then run what rank
    0 sends until it says shutdown (or goes away)."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        if device_type != "cuda":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        conn.send(("ready", os.getpid()))
        _init_process_group(rank, world_size, init_method, device_type)
        groups = _groups(specs, rank, world_size, device_type)
        device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
        runners = {}
        for spec in specs:
            group = groups.get(spec.role)
            if group is not None:
                runners[spec.role] = runner_class(spec.model_config, spec.cache_config, spec.scheduler_config, device,
                                                 enforce_eager=spec.enforce_eager,
                                                 parallel=RunnerParallel(group=group, role=spec.role),
                                                 piecewise_cuda_graphs=spec.piecewise_cuda_graphs)
        while True:
            role, method, args = pickle.loads(conn.recv_bytes())
            if method == "shutdown":
                break
            if method == "ping":
                conn.send(("ok", None))
                continue
            result = getattr(runners[role], WORKER_METHODS[method])(*args)
            if method in REPLYING_METHODS:
                conn.send(("ok", result))
    except (EOFError, ConnectionResetError, BrokenPipeError):
        os._exit(2)  # the engine went away: nothing to report to
    except BaseException:  # noqa: BLE001 - rank 0 must hear why, then sees the exit
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
        os._exit(1)
    for runner in runners.values():
        runner.release_cuda_graphs()  # graphs holding NCCL work make the group's teardown hang
    _leave_process_group(device_type)


# Messages rank 0 sends -> the ModelRunner method a worker runs for each. Only these are accepted.
WORKER_METHODS = {
    "determine_num_blocks": "determine_num_blocks_for",
    "allocate_kv_cache": "allocate_kv_cache",
    "capture_cuda_graphs": "capture_cuda_graphs",
    "run_shard": "run_shard",
    "time_all_reduce": "time_all_reduce",
}
REPLYING_METHODS = {"determine_num_blocks"}


def ping(parallel: RunnerParallel) -> None:
    """Wait until every other rank of the group has built its shard (before the first collective,
    so a slow load never counts against the collective timeout)."""
    if parallel.mirrored:
        parallel.workers.send(parallel.role, "ping", (), ranks=range(1, parallel.group.size))
        parallel.workers.collect(range(1, parallel.group.size), timeout=LOAD_TIMEOUT_S)


__all__ = ["TPGroup", "SINGLE", "RunnerParallel", "WorkerGroup", "WorkerDiedError", "building_with",
           "current_tp_group", "current_runner_parallel", "runner_scope", "launch_workers"]
