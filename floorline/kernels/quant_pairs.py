"""4-bit dot paths for 2..64 rows that build the tensor-core operands from the packed words in registers.

The first dot path (`quant_int4`'s USE_DOT) dequantizes every slot to fp32 (q - z) * s, joins the
eight slots into one tile and sends it through shared memory to reach the dot operand layout: about
6 SASS instructions a weight (offline sm_90), which left int4 at M = 4..16 no faster than bf16.

Here the operand comes straight out of the words. In `quant_packing`'s int4 layout the slots pair
up 16 bits apart: (6, 0) at bits 3 | 19, (3, 5) at 7 | 23, (2, 4) at 11 | 27 and (1, 7) at 15 | 31
(slot 7 wraps). So w, w >> 4, w >> 8 and rotl(w, 4) each hold one pair at bits 3..6 of both halves,
and one LOP3 into the bits of 16.0 in both halves makes two 16-bit floats: bf16 16 + q (7 mantissa
bits) or fp16 16 + q / 8 (10), exactly. A pair's tile is [rows, 2 x words] with element 2j the low
slot's word j and 2j + 1 the high slot's, which is the order of the word's halves in memory: the
words are loaded as int16, the conversion is one unary inline-asm op on two halves (`pack=2`),
and Triton moves the layout change onto the loaded int16 (cp.async into shared memory, then
ldmatrix into the operand layout), so the dequantized weights never touch shared memory. The x
tile of a pair interleaves the two slots' x columns the same way (a register join).

Four dots (one a pair) a group give T = sum_k x_k (B + U q_k); the group's zero and scale then apply
to the fp32 sums: sum_k x_k (q_k - z) = T / U - (B / U + z) X, X the group's x sum. Offline sm_90
(`scripts/sass_count.py int4-pairs`): 2.7 instructions a weight at 128 rows and 4 warps, 4.2 at the
64 rows that won the H200 sweeps (per token at 4 rows 4.07 -> 2.87 ms). Needs 16-bit activations
(fp32 keeps the first path) and groups of >= 64 (a pair's dot has 2 G / 8 >= 16 columns).

NF4 (slot s at bits 4s) pairs slots (s, s + 4), at bits 4s | 16 + 4s. Its operand is the code
table's value, read as in the M = 1 kernels by `shfl.idx` from a lane table, here of CODE[lane % 16]
rounded to the activation dtype in both halves: two shuffles and a LOP3 (low half of one, high half
of the other) a pair. The table is built inside the same asm block from %laneid (a unary op is what
Triton moves into the operand layout); ptxas shares it between the asm copies but keeps part of it in
the loop (8 ISETP and 7 SEL a thread per 128 weights at the shipped 64-row, 2-warp tiles). Each 64-weight
block's four dots (16 columns each) are scaled by its absmax in fp32. The codes are rounded to the
activation dtype before the products (the first path rounds code x absmax instead): the same size
of error, one rounding a weight. Its winners run on 2 warps (mma.sync): per token at 4 rows
6.2 -> 4.23 ms.

The interpreter has no inline assembly: EMULATE builds the same operands with Triton ops from the
words (int32) and checks the pairing and the zero / scale algebra on the CPU in fp16.
"""

from __future__ import annotations

import torch

from floorline.kernels.nf4_lookup import lane_table_asm
from floorline.kernels.pdl import gdc_wait, pdl_args
from floorline.kernels.quant_common import _slot_dot_epilogue, _split_tile, dot_block_m, geometry
from floorline.kernels.quant_configs import QuantGemvConfig
from floorline.kernels.quant_nf4_state import _block_absmax, _row_state
from floorline.kernels.triton_compat import HAS_TRITON, tl, triton

# (low slot, high slot) of pair P = 0..3 (`_pair_group`'s x columns; `_SHIFTS[P]` puts it at bits 3..6)
PAIRS = ((6, 0), (3, 5), (2, 4), (7, 1))
# the bits of 16.0 in both halves, for (bf16, fp16) operands: bf16 16 + q, fp16 16 + q / 8
MAGIC = {False: 0x41804180, True: 0x4C004C00}


def _pair_asm(shift: str, magic: int) -> str:
    """PTX: $0 = two 16-bit floats from the 32-bit word $1 (the pair's two halves), `shift` putting the
    pair at bits 3..6 of both halves."""
    lop = f"lop3.b32 $0, %pw, 0x00780078, {magic:#010x}, 0xEA;"  # (w & mask) | magic
    return "{ .reg .b32 %pw; " + shift + " " + lop + " }"


