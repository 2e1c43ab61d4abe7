"""Packed fp16x2 math for the persistent M = 1 4-bit GEMVs (and int4's M = 1 K loop): two weights an
instruction.

The fp32 loops spend an integer op and an FMA on every weight (3.4 SASS instructions a weight with
the shifts and sums), which on an H200 is about the issue budget of the 4-bit byte floor. Here one
LOP3 turns two codes into an fp16x2 pair and one HFMA2 multiplies two weights: the codes and MACs
take 1.75 instructions a weight, the whole int4 loop 2.67 with its loads, sums and stores (offline
sm_90, `scripts/sass_count.py int4-m1 --half2`):

* x is converted once per program: scaled by a power of two that puts max |x| in [32, 64) (so the
  fp16 partial sums below cannot overflow, and the scale is undone exactly), rounded to fp16 and
  packed in the pairs the codes come in. For int4's K loop, `quant_x_pairs` converts x once a call,
  with one such scale per 4-word position (`tile_x_pairs`).
* int4 (quant_packing's bit positions): r = rotr(w, 3) puts slots (6, 0) at bits 0..3 | 16..19,
  (3, 5) at 4..7 | 20..23, (2, 4) at 8..11 | 24..27 and (1, 7) at 12..15 | 28..31. OR-ed into
  0x6400 (fp16 1024) the low nibbles give 1024 + q, the high ones 1024 + 16 q, exactly; one HSUB2
  (or HFMA2 by 1/16) leaves q - 8 exactly, with immediate constants. The zero point enters once per
  row and 4 words in fp32, as (8 - z) times the sum of those x (`x_sums`): per-row fp16x2 constants
  cost more instructions than they save.
* NF4: a lane table of fp16x2 codes (both halves alike) read by `shfl.idx`, two shuffles and a LOP3
  a pair. Only the FMAs halve: the shuffle a weight and its shift stay, so NF4's loop stays at ~3.9
  instructions a weight and gains only registers.
* Each call sums 4 words (32 weights) of one row in fp16 (16 products a half), then in fp32. The
  results stay within 3e-3 relative + 1e-2 absolute (outputs O(1)) of the fp32 reference in the
  interpreter tests (|out - ref| up to 3e-3 |ref| + 0.0047 in 120 seeds); in bf16 at Llama shapes in
  the GPU tests, within 1e-2 relative.

The Triton interpreter has no inline assembly: `EMULATE` runs the same bit manipulations and fp16
arithmetic in Triton ops (fp16 multiply then add where the GPU fuses them), so the pairing of codes
and x elements is tested on the CPU too.
"""

from __future__ import annotations

from floorline.kernels.nf4_lookup import nf4_code_of
from floorline.kernels.triton_compat import HAS_TRITON, tl, triton


def _int4_mac4_asm() -> str:
    """PTX: $0 = fp32 sum over 4 words ($1..$4) of x (q - 8); x pairs $5..$20 (word e: A, B, C, D at
    5 + 4e..). The constants become immediates (ptxas folds them into LOP3 and HFMA2)."""
    # fp16x2 operands must be registers: 1024, 1032, 1/16 and -72 in both halves
    lines = ["{", ".reg .b32 %hr, %hs, %ht, %hacc, %hmg, %hc1, %hc2, %hc3;", ".reg .b16 %hlo, %hhi;",
             ".reg .f32 %hflo, %hfhi;", "mov.b32 %hmg, 0x64006400;", "mov.b32 %hc1, 0x64086408;",
             "mov.b32 %hc2, 0x2C002C00;", "mov.b32 %hc3, 0xD480D480;"]
    sub = "sub.rn.f16x2 %ht, %ht, %hc1;"  # (1024 + q) - 1032 = q - 8
    scale = "fma.rn.f16x2 %ht, %ht, %hc2, %hc3;"  # (1024 + 16 q) / 16 - 72 = q - 8
    for e in range(4):
        w, (xa, xb, xc, xd) = f"${1 + e}", (f"${5 + 4 * e + p}" for p in range(4))
        first = f"mul.rn.f16x2 %hacc, %ht, {xa};" if e == 0 else f"fma.rn.f16x2 %hacc, %ht, {xa}, %hacc;"
        lines += [f"shf.r.wrap.b32 %hr, {w}, {w}, 3;", "shr.u32 %hs, %hr, 8;",
                  "lop3.b32 %ht, %hr, 0x000F000F, %hmg, 0xEA;", sub, first,
                  "lop3.b32 %ht, %hr, 0x00F000F0, %hmg, 0xEA;", scale, f"fma.rn.f16x2 %hacc, %ht, {xb}, %hacc;",
                  "lop3.b32 %ht, %hs, 0x000F000F, %hmg, 0xEA;", sub, f"fma.rn.f16x2 %hacc, %ht, {xc}, %hacc;",
                  "lop3.b32 %ht, %hs, 0x00F000F0, %hmg, 0xEA;", scale, f"fma.rn.f16x2 %hacc, %ht, {xd}, %hacc;"]
    lines += ["mov.b32 {%hlo, %hhi}, %hacc;", "cvt.f32.f16 %hflo, %hlo;", "cvt.f32.f16 %hfhi, %hhi;",
              "add.f32 $0, %hflo, %hfhi;", "}"]
    return "\n".join(lines)


