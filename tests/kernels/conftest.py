"""The Triton kernels on the CPU, through Triton's interpreter, in a child pytest process.

Triton picks compiling or interpreting when a `@triton.jit` function is decorated, its own
library functions (tl.sum, tl.cdiv, ...) included, so interpreting needs TRITON_INTERPRET=1 before
triton is first imported. Rather than depend on what other test folders imported first, the tests
selected in this folder run again in a child `pytest` with TRITON_INTERPRET=1 set from its start;
in this process each test only reports the child's outcome for it. Nothing leaks: the variable is
set in the child's environment alone.

To debug in one process: TRITON_INTERPRET=1 OCTAVO_KERNEL_TESTS_CHILD=1 pytest tests/kernels

On a GPU, OCTAVO_KERNEL_TESTS_DEVICE=cuda runs the same tests compiled on the device instead: the
child does not interpret, and every kernel call moves its tensor arguments to CUDA (views keep
their strides), runs there, and copies the results (and whatever the kernel wrote in place) back.

Every buffer the kernels allocate with torch.empty / empty_like is NaN-filled (integers: a large
sentinel), so an output element or partial result that a kernel forgets to write shows up.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNEL_DIR = ROOT / "octavo" / "kernels"
KERNEL_MODULES = ("attention", "cache", "norm", "rotary", "activation", "gemv")
IN_CHILD = os.environ.get("OCTAVO_KERNEL_TESTS_CHILD") == "1"
ON_CUDA = os.environ.get("OCTAVO_KERNEL_TESTS_DEVICE") == "cuda"


# ------------------------------------------------------------------------------------------
# Parent: run the selected kernel tests once in a child process, report each outcome.
# ------------------------------------------------------------------------------------------

_selected: list[pytest.Item] = []
_child: dict = {}


def pytest_collection_modifyitems(session, config, items):
    _selected.extend(item for item in items if HERE in Path(str(item.fspath)).parents)


def _run_child() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = {**os.environ, "OCTAVO_KERNEL_TESTS_CHILD": "1", **({} if ON_CUDA else {"TRITON_INTERPRET": "1"})}
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                f"--junitxml={report}", *[item.nodeid for item in _selected]]
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        outcomes = {}
        if report.exists():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                key = (case.get("classname", "").split(".")[-1], case.get("name"))
                outcome = ("passed", "")
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome = ("failed", (child.get("message") or "") + "\n" + (child.text or ""))
                    elif child.tag == "skipped":
                        outcome = ("skipped", child.get("message") or "")
                outcomes[key] = outcome
    return {"outcomes": outcomes, "log": proc.stdout[-6000:] + proc.stderr[-4000:]}


def pytest_pyfunc_call(pyfuncitem):
    if IN_CHILD:
        return None  # run the test here
    if not _child:
        _child.update(_run_child())
    key = (Path(str(pyfuncitem.fspath)).stem, pyfuncitem.name)
    outcome, detail = _child["outcomes"].get(key, ("missing", ""))
    if outcome == "passed":
        return True
    if outcome == "skipped":
        pytest.skip(detail)
    if outcome == "missing":
        pytest.fail(f"the interpreted child run has no result for {pyfuncitem.nodeid}:\n"
                    + _child["log"], pytrace=False)
    how = "on CUDA" if ON_CUDA else "under TRITON_INTERPRET=1"
    pytest.fail(f"failed {how} (child process):\n{detail}", pytrace=False)


# ------------------------------------------------------------------------------------------
# Child: the kernels, interpreted, with poisoned allocations.
# ------------------------------------------------------------------------------------------


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(2**30 if t.dtype.itemsize >= 4 else 127)


class _PoisoningTorch(types.ModuleType):
    """torch, except that fresh buffers come back poisoned."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return _poison(torch.empty(*args, **kwargs))

    @staticmethod
    def empty_like(*args, **kwargs):
        return _poison(torch.empty_like(*args, **kwargs))