_SHIFTS = ("mov.b32 %pw, $1;", "shr.u32 %pw, $1, 4;", "shr.u32 %pw, $1, 8;", "shf.l.wrap.b32 %pw, $1, $1, 4;")
# constexpr globals: jitted functions may read them (the plain strings serve CPU-only installs)
_wrap = tl.constexpr if HAS_TRITON else (lambda s: s)
PAIR_ASM_BF16 = _wrap(tuple(_pair_asm(s, MAGIC[False]) for s in _SHIFTS))
PAIR_ASM_FP16 = _wrap(tuple(_pair_asm(s, MAGIC[True]) for s in _SHIFTS))
PAIR_SLOTS = _wrap(PAIRS)  # what `_pair_group` reads


def _nf4_pair_asm(s: int, fp16: bool) -> str:
    """PTX: $0 = (CODE[q_s], CODE[q_{s+4}]) as two 16-bit floats from the word $1 (lane table inline)."""
    lo = "mov.b32 %ni, $1;" if s == 0 else f"shr.u32 %ni, $1, {4 * s};"
    return "\n".join(["{", ".reg .b32 %nt, %na, %nb, %ni;", lane_table_asm("%nt", "%ni", "f16" if fp16 else "bf16"),
                      lo, "shfl.sync.idx.b32 %na, %nt, %ni, 31, -1;", f"shr.u32 %ni, $1, {16 + 4 * s};",
                      "shfl.sync.idx.b32 %nb, %nt, %ni, 31, -1;",
                      "lop3.b32 $0, %na, %nb, 0x0000FFFF, 0xE4;", "}"])  # low half of a, high half of b


NF4_PAIR_ASM_BF16 = _wrap(tuple(_nf4_pair_asm(s, False) for s in range(4)))
NF4_PAIR_ASM_FP16 = _wrap(tuple(_nf4_pair_asm(s, True) for s in range(4)))


@triton.jit
def _pair_shift(w, P: tl.constexpr):
    """Words (uint32) with pair P at bits 3..6 of both halves (the emulation of `_SHIFTS`)."""
    if P == 0:
        return w
    elif P == 1:
        return w >> 4
    elif P == 2:
        return w >> 8
    return (w << 4) | (w >> 28)


@triton.jit
def _join_halves(lo, hi):
    """[BN, W] low-half and high-half values -> [BN, 2 W], element 2j from lo, 2j + 1 from hi (the operand order)."""
    return tl.reshape(tl.join(lo, hi), (lo.shape[0], 2 * lo.shape[1]))


@triton.jit
def _bits16(v, FP16: tl.constexpr):
    """Integers < 2**16 -> the fp16 (FP16) or bf16 values with those bits."""
    if FP16:
        return v.to(tl.uint16).to(tl.float16, bitcast=True)
    else:
        return v.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _round16(v, FP16: tl.constexpr):
    """fp32 values rounded to fp16 (FP16) or bf16."""
    if FP16:
        return v.to(tl.float16)
    else:
        return v.to(tl.bfloat16)


