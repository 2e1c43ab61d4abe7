"""Offline sm_90 compile of a quantized GEMV kernel: registers, stack, and SASS instructions a weight.

    python scripts/sass_count.py int4-m1                      # the persistent int4 kernel, table config
    python scripts/sass_count.py int4-m1 --half2              # ... with the packed fp16x2 loop
    python scripts/sass_count.py int4-m1 --half2 --tl-loads   # ... scales by tl.load, as before row_params
    python scripts/sass_count.py nf4-m1 --block-n 8 --warps 4
    python scripts/sass_count.py w8 --fp8                      # the 8-bit M = 1 FMA path
    python scripts/sass_count.py int4-dot --block-n 64 --block-k 256 --stages 3
    python scripts/sass_count.py int4-k --block-n 8 --block-k 2048   # the K loop (the down projection's)
    python scripts/sass_count.py nf4-k --block-n 8 --block-k 4096 --warps 4   # NF4's K loop
    python scripts/sass_count.py int4-pairs --block-n 64 --block-k 128 --stages 3    # the M > 1 pair dots
    python scripts/sass_count.py nf4-pairs --block-n 64 --block-k 128 --stages 3

No GPU needed: Triton compiles for `GPUTarget("cuda", 90, 32)` and its bundled cuobjdump lists the
SASS. The count is the longest backward-branch loop's body over the weights one thread handles per
iteration. The figures in benchmarks/quant_h200_notes.md come from triton 3.6 (the GPU machine's);
other versions compile differently (`pip install triton==3.6.0` into a venv for the same numbers).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.6's default, explicit (3.9 warns without it)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_INST = re.compile(r"\s*/\*([0-9a-f]{4})\*/\s+(?:@!?U?P\w+\s+)?(([A-Z][A-Z0-9_]*)[.\w]*)\s*([^;]*)")
# the RMSNorm neighbours' buffers (`--norm`, `--residual`)
_FUSED = {"ss_in_ptr": "*fp32", "res_ptr": "*bf16", "ss_out_ptr": "*fp32", "nw_out_ptr": "*bf16", "scaled_ptr": "*bf16"}
_4BIT = {"x_ptr": "*bf16", "q_ptr": "*i32", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}


def _kernel(name: str, a: argparse.Namespace):
    """(jit function, pointer types, constexprs, weights one thread handles per loop iteration)."""
    threads = 32 * a.warps
    if name == "int4-m1":
        from floorline.kernels.quant_int4 import _int4_gemv_m1_kernel as fn

        cx = dict(BLOCK_N=a.block_n, BLOCK_K=a.block_k, GROUP=128, EVEN_K=True, SPLIT=False,
                  X_SILU_MUL=a.silu, PREFETCH=a.prefetch, HALF2=a.half2, EMULATE=False, USE_PDL=False,
                  ROW_PARAMS=not a.tl_loads, X_PRESCALED=a.norm, ADD_RESIDUAL=a.residual, SCALE_OUT=a.residual,
                  SS_BLOCK=1024)
        params = {"s_ptr": "*fp16", "z_ptr": "*fp16"} if a.tl_loads else {"s_ptr": "*i32", "z_ptr": "*fp16"}
        return fn, {**_4BIT, **params, **_FUSED}, cx, a.block_n * a.block_k / threads
    if name == "nf4-m1":
        from floorline.kernels.quant_nf4 import _nf4_gemv_m1_kernel as fn

        ptrs = {**_4BIT, "a_ptr": "*u8", "nabs_ptr": "*fp32", "nmap_ptr": "*fp32", "base_ptr": "*i32",
                "off_ptr": "*fp32", "map_ptr": "*i32", "code_ptr": "*fp32", **_FUSED}
        cx = dict(BLOCK_N=a.block_n, BLOCK_K=a.block_k, EVEN_K=True, SPLIT=False, NESTED=True,
                  LOOKUP=2, X_SILU_MUL=a.silu, PREFETCH=a.prefetch, HALF2=a.half2, USE_PDL=False,
                  ASM_LOADS=not a.tl_loads, X_PRESCALED=a.norm, ADD_RESIDUAL=a.residual, SCALE_OUT=a.residual,
                  SS_BLOCK=1024)
        return fn, ptrs, cx, a.block_n * a.block_k / threads
    if name == "nf4-k":
        from floorline.kernels.quant_nf4 import _nf4_gemv_kernel as fn

        ptrs = {**_4BIT, "a_ptr": "*u8", "nabs_ptr": "*fp32", "nmap_ptr": "*fp32", "base_ptr": "*i32",
                "off_ptr": "*fp32", "map_ptr": "*i32", "code_ptr": "*fp32", **_FUSED}
        cx = dict(BLOCK_M=1, BLOCK_N=a.block_n, BLOCK_K=a.block_k, NUM_STAGES=a.stages, USE_DOT=False, EVEN_K=True,
                  SPLIT=False, DOT_IEEE=False, NESTED=True, LOOKUP=2, USE_PDL=False, ADD_RESIDUAL=a.residual,
                  SCALE_OUT=a.residual)
        return fn, ptrs, cx, a.block_n * a.block_k / threads
    if name == "int4-pairs":
        from floorline.kernels.quant_pairs import _int4_pairs_kernel as fn

        cx = dict(BLOCK_M=16, BLOCK_N=a.block_n, BLOCK_K=a.block_k, GROUP=128, NUM_STAGES=a.stages, EVEN_K=True,
                  SPLIT=False, FP16=False, EMULATE=False, USE_PDL=False)
        ptrs = {**_4BIT, "q_ptr": "*i16", "s_ptr": "*fp16", "z_ptr": "*fp16"}
        return fn, ptrs, cx, a.block_n * a.block_k / threads
    if name == "nf4-pairs":
        from floorline.kernels.quant_pairs import _nf4_pairs_kernel as fn

        cx = dict(BLOCK_M=16, BLOCK_N=a.block_n, BLOCK_K=a.block_k, NUM_STAGES=a.stages, EVEN_K=True, SPLIT=False,
                  FP16=False, NESTED=True, EMULATE=False, USE_PDL=False)
        ptrs = {**_4BIT, "q_ptr": "*i16", "a_ptr": "*u8", "nabs_ptr": "*fp32", "nmap_ptr": "*fp32", "base_ptr": "*i32",
                "off_ptr": "*fp32", "map_ptr": "*i32", "code_ptr": "*fp32"}
        return fn, ptrs, cx, a.block_n * a.block_k / threads
    if name in ("int4-dot", "int4-k"):
        from floorline.kernels.quant_int4 import _int4_gemv_kernel as fn

        dot = name == "int4-dot"
        cx = dict(BLOCK_M=16 if dot else 1, BLOCK_N=a.block_n, BLOCK_K=a.block_k, GROUP=128, NUM_STAGES=a.stages,
                  USE_DOT=dot, EVEN_K=True, SPLIT=False, DOT_IEEE=False, USE_PDL=False,
                  HALF2=a.half2 and not dot and a.stages == 1, EMULATE=False, ADD_RESIDUAL=a.residual,
                  SCALE_OUT=a.residual)
        xs = {"x_ptr": "*i32"} if cx["HALF2"] else {}  # the fp16x2 loop reads `quant_x_pairs`' pairs
        ptrs = {**_4BIT, **xs, "meta_ptr": "*fp32", "s_ptr": "*fp16", "z_ptr": "*fp16", **_FUSED}
        return fn, ptrs, cx, a.block_n * a.block_k / threads
    from floorline.kernels.quant_w8 import _w8_gemv_kernel as fn

    cx = dict(BLOCK_M=1, BLOCK_N=a.block_n, BLOCK_K=a.block_k, NUM_STAGES=a.stages, USE_DOT=False, EVEN_K=True,
              SPLIT=False, DOT_IEEE=False, FP8=a.fp8, FP16_X=False, USE_PDL=False, EARLY_LAUNCH=False,
              X_PRESCALED=a.norm, ADD_RESIDUAL=a.residual, SCALE_OUT=a.residual, SS_BLOCK=256)
    ptrs = {"x_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*fp32", "out_ptr": "*bf16", "ws_ptr": "*fp32",
            "cnt_ptr": "*i32", **_FUSED}
    return fn, ptrs, cx, a.block_n * a.block_k / threads


def _loop_body(sass: str) -> list[str]:
    """The opcodes (with modifiers) of the longest loop closed by a backward branch, in order."""
    # (address, opcode with modifiers, opcode, operands)
    insts = [(int(m.group(1), 16), m.group(2), m.group(3), m.group(4)) for m in map(_INST.match, sass.splitlines())
             if m]
    best: list[str] = []
    for addr, _, op, args in insts:
        target = re.search(r"0x([0-9a-f]+)", args) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            body = [full for a, full, _, _ in insts if int(target.group(1), 16) <= a <= addr]
            best = max(best, body, key=len)
    return best


def compile_sm90(fn, ptrs: dict[str, str], constexprs: dict, warps: int, stages: int,
                 divisible: tuple[str, ...] = ("K", "Kp", "N", "stride_qn", "stride_qn16", "stride_wn", "stride_xm")):
    """(SASS text, registers, stack bytes, the compiled kernel) of `fn` compiled for sm_90: `ptrs` types the
    pointer arguments (other non-constexpr arguments are i32), which with the `divisible` integers are
    16-aligned."""
    names = fn.arg_names
    sig = {n: "constexpr" if n in constexprs else ptrs.get(n, "i32") for n in names}
    div16 = [n for n in names if n in ptrs or n in divisible]
    src = ASTSource(fn, sig, {(names.index(n),): v for n, v in constexprs.items()},
                    {(names.index(n),): [["tt.divisibility", 16]] for n in div16})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        res = subprocess.run([str(tools / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                             check=True).stdout
    return sass, int(re.search(r"REG:(\d+)", res).group(1)), int(re.search(r"STACK:(\d+)", res).group(1)), k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kernel", choices=("int4-m1", "nf4-m1", "int4-dot", "int4-k", "nf4-k", "int4-pairs", "nf4-pairs", "w8"))
    p.add_argument("--block-n", type=int, default=None, help="rows a tile (default: 4, or 16 for w8)")
    p.add_argument("--block-k", type=int, default=None, help="weights a tile along K (default: 4096, or 512 for w8)")
    p.add_argument("--warps", type=int, default=None, help="default: 2, or 4 for w8 and int4-dot")
    p.add_argument("--stages", type=int, default=None, help="default: 1, or 4 for w8")
    p.add_argument("--prefetch", action="store_true")
    p.add_argument("--silu", action="store_true", help="x is gate | up (persistent kernels)")
    p.add_argument("--fp8", action="store_true", help="w8: fp8 instead of int8")
    p.add_argument("--norm", action="store_true", help="w8, int4-m1, nf4-m1: x prescaled by its producer, 1/rms after the loop")
    p.add_argument("--residual", action="store_true", help="w8 and the 4-bit M = 1 kernels: the residual add and the next norm's weight in the epilogue")
    p.add_argument("--half2", action="store_true", help="persistent kernels: the packed fp16x2 loop")
    p.add_argument("--tl-loads", action="store_true",
                   help="persistent kernels: scales by tl.load (int4: from [groups, N]) instead of the PTX loads")
    a = p.parse_args(argv)
    w8, dot = a.kernel == "w8", a.kernel in ("int4-dot", "int4-pairs", "nf4-pairs")
    a.block_n = a.block_n or (16 if w8 else 4)
    a.block_k = a.block_k or (512 if w8 else 4096)
    a.warps = a.warps or (4 if w8 or dot else 2)
    a.stages = a.stages or (4 if w8 else 1)
    fn, ptrs, cx, weights = _kernel(a.kernel, a)
    sass, regs, stack, _ = compile_sm90(fn, ptrs, cx, a.warps, a.stages)
    ops = _loop_body(sass)
    body = collections.Counter(op.split(".")[0] for op in ops)
    total = len(ops)
    print(f"triton {triton.__version__} | {a.kernel} {cx} warps {a.warps}")
    print(f"registers {regs}, stack {stack} B | loop body {total} instructions for {weights:.0f} weights a thread:"
          f" {total / weights:.2f} a weight")
    print("  " + ", ".join(f"{op} {n}" for op, n in body.most_common(14)))
    # spread-out loads leave few in flight: where a tile's 16-byte loads sit shows how many overlap
    print("  16-byte loads at loop positions", [i for i, op in enumerate(ops) if op.startswith("LDG") and ".128" in op])
    return 0


if __name__ == "__main__":
    sys.exit(main())