def _load_interpreted(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_octavo_interpreted_{name}",
                                                  KERNEL_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.torch = _PoisoningTorch()
    return module


def _interpreter_dots_bfloat16() -> bool:
    """Whether tl.dot of bfloat16 operands is right in this Triton's interpreter."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(a_ptr, out_ptr):
        idx = tl.arange(0, 16)
        a = tl.load(a_ptr + idx[:, None] * 16 + idx[None, :])
        tl.store(out_ptr + idx[:, None] * 16 + idx[None, :], tl.dot(a, a))

    a = torch.eye(16, dtype=torch.bfloat16) * 2
    out = torch.zeros(16, 16)
    probe[(1,)](a, out)
    return torch.equal(out, torch.eye(16) * 4)


def _upcast_bfloat16_dots():
    """Some Triton releases' interpreter multiplies bfloat16 bit patterns as integers in tl.dot
    (seen in 3.9). Widen bfloat16 operands to float32 first, as the GPU's tensor cores do in
    effect (exact products, float32 sums). Returns the undo function, or None if this Triton's
    interpreter is laid out differently."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
        builder = interpreter.interpreter_builder
        original = builder.create_dot
        cast = builder.cast_impl
    except (ImportError, AttributeError):
        return None

    def create_dot(a, b, d, *args, **kwargs):
        if a.dtype == tl.bfloat16:
            a = cast(a, tl.float32)
        if b.dtype == tl.bfloat16:
            b = cast(b, tl.float32)
        return original(a, b, d, *args, **kwargs)

    builder.create_dot = create_dot
    return lambda: delattr(builder, "create_dot")


@pytest.fixture(scope="module")
def kernels():
    if not IN_CHILD:
        yield None  # the test body runs in the child, not here
        return
    undo = None
    try:
        if ON_CUDA:
            modules = {name: _OnCuda(_load_interpreted(name)) for name in KERNEL_MODULES}
            yield types.SimpleNamespace(**modules, relative_error=relative_error, tolerance=TOLERANCE,
                                        bfloat16_dot=True)
            return
        if not _interpreter_dots_bfloat16():
            undo = _upcast_bfloat16_dots()
        modules = {name: _load_interpreted(name) for name in KERNEL_MODULES}
        yield types.SimpleNamespace(**modules, relative_error=relative_error, tolerance=TOLERANCE,
                                    bfloat16_dot=_interpreter_dots_bfloat16())
    finally:
        if undo is not None:
            undo()


class _OnCuda:
    """A kernel module whose functions take the tests' CPU tensors: each call runs on CUDA on copies
    (a view is copied with its base, so its strides stay), then writes the copies back (the kernels
    write some arguments in place) and returns its results on the CPU."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def __getattr__(self, name):
        value = getattr(self._module, name)
        return self._wrap(value) if callable(value) and not isinstance(value, type) else value

    @staticmethod
    def _to_cuda(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t._base is None:
            return t.to("cuda")
        return t._base.to("cuda").as_strided(t.size(), t.stride(), t.storage_offset())

    @staticmethod
    def _to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.cpu()
        return type(value)(_OnCuda._to_cpu(v) for v in value) if isinstance(value, (tuple, list)) else value

    def _wrap(self, fn):
        def on_cuda(*args, **kwargs):
            moved = [self._to_cuda(a) for a in args]
            moved_kwargs = {k: self._to_cuda(v) for k, v in kwargs.items()}
            result = fn(*moved, **moved_kwargs)
            for original, copy in [*zip(args, moved), *((kwargs[k], moved_kwargs[k]) for k in kwargs)]:
                if isinstance(original, torch.Tensor):
                    original.copy_(copy.cpu())
            return self._to_cpu(result)
        return on_cuda


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has any non-finite element."""
    if not torch.isfinite(out).all():
        return float("inf")
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# The interpreter rounds float32 -> bfloat16 by truncation (the GPU rounds to nearest even), so
# bfloat16 results sit about one unit in the last place from the reference.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
