"""NF4 code lookups for the Triton kernels: CODE[q] for the 4-bit codes of packed words.

Three ways, chosen by the LOOKUP constexpr:

* "shfl" (GPU default): every lane holds CODE[lane % 16] in a register (`nf4_lane_table`, built once
  per program) and `shfl.sync.idx` reads the entry of the code's lane. The shuffle takes the lane
  from the low five bits of its operand, so the index is the word shifted to the slot, with no mask;
  one shuffle and at most one shift per weight, no memory traffic, the exact fp32 values.
* "gather": a load from the 16-entry table (one L1 line). The interpreter's path (it has no inline
  assembly); slow on the GPU (an L1 request per weight).
* "select": a select tree over the 16 constants (15 selects a weight), for comparison.
"""

from __future__ import annotations

import struct

import torch

from floorline.kernels.triton_compat import HAS_TRITON, tl, triton

# The NF4 code: the 16 fp32 values bitsandbytes stores as `quant_map` (normal quantiles, scaled to [-1, 1]).
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
LOOKUPS = ("gather", "select", "shfl")


def _bits(v: float) -> str:
    return hex(struct.unpack("<I", struct.pack("<f", v))[0])


def _half2_bits(v: float) -> str:
    """fp16 bits of v in both halves of a 32-bit word."""
    h = struct.unpack("<H", struct.pack("<e", v))[0]
    return hex(h | h << 16)


def _bf16x2_bits(v: float) -> str:
    """bf16 bits of v (rounded to nearest even) in both halves of a 32-bit word."""
    b = struct.unpack("<I", struct.pack("<f", v))[0]
    h = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return hex(h | h << 16)


_FORMATS = {"f32": _bits, "f16": _half2_bits, "bf16": _bf16x2_bits}


def lane_table_asm(dst: str, lane: str, fmt: str) -> str:
    """PTX lines setting register `dst` to CODE[laneid % 16] (fmt "f32", or "f16" / "bf16" in both halves),
    with `lane` a free .u32 register. A scope of its own (its predicate register stays inside)."""
    bits = _FORMATS[fmt]
    lines = ["{", ".reg .pred %nf4p;", f"mov.u32 {lane}, %laneid;", f"and.b32 {lane}, {lane}, 15;",
             f"mov.b32 {dst}, {bits(NF4_CODE[0])};"]
    for i, v in enumerate(NF4_CODE[1:], start=1):
        lines += [f"setp.eq.u32 %nf4p, {lane}, {i};", f"@%nf4p mov.b32 {dst}, {bits(v)};"]
    return "\n".join(lines + ["}"])


def _table_asm(fmt: str) -> str:
    """PTX: $0 = CODE[laneid % 16] in `fmt` ($1 is a dummy operand giving the result its shape)."""
    return "\n".join(["{", ".reg .u32 %nf4l;", lane_table_asm("$0", "%nf4l", fmt), "}"])


# constexpr globals: jitted functions may read them (the plain strings serve CPU-only installs)
TABLE_ASM = tl.constexpr(_table_asm("f32")) if HAS_TRITON else _table_asm("f32")
HALF2_TABLE_ASM = tl.constexpr(_table_asm("f16")) if HAS_TRITON else _table_asm("f16")
SHFL_ASM = tl.constexpr("shfl.sync.idx.b32 $0, $1, $2, 31, -1;") if HAS_TRITON else ""


def lookup_id(name: str | None, device: torch.device) -> int:
    """LOOKUP constexpr for a launch: `name` (one of LOOKUPS), or the shuffle on CUDA, the gather elsewhere."""
    if name is None:
        name = "shfl" if device.type == "cuda" else "gather"
    if name not in LOOKUPS:
        raise ValueError(f"NF4 lookup must be one of {LOOKUPS}, got {name!r}")
    if name == "shfl" and device.type != "cuda":
        raise ValueError("the NF4 shuffle lookup needs a CUDA GPU (the interpreter has no inline assembly)")
    return LOOKUPS.index(name)


@triton.jit
def nf4_lane_table(like, LOOKUP: tl.constexpr, HALF2: tl.constexpr = False):
    """int32 tensor shaped like `like` whose every element in lane l is the bits of CODE[l % 16] ("shfl");
    HALF2: CODE[l % 16] as fp16 in both halves (`quant_half2`'s NF4 MAC)."""
    if LOOKUP == 2:
        asm: tl.constexpr = HALF2_TABLE_ASM if HALF2 else TABLE_ASM
        t = tl.inline_asm_elementwise(asm, "=r,r", [like], dtype=tl.int32, is_pure=True, pack=1)
    else:
        t = like
    return t


@triton.jit
def _nf4_select(i):
    """CODE[i] for int32 codes 0..15 without a memory access: a select tree over the 16 constants."""
    b0 = (i & 1) != 0
    b1 = (i & 2) != 0
    b2 = (i & 4) != 0
    neg = (i & 8) == 0
    lo = tl.where(b2,
                  tl.where(b1, tl.where(b0, 0.0, -0.09105003625154495),
                           tl.where(b0, -0.18477343022823334, -0.28444138169288635)),
                  tl.where(b1, tl.where(b0, -0.39491748809814453, -0.5250730514526367),
                           tl.where(b0, -0.6961928009986877, -1.0)))
    hi = tl.where(b2,
                  tl.where(b1, tl.where(b0, 1.0, 0.7229568362236023),
                           tl.where(b0, 0.5626170039176941, 0.44070982933044434)),
                  tl.where(b1, tl.where(b0, 0.33791524171829224, 0.24611230194568634),
                           tl.where(b0, 0.16093020141124725, 0.07958029955625534)))
    return tl.where(neg, lo, hi)


@triton.jit
def nf4_code_of(w, S: tl.constexpr, code_ptr, table, LOOKUP: tl.constexpr):
    """fp32 CODE[q] for slot S (bits 4S..4S+3) of uint32 words `w`; `table` from `nf4_lane_table`."""
    v = w >> (4 * S)
    if LOOKUP == 2:
        c = tl.inline_asm_elementwise(SHFL_ASM, "=r,r,r", [table, v.to(tl.int32, bitcast=True)], dtype=tl.int32,
                                      is_pure=True, pack=1).to(tl.float32, bitcast=True)
    elif LOOKUP == 1:
        c = _nf4_select((v & 15).to(tl.int32))
    else:
        c = tl.load(code_ptr + (v & 15).to(tl.int32))
    return c