def _nf4_mac4_asm() -> str:
    """PTX: $0 = fp32 sum over 4 words ($1..$4) of x CODE[q]; x pairs $5..$20 (word e: slots (0, 1),
    (2, 3), (4, 5), (6, 7) at 5 + 4e..), $21 = the lane's fp16x2 code (`HALF2_TABLE_ASM`)."""
    lines = ["{", ".reg .b32 %na, %nb, %nv, %np, %nacc, %nm;", ".reg .b16 %nlo, %nhi;", ".reg .f32 %nflo, %nfhi;",
             "mov.b32 %nm, 0x0000FFFF;"]
    for e in range(4):
        w = f"${1 + e}"
        for p in range(4):
            lo = w if p == 0 else "%nv"
            if p:
                lines.append(f"shr.u32 %nv, {w}, {8 * p};")
            lines += [f"shfl.sync.idx.b32 %na, $21, {lo}, 31, -1;", f"shr.u32 %nv, {w}, {8 * p + 4};",
                      "shfl.sync.idx.b32 %nb, $21, %nv, 31, -1;",
                      "lop3.b32 %np, %na, %nb, %nm, 0xE4;"]  # low half from a, high half from b
            x = f"${5 + 4 * e + p}"
            lines.append(f"mul.rn.f16x2 %nacc, %np, {x};" if e == p == 0 else f"fma.rn.f16x2 %nacc, %np, {x}, %nacc;")
    lines += ["mov.b32 {%nlo, %nhi}, %nacc;", "cvt.f32.f16 %nflo, %nlo;", "cvt.f32.f16 %nfhi, %nhi;",
              "add.f32 $0, %nflo, %nfhi;", "}"]
    return "\n".join(lines)


# constexpr globals: jitted functions may read them (the plain strings serve CPU-only installs)
INT4_MAC4_ASM = tl.constexpr(_int4_mac4_asm()) if HAS_TRITON else _int4_mac4_asm()
NF4_MAC4_ASM = tl.constexpr(_nf4_mac4_asm()) if HAS_TRITON else _nf4_mac4_asm()
INT4_MAC4_CONSTRAINTS = tl.constexpr("=r," + ",".join(["r"] * 20)) if HAS_TRITON else ""
NF4_MAC4_CONSTRAINTS = tl.constexpr("=r," + ",".join(["r"] * 21)) if HAS_TRITON else ""


@triton.jit
def _abs_max8(x0, x1, x2, x3, x4, x5, x6, x7):
    return tl.maximum(tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)), tl.maximum(tl.abs(x2), tl.abs(x3))),
                      tl.maximum(tl.maximum(tl.abs(x4), tl.abs(x5)), tl.maximum(tl.abs(x6), tl.abs(x7))))


