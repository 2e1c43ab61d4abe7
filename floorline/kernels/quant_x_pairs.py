"""x as int4's fp16x2 pairs, made once a call: the operand of the M = 1 K loop's fp16x2 tiles.

The K loop (`quant_int4`, HALF2) keeps BLOCK_N rows a program, so if it converted x itself (load, scale
by the max over each 4-word position, round to fp16, pack, sum), every row tile would redo that work for
only BLOCK_N rows. One small kernel converts x once instead. For the down projection it also applies the
SiLU-and-mul, so it takes the place of the activation kernel that ran before the K loop anyway.

Layout for x [1, K] (groups of G, P = Kp / 32 positions; position p = group * G / 32 + chunk holds the
32 elements group * G + S * G / 8 + chunk * 4 + e of slots S = 0..7 and words e = 0..3, the elements
one K-loop thread multiplies with 4 words of a row):

* pairs uint32 [4, P, 4]: pairs[j, p, e] = fp16x2 (x_lo * scale, x_hi * scale) of int4's slot pair
  j = (6, 0), (3, 5), (2, 4), (1, 7) (`quant_half2`) in word e. The scale is the power of two that
  puts the position's max |x| in [32, 64), as `quant_half2.tile_x_pairs` chooses it;
* meta fp32 [2, P]: 1 / scale, and the sum of the position's 32 rounded, scaled elements (the zero
  point's term).

Elements past K (the group padding) are 0.
"""

from __future__ import annotations

import torch

from floorline.kernels.pdl import gdc_wait, pdl_args
from floorline.kernels.quant_common import _slot_xs
from floorline.kernels.quant_half2 import tile_x_pairs, x_sums
from floorline.kernels.triton_compat import tl, triton

POSITION = 32  # x elements a position (4 words of 8 codes)
_BLOCK_P = 8  # positions a program (H200, down's 448 positions: 8 -> 1.21 us, 4 -> 1.35, 16 -> 1.38, 32 -> 1.77)


