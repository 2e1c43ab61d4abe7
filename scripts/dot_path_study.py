"""Offline sm_90 study for the 4-bit dot path (M = 2..16): SASS instructions a weight of three designs.

    python scripts/dot_path_study.py          # triton 3.6 (the GPU machine's) for the numbers in the notes

The first dot path (`scripts/sass_count.py int4-dot --block-n 64 --block-k 256 --stages 3`: 5.88 a
weight; since the pair dots of `kernels/quant_pairs.py`, which grew out of this study, only fp32
activations and int4 groups of 32 take it) dequantizes all eight slots to (q - z) * s in fp32, joins
them into one tile and converts it to the dot operand layout through shared memory. The designs here
keep each slot's operand elementwise in the loaded words (one `tl.dot` a slot), which lets Triton move
the layout conversion onto the packed words (cp.async into shared memory, then register loads) and
dequantize in the operand layout:

* `k_slots`: codes as bf16 128 + q (OR into 0x4300), no scale or zero: the floor of the idea;
* `k_group`: one group an iteration, scale and zero applied to the group's sums (x sums in the kernel);
  with ZERO_IN_BF16 (printed as `k_group_z`) the zero is subtracted in bf16 instead ((128 + q) -
  (128 + z) = q - z, exact) and only the scale is applied to the sums.

Study kernels only: slot S sits at bits 4S (not `quant_packing`'s order) and x columns are not the
layout's, which changes no instruction count. Nothing here is wired into the engine.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_count import _loop_body, compile_sm90  # noqa: E402


@triton.jit
def k_slots(x_ptr, q_ptr, out_ptr, K, N, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWAP: tl.constexpr,
            NS: tl.constexpr):
    """8 dots a tile, one per slot: the operand of slot S is elementwise in the words. SWAP: W as the
    dot's first operand ([BN, 16] result, wgmma), else x first ([16, BN], mma.sync)."""
    W: tl.constexpr = BLOCK_K // 8
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = tl.arange(0, W)
    rm = tl.arange(0, 16)
    if SWAP:
        acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    else:
        acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=NS):
        w = tl.load(q_ptr + rn[:, None] * (K // 8) + k // 8 + rw[None, :])  # [BN, W] int32
        for S in tl.static_range(8):
            bits = ((w >> (4 * S)) & 0xF) | 0x4300
            f = bits.to(tl.int16).to(tl.bfloat16, bitcast=True)  # 128 + q
            xs = tl.load(x_ptr + rm[:, None] * K + k + S * W + rw[None, :])  # [16, W] bf16
            if SWAP:
                acc = tl.dot(f, tl.trans(xs), acc)
            else:
                acc = tl.dot(xs, tl.trans(f), acc)
    if SWAP:
        tl.store(out_ptr + rn[:, None] * 16 + rm[None, :], acc)
    else:
        tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc)


def count(fn, sig, cx, warps, stages, weights):
    """Compiles for sm_90 and prints registers and the longest loop's instructions a weight."""
    sass, regs, _, k = compile_sm90(fn, sig, cx, warps, stages, divisible=("K", "N"))
    c = collections.Counter(op.split(".")[0] for op in _loop_body(sass))
    ttgir = k.asm["ttgir"]
    mma = "wgmma" if "warp_group_dot" in ttgir else ("mma" if "nvidia_mma" in ttgir else "?")
    print(f"{cx} w{warps} s{stages}: regs {regs}, {sum(c.values())} instrs / {weights:.0f} weights = "
          f"{sum(c.values()) / weights:.2f}  [{mma}]  " + ", ".join(f"{o} {n}" for o, n in c.most_common(12)), flush=True)


@triton.jit
def k_group(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, K, N, BLOCK_N: tl.constexpr, NS: tl.constexpr,
            ZERO_IN_BF16: tl.constexpr):
    """One group (128) an iteration, 8 slot dots on 128 + q into the group's fp32 sums, scaled after.
    ZERO_IN_BF16: the operand is (128 + q) - (128 + z) = q - z (exact); else the sums lose (128 + z) x
    the group's x sums, computed here."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, 16)
    rm = tl.arange(0, 16)
    acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    for k in tl.range(0, K, 128, num_stages=NS):
        w = tl.load(q_ptr + rn[:, None] * (K // 8) + k // 8 + rj[None, :])
        g = k // 128
        s = tl.load(s_ptr + g * N + rn).to(tl.float32)
        z = tl.load(z_ptr + g * N + rn).to(tl.float32) + 128.0
        zb = z.to(tl.bfloat16)[:, None]
        tmp = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
        xsum = tl.zeros([16], dtype=tl.float32)
        for S in tl.static_range(8):
            f = (((w >> (4 * S)) & 0xF) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
            if ZERO_IN_BF16:
                f = f - zb
            xs = tl.load(x_ptr + rm[:, None] * K + k + S * 16 + rj[None, :])
            tmp = tl.dot(f, tl.trans(xs), tmp)
            if not ZERO_IN_BF16:
                xsum += tl.sum(xs.to(tl.float32), axis=1)
        if ZERO_IN_BF16:
            acc += s[:, None] * tmp
        else:
            acc += s[:, None] * (tmp - z[:, None] * xsum[None, :])
    tl.store(out_ptr + rn[:, None] * 16 + rm[None, :], acc)


def main() -> None:
    words = {"x_ptr": "*bf16", "q_ptr": "*i32", "out_ptr": "*fp32"}
    grouped = {**words, "s_ptr": "*fp16", "z_ptr": "*fp16"}
    print(f"triton {triton.__version__}; loop instructions a weight, sm_90")
    print("-- k_slots (bn, bk, warps, stages)")
    for swap, bn, bk, w, st in [(False, 64, 256, 4, 3), (True, 64, 256, 4, 3), (True, 128, 256, 4, 3),
                                (False, 64, 128, 4, 3), (True, 64, 128, 4, 2)]:
        count(k_slots, words, {"BLOCK_N": bn, "BLOCK_K": bk, "SWAP": swap, "NS": st}, w, st, bn * bk / (32 * w))
    for zero_in_bf16 in (False, True):
        print(f"-- k_group{'_z' if zero_in_bf16 else ''}")
        for bn, w, st in [(64, 4, 3), (128, 4, 3), (128, 8, 3), (64, 4, 2)]:
            count(k_group, grouped, {"BLOCK_N": bn, "NS": st, "ZERO_IN_BF16": zero_in_bf16}, w, st, bn * 128 / (32 * w))


if __name__ == "__main__":
    main()