@triton.jit
def _pair_operand(wh, P: tl.constexpr, FP16: tl.constexpr, EMULATE: tl.constexpr):
    """[BN, 2 GW] 16-bit floats B + U q of pair P from the words' halves wh [BN, 2 GW] (int16)."""
    if EMULATE:
        lo, hi = tl.split(tl.reshape(wh, (wh.shape[0], wh.shape[1] // 2, 2)))
        w = ((hi.to(tl.int32) << 16) | (lo.to(tl.int32) & 0xFFFF)).to(tl.uint32, bitcast=True)
        if FP16:  # MAGIC's two values
            v = (_pair_shift(w, P) & 0x00780078) | 0x4C004C00
        else:
            v = (_pair_shift(w, P) & 0x00780078) | 0x41804180
        return _join_halves(_bits16(v & 0xFFFF, FP16), _bits16(v >> 16, FP16))
    elif FP16:  # (one if-chain: Triton wants every return of a constexpr branch alike)
        return tl.inline_asm_elementwise(PAIR_ASM_FP16[P], "=r,r", [wh], dtype=tl.float16, is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise(PAIR_ASM_BF16[P], "=r,r", [wh], dtype=tl.bfloat16, is_pure=True, pack=2)


@triton.jit
def _pair_x(x_ptrs, kx, K, m_mask, LO: tl.constexpr, HI: tl.constexpr, GW: tl.constexpr, EVEN_K: tl.constexpr):
    """x [BM, 2 GW] for pair (LO, HI): column 2j is x at slot LO's word j, 2j + 1 at slot HI's."""
    if EVEN_K:
        lo = tl.load(x_ptrs + LO * GW, mask=m_mask, other=0.0)
        hi = tl.load(x_ptrs + HI * GW, mask=m_mask, other=0.0)
    else:
        lo = tl.load(x_ptrs + LO * GW, mask=m_mask & (kx + LO * GW < K), other=0.0)
        hi = tl.load(x_ptrs + HI * GW, mask=m_mask & (kx + HI * GW < K), other=0.0)
    return _join_halves(lo, hi)


@triton.jit
def _pair_pointers(q_ptr, x_ptr, rn_w, M, stride_qn16, stride_xm, k_start, GW: tl.constexpr, BLOCK_M: tl.constexpr):
    """Both pair kernels at k_start: int16 word-half pointers [BN, 2 GW], x pointers [BM, GW] (one slot's
    columns), the x rows' mask [BM, 1] and the word offsets rj [1, GW]."""
    rh = tl.arange(0, 2 * GW)
    rm = tl.arange(0, BLOCK_M)
    m_mask = (rm < M)[:, None]
    rj = tl.arange(0, GW)[None, :]
    q_ptrs = q_ptr + rn_w.to(tl.int64)[:, None] * stride_qn16 + k_start // 4 + rh[None, :]
    x_ptrs = x_ptr + rm[:, None] * stride_xm + k_start + rj
    return q_ptrs, x_ptrs, m_mask, rj


@triton.jit
def _pair_group(acc, wh, s, z, x_ptrs, kx, K, m_mask, GW: tl.constexpr, EVEN_K: tl.constexpr,
                FP16: tl.constexpr, EMULATE: tl.constexpr):
    """acc [BN, BM] + s (sum_k x_k (q_k - z)) over one group: four pair dots, then zero and scale.

    The weights are the dots' first operand, so 64-row tiles run on wgmma with the operand in registers
    (x first, on mma.sync, measured 1.35-1.5x slower on the H200)."""
    x0 = _pair_x(x_ptrs, kx, K, m_mask, PAIR_SLOTS[0][0], PAIR_SLOTS[0][1], GW, EVEN_K)
    x1 = _pair_x(x_ptrs, kx, K, m_mask, PAIR_SLOTS[1][0], PAIR_SLOTS[1][1], GW, EVEN_K)
    x2 = _pair_x(x_ptrs, kx, K, m_mask, PAIR_SLOTS[2][0], PAIR_SLOTS[2][1], GW, EVEN_K)
    x3 = _pair_x(x_ptrs, kx, K, m_mask, PAIR_SLOTS[3][0], PAIR_SLOTS[3][1], GW, EVEN_K)
    t = tl.dot(_pair_operand(wh, 0, FP16, EMULATE), tl.trans(x0))
    t = tl.dot(_pair_operand(wh, 1, FP16, EMULATE), tl.trans(x1), t)
    t = tl.dot(_pair_operand(wh, 2, FP16, EMULATE), tl.trans(x2), t)
    t = tl.dot(_pair_operand(wh, 3, FP16, EMULATE), tl.trans(x3), t)
    xsum = tl.sum(x0.to(tl.float32) + x1.to(tl.float32) + x2.to(tl.float32) + x3.to(tl.float32), axis=1)  # [BM]
    if FP16:  # T / U and B / U for 16 + q / 8
        t = t * 8.0
        zo = z + 128.0
    else:  # 16 + q
        zo = z + 16.0
    return acc + s[:, None] * (t - zo[:, None] * xsum[None, :])


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _int4_pairs_kernel(
    x_ptr,  # [M, K] fp16 / bf16, last-dim stride 1
    q_ptr,  # the int32 words [N, Kp / 8] seen as int16 [N, Kp / 4]
    s_ptr, z_ptr,  # [Kp / G, N] fp16
    out_ptr, ws_ptr, cnt_ptr,
    M, N, K, num_groups, stride_xm, stride_qn16, k_blocks_per_split, num_splits,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    NUM_STAGES: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr, FP16: tl.constexpr,
    EMULATE: tl.constexpr = False, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_wait()
    GW: tl.constexpr = GROUP // 8  # words per group and row
    NB: tl.constexpr = BLOCK_K // GROUP
    tile, split, k_start, k_end, rn, rn_w = _split_tile(num_groups * GROUP, k_blocks_per_split, N, BLOCK_N, BLOCK_K)
    q_ptrs, x_ptrs, m_mask, rj = _pair_pointers(q_ptr, x_ptr, rn_w, M, stride_qn16, stride_xm, k_start, GW, BLOCK_M)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        for b in tl.static_range(NB):
            g = k // GROUP + b
            if EVEN_K:
                wh = tl.load(q_ptrs + b * (GROUP // 4), eviction_policy="evict_first")
                s = tl.load(s_ptr + g * N + rn_w).to(tl.float32)
                z = tl.load(z_ptr + g * N + rn_w).to(tl.float32)
            else:  # groups past the end (a partial last tile) read as zero weights
                ok = rn_w * 0 + g < num_groups
                wh = tl.load(q_ptrs + b * (GROUP // 4), mask=ok[:, None], other=0, eviction_policy="evict_first")
                s = tl.load(s_ptr + g * N + rn_w, mask=ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + g * N + rn_w, mask=ok, other=0.0).to(tl.float32)
            acc = _pair_group(acc, wh, s, z, x_ptrs + b * GROUP, k + b * GROUP + rj, K, m_mask, GW, EVEN_K, FP16,
                              EMULATE)
        q_ptrs += BLOCK_K // 4
        x_ptrs += BLOCK_K
    _slot_dot_epilogue(tl.trans(acc), rn, M, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, BLOCK_M, SPLIT)



@triton.jit
def _nf4_pair_operand(wh, code_ptr, S: tl.constexpr, FP16: tl.constexpr, EMULATE: tl.constexpr):
    """[BN, 16] 16-bit CODE values of pair (S, S + 4) from the words' halves wh [BN, 16] (int16)."""
    if EMULATE:
        BN: tl.constexpr = wh.shape[0]
        lo, hi = tl.split(tl.reshape(wh, (BN, 8, 2)))  # lo holds slots 0..3, hi slots 4..7 (as bits 16..31)
        c_lo = tl.load(code_ptr + ((lo.to(tl.int32) >> (4 * S)) & 15))
        c_hi = tl.load(code_ptr + ((hi.to(tl.int32) >> (4 * S)) & 15))
        return _join_halves(_round16(c_lo, FP16), _round16(c_hi, FP16))
    elif FP16:
        return tl.inline_asm_elementwise(NF4_PAIR_ASM_FP16[S], "=r,r", [wh], dtype=tl.float16, is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise(NF4_PAIR_ASM_BF16[S], "=r,r", [wh], dtype=tl.bfloat16, is_pure=True,
                                         pack=2)


@triton.jit
def _nf4_block_dots(wh, code_ptr, x_ptrs, kx, K, m_mask, FP16: tl.constexpr, EMULATE: tl.constexpr,
                    EVEN_K: tl.constexpr):
    """[BN, BM] fp32 sums of one 64-weight block: the four pairs' dots (slots s, s + 4), unscaled."""
    t = tl.dot(_nf4_pair_operand(wh, code_ptr, 0, FP16, EMULATE), tl.trans(_pair_x(x_ptrs, kx, K, m_mask, 0, 4, 8,
                                                                                    EVEN_K)))
    t = tl.dot(_nf4_pair_operand(wh, code_ptr, 1, FP16, EMULATE), tl.trans(_pair_x(x_ptrs, kx, K, m_mask, 1, 5, 8,
                                                                                    EVEN_K)), t)
    t = tl.dot(_nf4_pair_operand(wh, code_ptr, 2, FP16, EMULATE), tl.trans(_pair_x(x_ptrs, kx, K, m_mask, 2, 6, 8,
                                                                                    EVEN_K)), t)
    return tl.dot(_nf4_pair_operand(wh, code_ptr, 3, FP16, EMULATE), tl.trans(_pair_x(x_ptrs, kx, K, m_mask, 3, 7, 8,
                                                                                       EVEN_K)), t)


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _nf4_pairs_kernel(
    x_ptr,  # [M, K] fp16 / bf16, last-dim stride 1
    q_ptr,  # the int32 words [N, K / 8] seen as int16 [N, K / 4]
    a_ptr, nabs_ptr, nmap_ptr, base_ptr, off_ptr, map_ptr,  # absmax and nested state (quant_nf4)
    code_ptr,  # [16] fp32 NF4 code (EMULATE only; the GPU's table is NF4_CODE)
    out_ptr, ws_ptr, cnt_ptr,
    M, N, K, stride_xm, stride_qn16, k_blocks_per_split, num_splits,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    EVEN_K: tl.constexpr, SPLIT: tl.constexpr, FP16: tl.constexpr, NESTED: tl.constexpr,
    EMULATE: tl.constexpr = False, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_wait()
    NB: tl.constexpr = BLOCK_K // 64
    KB = K // 64
    tile, split, k_start, k_end, rn, rn_w = _split_tile(K, k_blocks_per_split, N, BLOCK_N, BLOCK_K)
    base, offset, mbase = _row_state(base_ptr, off_ptr, map_ptr, rn_w, NESTED)
    q_ptrs, x_ptrs, m_mask, rj = _pair_pointers(q_ptr, x_ptr, rn_w, M, stride_qn16, stride_xm, k_start, 8, BLOCK_M)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        for b in tl.static_range(NB):
            kb = k // 64 + b + tl.arange(0, 1)
            kb_ok = kb < KB
            if EVEN_K:
                wh = tl.load(q_ptrs + b * 16, eviction_policy="evict_first")
            else:  # blocks past the end (a partial last tile) read as zero weights
                wh = tl.load(q_ptrs + b * 16, mask=kb_ok[:, None], other=0, eviction_policy="evict_first")
            absmax = tl.reshape(_block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_ok,
                                              NESTED, not EVEN_K), (BLOCK_N,))
            t = _nf4_block_dots(wh, code_ptr, x_ptrs + b * 64, k + b * 64 + rj, K, m_mask, FP16, EMULATE, EVEN_K)
            acc += absmax[:, None] * t
        q_ptrs += BLOCK_K // 4
        x_ptrs += BLOCK_K
    _slot_dot_epilogue(tl.trans(acc), rn, M, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, BLOCK_M, SPLIT)


def pairs_ok(x: torch.Tensor, group: int) -> bool:
    """Whether these paths take x: 16-bit activations and groups (NF4: blocks) of >= 64 (module docstring)."""
    return x.dtype in (torch.float16, torch.bfloat16) and group >= 64


def _launch(kernel, x: torch.Tensor, qweight: torch.Tensor, k: int, cfg: QuantGemvConfig, out: torch.Tensor,
            params: tuple, sizes: tuple, **constexprs) -> torch.Tensor:
    """Launches a pair kernel: x, the words as int16, the format's `params` tensors, then M, N, K, the format's
    `sizes`, and the strides and split geometry both kernels take."""
    m, n = x.shape[0], qweight.shape[0]
    geo = geometry(cfg, m, n, 8 * qweight.shape[1], out)
    kernel[(geo.tiles, geo.splits)](
        x, qweight.view(torch.int16), *params, out, geo.ws, geo.tickets,
        m, n, k, *sizes, x.stride(0), 2 * qweight.stride(0), geo.blocks_per_split, geo.splits,
        BLOCK_M=dot_block_m(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, NUM_STAGES=cfg.num_stages,
        EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1, FP16=x.dtype == torch.float16,
        EMULATE=x.device.type != "cuda", **constexprs,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(x.device),
    )
    return out


def int4_pairs_launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int,
                      group: int, cfg: QuantGemvConfig, out: torch.Tensor) -> torch.Tensor:
    """`_int4_pairs_kernel` on x [M, K] (checked by `int4_gemv_triton`, `pairs_ok`) into out [M, N]."""
    num_groups = 8 * qweight.shape[1] // group
    return _launch(_int4_pairs_kernel, x, qweight, k, cfg, out, (scales, zeros), (num_groups,), GROUP=group)


def nf4_pairs_launch(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, nested_args: tuple,
                     nested: bool, code: torch.Tensor, cfg: QuantGemvConfig, out: torch.Tensor) -> torch.Tensor:
    """`_nf4_pairs_kernel` on x [M, K] (checked by `nf4_gemv_triton`) into out [M, N]; `code` must be NF4_CODE
    (the loaders accept no other quant_map)."""
    return _launch(_nf4_pairs_kernel, x, qweight, 8 * qweight.shape[1], cfg, out, (absmax, *nested_args, code), (),
                   NESTED=nested)