@triton.jit
def _x_pairs_kernel(x_ptr, pairs_ptr, meta_ptr, K, P, GROUP: tl.constexpr, X_SILU_MUL: tl.constexpr,
                    BLOCK_P: tl.constexpr, USE_PDL: tl.constexpr = False):
    if USE_PDL:
        gdc_wait()  # x is the previous kernel's output
    GW: tl.constexpr = GROUP // 8
    NC: tl.constexpr = GW // 4  # positions a group
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    e = tl.arange(0, 4)[None, None, None, :]
    col = (p // NC * GROUP + p % NC * 4)[:, None, None, None] + e  # [BP, 1, 1, 4]: slot 0's elements
    x0, x1, x2, x3, x4, x5, x6, x7 = _slot_xs(x_ptr + col, col, K, GW, False, X_SILU_MUL)  # zero past K
    xp, inv_scale = tile_x_pairs(x6, x0, x3, x5, x2, x4, x1, x7, BLOCK_P, 1)  # [BP, 1, 1] each
    pm = p < P
    for i in tl.static_range(16):  # xp[i] is pair i % 4 of word i // 4
        tl.store(pairs_ptr + ((i % 4) * P + p) * 4 + i // 4, tl.reshape(xp[i], (BLOCK_P,)), mask=pm)
    tl.store(meta_ptr + p, tl.reshape(inv_scale, (BLOCK_P,)), mask=pm)
    tl.store(meta_ptr + P + p, tl.reshape(x_sums(xp, BLOCK_P, 1), (BLOCK_P,)), mask=pm)


@triton.jit
def load_pair_words(pairs_ptr, meta_ptr, pos, P, mask, D0: tl.constexpr, D1: tl.constexpr, MASKED: tl.constexpr):
    """(a, b, c, d, 1 / scale, x sum) of positions `pos` [D0, D1, 1, 1]: the four slot pairs' words [D0, D1, 1, 4]
    (uint32; `quant_half2.pairs_by_word` orders them for the MAC) and the fp32 [D0, D1, 1] meta; with
    MASKED, positions where `mask` is false read as 0."""
    offs = pos * 4 + tl.arange(0, 4)[None, None, None, :]
    mpos = tl.reshape(pos, (D0, D1, 1))
    if MASKED:
        m4 = tl.broadcast_to(mask, (D0, D1, 1, 4))
        m3 = tl.reshape(tl.broadcast_to(mask, (D0, D1, 1, 1)), (D0, D1, 1))
        a = tl.load(pairs_ptr + offs, mask=m4, other=0)
        b = tl.load(pairs_ptr + 4 * P + offs, mask=m4, other=0)
        c = tl.load(pairs_ptr + 8 * P + offs, mask=m4, other=0)
        d = tl.load(pairs_ptr + 12 * P + offs, mask=m4, other=0)
        inv_scale = tl.load(meta_ptr + mpos, mask=m3, other=0.0)
        xsum = tl.load(meta_ptr + P + mpos, mask=m3, other=0.0)
    else:
        a = tl.load(pairs_ptr + offs)
        b = tl.load(pairs_ptr + 4 * P + offs)
        c = tl.load(pairs_ptr + 8 * P + offs)
        d = tl.load(pairs_ptr + 12 * P + offs)
        inv_scale = tl.load(meta_ptr + mpos)
        xsum = tl.load(meta_ptr + P + mpos)
    return (a.to(tl.uint32, bitcast=True), b.to(tl.uint32, bitcast=True), c.to(tl.uint32, bitcast=True),
            d.to(tl.uint32, bitcast=True), inv_scale, xsum)


_PAIR_SLOTS = ((6, 0), (3, 5), (2, 4), (1, 7))  # (low, high) slot of pair j


def int4_x_pairs_ref(x: torch.Tensor, kp: int, group: int, silu_mul: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch `int4_x_pairs` (same layout, same results; the x sums up to fp32 summation order)."""
    if silu_mul:
        from floorline.kernels.activation import silu_and_mul_ref

        x = silu_and_mul_ref(x)
    gw = group // 8
    xs = torch.zeros(kp, dtype=torch.float32, device=x.device)
    xs[: x.shape[1]] = x[0].float()
    # [groups, slot, chunk, word] -> [position = (group, chunk), slot, word]
    xs = xs.view(kp // group, 8, gw // 4, 4).permute(0, 2, 1, 3).reshape(kp // POSITION, 8, 4)
    amax = xs.abs().amax(dim=(1, 2))
    exp = (amax.view(torch.int32) >> 23) & 0xFF
    sb = (259 - exp).clamp(1, 253)  # the power of two putting amax in [32, 64) (`quant_half2._pow2_scale`)
    scale = torch.ldexp(torch.ones_like(amax), sb - 127)
    halves = (xs * scale[:, None, None]).to(torch.float16)
    bits = halves.view(torch.int16).to(torch.int32) & 0xFFFF
    pairs = torch.stack([bits[:, lo] | (bits[:, hi] << 16) for lo, hi in _PAIR_SLOTS])  # [4, P, 4]
    meta = torch.stack([torch.ldexp(torch.ones_like(amax), 127 - sb), halves.float().sum(dim=(1, 2))])
    return pairs, meta


def int4_x_pairs(x: torch.Tensor, kp: int, group: int, silu_mul: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs int32 [4, Kp / 32, 4], meta fp32 [2, Kp / 32]) of x [1, K] (with `silu_mul`: silu(gate) * up
    of x [1, 2K], rounded to x's dtype first, as the activation kernel rounds it). x is 16-bit."""
    if x.shape[0] != 1 or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"int4_x_pairs: x must be one float16/bfloat16 row, got {tuple(x.shape)} {x.dtype}")
    k = x.shape[1] // 2 if silu_mul else x.shape[1]
    p = kp // POSITION
    pairs = torch.empty((4, p, 4), dtype=torch.int32, device=x.device)
    meta = torch.empty((2, p), dtype=torch.float32, device=x.device)
    _x_pairs_kernel[(triton.cdiv(p, _BLOCK_P),)](x, pairs, meta, k, p, GROUP=group, X_SILU_MUL=silu_mul,
                                                 BLOCK_P=_BLOCK_P, num_warps=1, **pdl_args(x.device))
    return pairs, meta