@triton.jit
def _pow2_scale(amax):
    """(scale, 1 / scale): the power of two that puts amax in [32, 64)."""
    e = ((amax.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32)
    sb = tl.minimum(tl.maximum(259 - e, 1), 253)  # biased exponent of 2 ** (5 - (e - 127)), kept finite
    return (sb << 23).to(tl.float32, bitcast=True), ((254 - sb) << 23).to(tl.float32, bitcast=True)


@triton.jit
def x_scale(x0, x1, x2, x3, x4, x5, x6, x7):
    """(scale, 1 / scale): the power of two that puts max |x| over the eight tensors in [32, 64).

    One scale for the program, not one per thread's 4-word position: the per-position version (no
    cross-thread max) freed 16 registers, and ptxas spent them on issuing the tile's weight loads one
    by one instead of together; the H200 measured int4 gate_up 19.9 -> 23.7 us."""
    amax = tl.max(_abs_max8(x0, x1, x2, x3, x4, x5, x6, x7))
    return _pow2_scale(amax)


@triton.jit
def tile_x_pairs(lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3, D0: tl.constexpr, D1: tl.constexpr):
    """`quant_x_pairs`' fp16x2 x: `x_pairs` of the eight slots [D0, D1, 1, 4] (in pairing order) and 1 / scale
    [D0, D1, 1], scaled per 4-word position (`x_scale` per position: a thread holds all 32 elements of
    one, so a tile needs no cross-thread max and no barrier)."""
    amax = tl.max(_abs_max8(lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3), axis=3, keep_dims=True)
    scale, inv_scale = _pow2_scale(amax)  # [D0, D1, 1, 1]
    xp = x_pairs(lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3, scale, D0, D1)
    return xp, tl.reshape(inv_scale, (D0, D1, 1))


@triton.jit
def _f16_bits(v):
    return v.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)


@triton.jit
def pack_half2(lo, hi):
    """fp32 tensors -> uint32 words holding fp16(lo) in the low half and fp16(hi) in the high half."""
    return _f16_bits(lo) | (_f16_bits(hi) << 16)


@triton.jit
def _halves(t):
    """uint32 words -> (low, high) fp16 halves."""
    return ((t & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True),
            (t >> 16).to(tl.uint16).to(tl.float16, bitcast=True))


@triton.jit
def split4(t, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr):
    """[D0, D1, D2, 4] -> its four [D0, D1, D2] slices along the last axis (a thread holds all four)."""
    even, odd = tl.split(tl.reshape(t, (D0, D1, D2, 2, 2)))
    e0, e2 = tl.split(even)
    e1, e3 = tl.split(odd)
    return e0, e1, e2, e3


@triton.jit
def x_pairs(lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3, scale, D0: tl.constexpr, D1: tl.constexpr):
    """The eight slots' x [D0, D1, 1, 4], given in the order the codes pair up, -> 16 packed pairs
    [D0, D1, 1], word e's four at 4e..4e + 3. int4 pairs slots (6, 0), (3, 5), (2, 4), (1, 7); NF4
    (0, 1), (2, 3), (4, 5), (6, 7)."""
    return pairs_by_word(pack_half2(lo0 * scale, hi0 * scale), pack_half2(lo1 * scale, hi1 * scale),
                         pack_half2(lo2 * scale, hi2 * scale), pack_half2(lo3 * scale, hi3 * scale), D0, D1)


@triton.jit
def pairs_by_word(a, b, c, d, D0: tl.constexpr, D1: tl.constexpr):
    """Packed pairs [D0, D1, 1, 4] of the four slot pairs (word e along the last axis) -> the 16 pairs
    [D0, D1, 1] in the MAC blocks' order: word e's four at 4e..4e + 3."""
    a0, a1, a2, a3 = split4(a, D0, D1, 1)
    b0, b1, b2, b3 = split4(b, D0, D1, 1)
    c0, c1, c2, c3 = split4(c, D0, D1, 1)
    d0, d1, d2, d3 = split4(d, D0, D1, 1)
    return a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2, a3, b3, c3, d3


