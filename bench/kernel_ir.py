"""What Triton makes of gemv.py's kernel for an H100, on a machine without a GPU.

    python bench/kernel_ir.py            # the bench's sweep at the llama-3.1-8b shapes, one row
    python bench/kernel_ir.py --rows 4   # the row sweep at four rows

Compiles for sm_90 (Triton's bundled ptxas) and reports, per variant: registers and spilled bytes
a thread, shared memory, layout conversions inside the K loop in Triton's IR and the barriers left
in the loop's PTX (a conversion that is not a register renaming is a round trip through shared
memory and a barrier every iteration), and the global loads in the PTX and how many of them are
16-byte vectors. Two performance bugs were found this way before any GPU ran the kernel (a
runtime `even` that kept the weight loads scalar, a 1-D load of x converted every iteration).
Timing still needs the GPU: `octavo bench kernels --parts gemv`. The Triton here may not be the
device's; the IR is indicative, not identical.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

POINTERS = ("x_ptr", "residual_ptr", "norm_w_ptr", "w_ptr", "bias_ptr", "out_ptr", "residual_out_ptr")
DIVISIBLE_INTS = ("N", "K", "stride_xm", "stride_rm", "stride_wn", "stride_om", "stride_rom")


def compile_gemv(rows: int, in_features: int, out_features: int, prologue: str | None, config: dict):
    """The kernel as the JIT would compile it for these shapes on an sm_90 device (bf16, every
    pointer and the shapes 16-divisible, as they are in the engine)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from octavo.kernels import gemv

    fn = gemv.gemv_kernel
    names = fn.arg_names
    signature = {}
    for name in names:
        if name in POINTERS:
            signature[name] = "*bf16"
        elif name == "eps":
            signature[name] = "fp32"
        elif name in DIVISIBLE_INTS or name == "M":
            signature[name] = "i32"
        else:
            signature[name] = "constexpr"
    code = {None: gemv.PROLOGUE_NONE, "norm": gemv.PROLOGUE_RMS_NORM, "silu": gemv.PROLOGUE_SILU_MUL}[prologue]
    constexprs = dict(PROLOGUE=code, HAS_RESIDUAL=prologue == "norm", HAS_BIAS=False,
                      BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
                      EVEN_N=out_features % config["BLOCK_N"] == 0, EVEN_K=in_features % config["BLOCK_K"] == 0,
                      NUM_STAGES=config["NUM_STAGES"],
                      X_ROW=gemv.loads_x_as_row(config, torch.empty(0, dtype=torch.bfloat16)))
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in POINTERS + DIVISIBLE_INTS}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config["num_warps"]})


def ptx_loop(ptx: str) -> str:
    """The PTX of the first inner loop (its header label to the branch back to it): a layout
    conversion that survives to here costs a shared-memory round trip and a barrier each time."""
    lines = ptx.splitlines()
    start = next((i for i, line in enumerate(lines) if "Inner Loop Header" in line), None)
    if start is None:
        return ""
    start = next(i for i in range(start, -1, -1) if lines[i].startswith("$L__BB"))  # the header's label
    label = lines[start].split(":")[0].strip()
    end = next((i for i in range(start + 1, len(lines)) if "bra" in lines[i] and label in lines[i]), len(lines))
    return "\n".join(lines[start:end + 1])


def summary(compiled) -> dict:
    import triton

    ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
    loop = ttgir[ttgir.find("scf.for"):]
    loop = loop[:loop.find("scf.yield")]
    body = ptx_loop(ptx)
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next((p for p in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas") if p.exists()), None)
    registers = spilled = None
    if ptxas is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "kernel.ptx"
            path.write_text(ptx)
            proc = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(path), "-o", str(path.with_suffix(".o"))],
                                  capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        if match := re.search(r"Used (\d+) registers", text):
            registers = int(match.group(1))
        if match := re.search(r"(\d+) bytes spill stores", text):
            spilled = int(match.group(1))
    return {"registers": registers, "spill_bytes": spilled, "shared_bytes": compiled.metadata.shared,
            "converts_in_loop": loop.count("convert_layout"), "barriers_in_loop": body.count("bar.sync"),
            "global_loads": ptx.count("ld.global"),
            "vector16_loads": len(re.findall(r"ld\.global[^\n]*\.v4\.b32", ptx)),
            "async_copies": ptx.count("cp.async")}


def main() -> int:
    from octavo.bench.kernels import GEMV_SHAPES, GEMV_SWEEP_ONE_ROW, GEMV_SWEEP_ROWS
    from octavo.kernels.gemv import gemv_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    sweep = GEMV_SWEEP_ONE_ROW if args.rows == 1 else GEMV_SWEEP_ROWS
    columns = ("registers", "spill_bytes", "shared_bytes", "converts_in_loop", "barriers_in_loop", "global_loads",
               "vector16_loads", "async_copies")
    print("| GEMM | config | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for name, in_features, out_features, prologue in GEMV_SHAPES:
        for choice in ({},) + tuple(sweep):
            config = gemv_config(args.rows, out_features, in_features, **choice)
            label = "default" if not choice else (f"n{choice['block_n']} k{choice['block_k']} "
                                                   f"w{choice['num_warps']} s{choice['num_stages']}")
            try:
                row = summary(compile_gemv(args.rows, in_features, out_features, prologue, config))
            except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a finding
                print(f"| {name} | {label} | {type(exc).__name__}: {str(exc)[:80]} |")
                continue
            print(f"| {name} | {label} | " + " | ".join(str(row[c]) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