@triton.jit
def x_sums(xp, D0: tl.constexpr, D1: tl.constexpr):
    """fp32 [D0, D1, 1]: the sum of the (rounded) x elements in the 16 pairs, for int4's zero-point term."""
    t = tl.zeros((D0, D1, 1), dtype=tl.float32)
    for i in tl.static_range(16):
        lo, hi = _halves(xp[i])
        t += lo.to(tl.float32) + hi.to(tl.float32)
    return t


@triton.jit
def _int4_pair(w, P: tl.constexpr):
    """Pair P of words w as `INT4_MAC4_ASM` builds it: the two codes' q - 8 as fp16 (low, high)."""
    r = (w >> 3) | (w << 29)
    src = r if P < 2 else r >> 8
    if P % 2 == 0:
        lo, hi = _halves((src & 0x000F000F) | 0x64006400)
        return lo - 1032.0, hi - 1032.0
    lo, hi = _halves((src & 0x00F000F0) | 0x64006400)
    return lo * 0.0625 - 72.0, hi * 0.0625 - 72.0


@triton.jit
def _emulated_mac4(ws, xp, code_ptr, NF4: tl.constexpr, LOOKUP: tl.constexpr):
    """The MAC blocks in Triton ops (the interpreter's path): fp16 products and sums, then fp32. NF4
    codes come from `nf4_code_of` (gather or select) rounded to fp16, int4 ones from `_int4_pair`."""
    lo = tl.zeros(ws[0].shape, dtype=tl.float16)
    hi = tl.zeros(ws[0].shape, dtype=tl.float16)
    for E in tl.static_range(4):
        for P in tl.static_range(4):
            if NF4:
                dl = nf4_code_of(ws[E], 2 * P, code_ptr, ws[E], LOOKUP).to(tl.float16)
                dh = nf4_code_of(ws[E], 2 * P + 1, code_ptr, ws[E], LOOKUP).to(tl.float16)
            else:
                dl, dh = _int4_pair(ws[E], P)
            xl, xh = _halves(xp[4 * E + P])
            lo += dl * xl
            hi += dh * xh
    return lo.to(tl.float32) + hi.to(tl.float32)


@triton.jit
def int4_mac4(w, xp, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 [D0, D1, D2]: sum over the 4 words of w [D0, D1, D2, 4] of x (q - 8), x the 16 pairs
    `x_pairs` made (broadcast over D2). The caller adds (8 - z) times `x_sums`."""
    ws = split4(w, D0, D1, D2)
    if EMULATE:
        return _emulated_mac4(ws, xp, w, False, 0)
    return tl.inline_asm_elementwise(
        INT4_MAC4_ASM, INT4_MAC4_CONSTRAINTS,
        [ws[0], ws[1], ws[2], ws[3], xp[0], xp[1], xp[2], xp[3], xp[4], xp[5], xp[6], xp[7], xp[8], xp[9], xp[10],
         xp[11], xp[12], xp[13], xp[14], xp[15]],
        dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def nf4_mac4(w, xp, table, code_ptr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, LOOKUP: tl.constexpr):
    """fp32 [D0, D1, D2]: sum over the 4 words of w [D0, D1, D2, 4] of x CODE[q], x the 16 pairs
    `x_pairs` made; `table` from `nf4_lookup.nf4_lane_table(.., HALF2=True)` with the shuffle (LOOKUP 2),
    else the emulation looks the codes up through `code_ptr`."""
    ws = split4(w, D0, D1, D2)
    if LOOKUP != 2:
        return _emulated_mac4(ws, xp, code_ptr, True, LOOKUP)
    return tl.inline_asm_elementwise(
        NF4_MAC4_ASM, NF4_MAC4_CONSTRAINTS,
        [ws[0], ws[1], ws[2], ws[3], xp[0], xp[1], xp[2], xp[3], xp[4], xp[5], xp[6], xp[7], xp[8], xp[9], xp[10],
         xp[11], xp[12], xp[13], xp[14], xp[15], table],
        dtype=tl.float32, is_pure=True, pack=1)
