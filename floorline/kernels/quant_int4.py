"""Group-wise int4 GEMV for decode: `y = x W^T` with W[n, k] = (Q[n, k] - Z[g, n]) * S[g, n], g = k // G.

floorline's int4 layout (AWQ, GPTQ and RTN weights are converted into it at load):

* `qweight` int32 [N, Kp / 8]: eight codes a word, slot-major within each group and at the bit
  positions of `quant_packing` (Kp is K rounded up to the group; padding codes meet x masked to 0).
* `scales`, `zeros` fp16 [Kp / G, N]: one scale and one (integer-valued) zero point per group and
  output channel.

A code becomes a float with one AND/OR into 1.0f or 16.0f (`_int4_slot`: 1 + q / 16 or 16 + q / 16,
exact), so per weight the M = 1 path spends about one integer op and one FMA. That path factors
the group's scale and zero out of the inner sum: with T = sum_k x_k f_k over a thread's words of a
group, sum_k x_k (q_k - z) = 16 (T - C - z X / 16), where C and X are sums of x alone (shared by
all the rows a thread holds), so the per-weight work is the FMA and the per-group work is three
ops per thread. For M > 1, configs with `pairs` (the table's, for 16-bit activations and groups of
>= 64) take `quant_pairs`' dots; the first dot path (here) turns the same floats into exact
(q - z) * s with one FMA, rounds them to the activation dtype and joins the slots into one tile for a
single `tl.dot`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.kernels.fusion_args import fused_outputs, fused_result, ptr_or
from floorline.kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_args
from floorline.kernels.quant_common import (
    _k_loop_epilogue,
    _persistent_reduce,
    _persistent_store,
    _row_words,
    _slot_dot,
    _slot_dot_epilogue,
    _slot_dot_load,
    _slot_dot_pointers,
    _slot_x,
    _slot_xs,
    _split_tile,
    dot_block_m,
    geometry,
    half2_ok,
    m1_fusion_problem,
    operand,
    persistent_geometry,
    persistent_pdl_args,
    unfused_silu,
)
from floorline.kernels.quant_configs import DOT_MIN_K, QuantGemvConfig, check_config, get_config
from floorline.kernels.quant_int4_codes import (
    MAGIC,
    _check_row_params,
    _int4_slot,
    _int4_slot_weights,
    _load_group_params,
    _row_param_words,
    _unpack_row_params,
    int4_row_params,
)
from floorline.kernels.quant_half2 import int4_mac4, pairs_by_word, x_pairs, x_scale, x_sums
from floorline.kernels.quant_packing import unpack_int4
from floorline.kernels.quant_int4_stream import int4_stream_launch
from floorline.kernels.quant_pairs import int4_pairs_launch, pairs_ok
from floorline.kernels.quant_x_pairs import int4_x_pairs, load_pair_words
from floorline.kernels.skinny_gemm import (
    _load_ss_parts,
    _rstd,
)
from floorline.kernels.triton_compat import tl, triton


@triton.jit
def _int4_fma_load(q_ptrs, s_ptr, z_ptr, k, rg, rn_w, N, num_groups, GROUP: tl.constexpr, MASKED: tl.constexpr):
    """Words [NC, NB, BN, 4] (uint32) and fp32 scales / zeros [1, NB, BN] of the tile at k."""
    g = k // GROUP + rg
    offs = g[:, None] * N + rn_w[None, :]  # [NB, BN]
    gm = (g < num_groups)[:, None]  # unused (and dropped) when not MASKED
    s, z = _load_group_params(s_ptr, z_ptr, offs, gm, MASKED)
    if MASKED:
        w = tl.load(q_ptrs, mask=gm[None, :, :, None], other=0, eviction_policy="evict_first")
    else:
        w = tl.load(q_ptrs, eviction_policy="evict_first")
    return w.to(tl.uint32, bitcast=True), s[None, :, :], z[None, :, :]


@triton.jit
def _int4_fma_tile(acc, w, s, z, x_ptrs, k, xoff, K, one, sixteen,
                   GROUP: tl.constexpr, EVEN_K: tl.constexpr):
    """One K tile of the M = 1 path: acc [NC, NB, BN] += 16 s (T - C - z X / 16) (module docstring).

    Tiles are [NC, NB, BN, 4] (chunk of a group, group, row, word): with the K axes first, Triton
    spreads lanes over K (consecutive lanes read consecutive 16 bytes) and keeps several rows per
    thread, which share the thread's x elements.
    """
    GW: tl.constexpr = GROUP // 8
    t = tl.zeros(w.shape, dtype=tl.float32)
    c = tl.zeros(xoff.shape, dtype=tl.float32)  # [NC, NB, 1, 4]: sum of x times f's offsets (1 or 16)
    xsum = tl.zeros(xoff.shape, dtype=tl.float32)
    for S in tl.static_range(8):
        xs = _slot_x(x_ptrs, k + xoff, K, S, GW, EVEN_K, False)
        t += _int4_slot(w, S, one, sixteen) * xs
        if S % 2 == 0:
            c += xs
        else:
            c += 16.0 * xs
        xsum += xs
    d = tl.sum(c, axis=3) + (z * 0.0625) * tl.sum(xsum, axis=3)
    return acc + (s * 16.0) * (tl.sum(t, axis=3) - d)


@triton.jit
def _int4_half2_tile(acc, q_ptrs, s_ptr, z_ptr, pairs_ptr, meta_ptr, k, pos, rg, rn_w, N, num_groups, P, zero,
                     GROUP: tl.constexpr, NC: tl.constexpr, NB: tl.constexpr, BLOCK_N: tl.constexpr,
                     MASKED: tl.constexpr, EMULATE: tl.constexpr):
    """One K tile of the M = 1 K loop in packed fp16x2 (`quant_half2`): acc [NC, NB, BN] += s (T + (8 - z) X)
    / scale, T the tile's fp16x2 sums of x (q - 8) and X the sum of the rounded x, x as the pairs of
    positions k / 32 + pos made before the launch (`quant_x_pairs`).

    `zero` is a runtime 0 (uint32) the compiler cannot fold. The XOR of every loaded word, AND-ed with it,
    enters the first x pair, so the first MAC waits for all the tile's loads and ptxas issues them
    together; left alone, it issues each load just before its use (H200: K loop 12.1 us against 15.9)."""
    w, s, z = _int4_fma_load(q_ptrs, s_ptr, z_ptr, k, rg, rn_w, N, num_groups, GROUP, MASKED)
    gm = (k // GROUP + rg[None, :, None, None]) < num_groups
    a, b, c, d, inv_scale, xsum = load_pair_words(pairs_ptr, meta_ptr, k // 32 + pos, P, gm, NC, NB, MASKED)
    dep = tl.xor_sum(tl.xor_sum(w, axis=3), axis=2)[:, :, None, None] ^ tl.xor_sum(a ^ b ^ c ^ d, axis=3,
                                                                                 keep_dims=True)
    t = int4_mac4(w, pairs_by_word(a ^ (dep & zero), b, c, d, NC, NB), NC, NB, BLOCK_N, EMULATE)  # [NC, NB, BN]
    return acc + (s * inv_scale) * (t + (8.0 - z) * xsum)


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _int4_gemv_kernel(
    x_ptr,  # [M, K], last-dim stride 1; with HALF2 the pairs of `quant_x_pairs`
    meta_ptr,  # HALF2: the pairs' scales and sums (`quant_x_pairs`); else unused
    q_ptr,  # [N, Kp / 8] int32
    s_ptr,  # [Kp / G, N] fp16
    z_ptr,  # [Kp / G, N] fp16
    out_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp, num_groups, stride_xm, stride_qn, k_blocks_per_split, num_splits, one_bits, sixteen_bits,
    res_ptr, ss_out_ptr, nw_out_ptr, scaled_ptr,  # ADD_RESIDUAL / SCALE_OUT only (skinny_gemm's `_finish`)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    NUM_STAGES: tl.constexpr, USE_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
    DOT_IEEE: tl.constexpr, USE_PDL: tl.constexpr = False, HALF2: tl.constexpr = False,
    EMULATE: tl.constexpr = False, ADD_RESIDUAL: tl.constexpr = False, SCALE_OUT: tl.constexpr = False,
):
    """The K-loop GEMV: program (tile, split) sums its BLOCK_N rows over its split's K range, on the dot path
    (USE_DOT) or tile by tile in registers (M = 1), there in fp32 or, with HALF2, in packed fp16x2
    (`_int4_half2_tile`, on x converted before the launch)."""
    if USE_PDL:
        gdc_wait()
    NB: tl.constexpr = BLOCK_K // GROUP  # groups per tile
    GW: tl.constexpr = GROUP // 8  # words per group and row (= x elements per slot run)
    one = one_bits.to(tl.uint32, bitcast=True)
    sixteen = sixteen_bits.to(tl.uint32, bitcast=True)
    zero = (num_splits >> 30).to(tl.uint32)  # 0 at run time (splits < 2 ** 30), unknown to the compiler
    tile, split, k_start, k_end, rn, rn_w = _split_tile(Kp, k_blocks_per_split, N, BLOCK_N, BLOCK_K)
    rn64 = rn_w.to(tl.int64)
    rg = tl.arange(0, NB)
    if USE_DOT:
        # One tl.dot per tile (quant_common's _slot_dot): the eight slots as exact (q - z) * s.
        q_ptrs, x_ptrs, xoff, m_mask = _slot_dot_pointers(q_ptr, x_ptr, rn64, M, stride_qn, stride_xm, k_start,
                                                          NB, GW, BLOCK_M, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            g = k // GROUP + rg
            s, z = _load_group_params(s_ptr, z_ptr, g[None, :] * N + rn_w[:, None], (g < num_groups)[None, :],
                                      not EVEN_K)
            w, xs = _slot_dot_load(q_ptrs, x_ptrs, g < num_groups, m_mask, k, xoff, K, EVEN_K)
            acc = _slot_dot(acc, xs,
                            _int4_slot_weights(w, s, z, 0, one, sixteen), _int4_slot_weights(w, s, z, 1, one, sixteen),
                            _int4_slot_weights(w, s, z, 2, one, sixteen), _int4_slot_weights(w, s, z, 3, one, sixteen),
                            _int4_slot_weights(w, s, z, 4, one, sixteen), _int4_slot_weights(w, s, z, 5, one, sixteen),
                            _int4_slot_weights(w, s, z, 6, one, sixteen), _int4_slot_weights(w, s, z, 7, one, sixteen),
                            BLOCK_N, NB, GW, BLOCK_K, DOT_IEEE)
            q_ptrs += BLOCK_K // 8
            x_ptrs += BLOCK_K
        _slot_dot_epilogue(acc, rn, M, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, BLOCK_M, SPLIT)
    else:
        NC: tl.constexpr = GW // 4  # 16-byte chunks per group and row
        rc = tl.arange(0, NC)[:, None, None, None]
        rg4 = rg[None, :, None, None]
        re = tl.arange(0, 4)[None, None, None, :]
        woff = rc * 4 + rg4 * GW + re  # [NC, NB, 1, 4]
        q_ptrs = q_ptr + rn64[None, None, :, None] * stride_qn + k_start // 8 + woff  # [NC, NB, BN, 4]
        acc = tl.zeros([NC, NB, BLOCK_N], dtype=tl.float32)
        if HALF2:
            pos = rg4 * NC + rc  # [NC, NB, 1, 1]: the tile's x positions (`quant_x_pairs`), less k / 32
            for k in tl.range(k_start, k_end, BLOCK_K, num_stages=1):
                acc = _int4_half2_tile(acc, q_ptrs, s_ptr, z_ptr, x_ptr, meta_ptr, k, pos, rg, rn_w, N, num_groups,
                                       Kp // 32, zero, GROUP, NC, NB, BLOCK_N, not EVEN_K, EMULATE)
                q_ptrs += BLOCK_K // 8
        else:
            xoff = rc * 4 + rg4 * GROUP + re
            x_ptrs = x_ptr + k_start + xoff
            for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
                w, s, z = _int4_fma_load(q_ptrs, s_ptr, z_ptr, k, rg, rn_w, N, num_groups, GROUP, not EVEN_K)
                acc = _int4_fma_tile(acc, w, s, z, x_ptrs, k, xoff, K, one, sixteen, GROUP, EVEN_K)
                q_ptrs += BLOCK_K // 8
                x_ptrs += BLOCK_K
        out = tl.sum(tl.sum(acc, axis=0), axis=0)
        _k_loop_epilogue(out, rn, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, res_ptr, ss_out_ptr,
                         nw_out_ptr, scaled_ptr, SPLIT, ADD_RESIDUAL, SCALE_OUT)


@triton.jit
def _int4_dot_slots(w, x0, x1, x2, x3, x4, x5, x6, x7, one, sixteen):
    """sum_S f_S(w) * x_S over the eight slots of words w (fp32; `_int4_slot`'s floats f)."""
    t = _int4_slot(w, 0, one, sixteen) * x0
    t += _int4_slot(w, 1, one, sixteen) * x1
    t += _int4_slot(w, 2, one, sixteen) * x2
    t += _int4_slot(w, 3, one, sixteen) * x3
    t += _int4_slot(w, 4, one, sixteen) * x4
    t += _int4_slot(w, 5, one, sixteen) * x5
    t += _int4_slot(w, 6, one, sixteen) * x6
    t += _int4_slot(w, 7, one, sixteen) * x7
    return t


@triton.jit(do_not_specialize=["num_tiles", "num_splits"])
def _int4_gemv_m1_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr,
    N, K, num_groups, stride_qn, num_tiles, num_splits, one_bits, sixteen_bits,
    ss_in_ptr, num_ss_in, eps,  # X_PRESCALED only: the producer's partial sums of the stream's squares
    res_ptr, ss_out_ptr, nw_out_ptr, scaled_ptr,  # ADD_RESIDUAL / SCALE_OUT only (skinny_gemm's `_finish`)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    EVEN_K: tl.constexpr, SPLIT: tl.constexpr, X_SILU_MUL: tl.constexpr, PREFETCH: tl.constexpr,
    HALF2: tl.constexpr = False, EMULATE: tl.constexpr = False, SPLITS_P2: tl.constexpr = 1,
    TILES_AT_ONCE: tl.constexpr = 1, USE_PDL: tl.constexpr = False, EARLY_LAUNCH: tl.constexpr = False,
    ROW_PARAMS: tl.constexpr = False, X_PRESCALED: tl.constexpr = False, ADD_RESIDUAL: tl.constexpr = False,
    SCALE_OUT: tl.constexpr = False, SS_BLOCK: tl.constexpr = 16,
):
    """Persistent M = 1 GEMV: program p owns K tile p % num_splits and walks row tiles with a stride.

    Its x elements (and their sums, `_int4_fma_tile`'s C and X) are loaded once per program, not once
    per row tile, so the loop body is the weights' loads and FMAs; with PREFETCH the next tile's words
    are in flight while the current one is summed. HALF2: the packed fp16x2 loop of `quant_half2`
    (EMULATE: in Triton ops, for the interpreter). X_PRESCALED: x is the residual stream times the
    RMSNorm's weight, and 1/rms scales each row tile's result; ADD_RESIDUAL (no split): the output is
    y + residual with its s^2 partials, SCALE_OUT also stores it times the next norm's weight.
    """
    if EARLY_LAUNCH:  # the successor's programs may become resident now (see the config's early_launch)
        gdc_launch_dependents()
    GW: tl.constexpr = GROUP // 8
    NB: tl.constexpr = BLOCK_K // GROUP
    NC: tl.constexpr = GW // 4
    one = one_bits.to(tl.uint32, bitcast=True)
    sixteen = sixteen_bits.to(tl.uint32, bitcast=True)
    pid = tl.program_id(0)
    split = pid % num_splits
    step = tl.num_programs(0) // num_splits
    k_start = split * BLOCK_K
    rc = tl.arange(0, NC)[:, None, None, None]
    rg = tl.arange(0, NB)
    rg4 = rg[None, :, None, None]
    re = tl.arange(0, 4)[None, None, None, :]
    woff = k_start // 8 + rc * 4 + rg4 * GW + re  # [NC, NB, 1, 4]
    xoff = rc * 4 + rg4 * GROUP + re
    g = k_start // GROUP + rg
    g_ok = (g < num_groups)[:, None]  # [NB, 1]
    rb = tl.arange(0, BLOCK_N)
    first = pid // num_splits
    rn_w = tl.minimum(first * BLOCK_N + rb, N - 1)
    if PREFETCH:  # weights never depend on the previous kernel: load them before waiting for it
        w = _row_words(q_ptr, rn_w, stride_qn, woff, g_ok, EVEN_K)
        if ROW_PARAMS:
            sz = _row_param_words(s_ptr, rn_w, g, num_groups, g_ok, not EVEN_K, EMULATE)
    if USE_PDL:
        gdc_wait()
    x_ptrs = x_ptr + k_start + xoff
    kx = k_start + xoff
    x0, x1, x2, x3, x4, x5, x6, x7 = _slot_xs(x_ptrs, kx, K, GW, EVEN_K, X_SILU_MUL)
    if X_PRESCALED:
        rstd = _rstd(_load_ss_parts(ss_in_ptr, num_ss_in, 1, 1, SS_BLOCK), K, eps)  # [1]
    else:
        rstd = None
    if HALF2:  # x as scaled fp16 pairs (quant_half2)
        scale, inv_scale = x_scale(x0, x1, x2, x3, x4, x5, x6, x7)
        xp = x_pairs(x6, x0, x3, x5, x2, x4, x1, x7, scale, NC, NB)
        xsum = x_sums(xp, NC, NB)  # [NC, NB, 1]
    else:
        # C = sum of x times the floats' offsets (1 for even slots, 16 for odd), X / 16 = sum of x / 16
        c = tl.sum((x0 + x2 + x4 + x6) + 16.0 * (x1 + x3 + x5 + x7), axis=3)  # [NC, NB, 1]
        xs = tl.sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, axis=3) * 0.0625
    for tile in tl.range(first, num_tiles, step, num_stages=1):  # never pipelined (quant_configs.check_config)
        rn = tile * BLOCK_N + rb
        rn_w = tl.minimum(rn, N - 1)  # past-N rows re-read row N-1: unmasked loads, masked stores
        if ADD_RESIDUAL:  # loaded first: its latency hides behind the tile's weights
            r = tl.load(res_ptr + rn, mask=rn < N, other=0.0)
        else:
            r = None
        if PREFETCH:  # the next tile's words (and row params: their rows clamped to N - 1 are always in bounds)
            nxt = tl.minimum(rn + step * BLOCK_N, N - 1)
            w_next = _row_words(q_ptr, nxt, stride_qn, woff, g_ok, EVEN_K, tile + step, num_tiles)
            if ROW_PARAMS:
                sz_next = _row_param_words(s_ptr, nxt, g, num_groups, g_ok, not EVEN_K, EMULATE)
        else:
            w = _row_words(q_ptr, rn_w, stride_qn, woff, g_ok, EVEN_K)
            if ROW_PARAMS:
                sz = _row_param_words(s_ptr, rn_w, g, num_groups, g_ok, not EVEN_K, EMULATE)
        if ROW_PARAMS:  # [NB, BN]
            s, z = _unpack_row_params(sz)
        else:
            s, z = _load_group_params(s_ptr, z_ptr, g[:, None] * N + rn_w[None, :], g_ok, not EVEN_K)
        if HALF2:
            t = int4_mac4(w, xp, NC, NB, BLOCK_N, EMULATE)  # [NC, NB, BN]
            part = s[None, :, :] * (t + (8.0 - z[None, :, :]) * xsum)
            out = tl.sum(tl.reshape(part, (NC * NB, BLOCK_N)), axis=0) * inv_scale
        else:
            t = tl.sum(_int4_dot_slots(w, x0, x1, x2, x3, x4, x5, x6, x7, one, sixteen), axis=3)  # [NC, NB, BN]
            part = (s * 16.0)[None, :, :] * (t - c - z[None, :, :] * xs)
            out = tl.sum(tl.sum(part, axis=0), axis=0)
        _persistent_store(out, rn, N, out_ptr, ws_ptr, split, SPLIT, tile, rstd, r, ss_out_ptr, nw_out_ptr,
                          scaled_ptr, X_PRESCALED, ADD_RESIDUAL, SCALE_OUT)
        if PREFETCH:
            w = w_next
            if ROW_PARAMS:
                sz = sz_next
    if SPLIT:
        _persistent_reduce(out_ptr, ws_ptr, cnt_ptr, first, num_tiles, step, num_splits, N, BLOCK_N,
                           SPLITS_P2, TILES_AT_ONCE)


@triton.jit
def _int4_dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, K, num_groups, stride_qn, one_bits, sixteen_bits,
                         BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """One group of BLOCK_N rows per program: the eight slots stored at their columns."""
    GW: tl.constexpr = GROUP // 8
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_w = tl.minimum(rn, N - 1)
    g = tl.program_id(1) + tl.arange(0, 1)
    rj = tl.arange(0, GW)
    w = tl.load(q_ptr + rn_w.to(tl.int64)[:, None, None] * stride_qn + (g[:, None] * GW + rj[None, :])[None, :, :])
    w = w.to(tl.uint32, bitcast=True)  # [BN, 1, GW]
    s, z = _load_group_params(s_ptr, z_ptr, g[None, :] * N + rn_w[:, None], None, False)
    row = rn[:, None, None].to(tl.int64) * K
    for S in tl.static_range(8):
        col = (g[:, None] * GROUP + S * GW + rj[None, :])[None, :, :]
        mask = (rn[:, None, None] < N) & (col < K)
        wt = _int4_slot_weights(w, s, z, S, one_bits.to(tl.uint32, bitcast=True), sixteen_bits.to(tl.uint32, bitcast=True))
        tl.store(out_ptr + row + col, wt.to(out_ptr.dtype.element_ty), mask=mask)


def _check(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int, group: int) -> None:
    if group < 32 or group & (group - 1):
        raise ValueError(f"quant_int4: the group size must be a power of two >= 32, got {group}")
    groups = -(-k // group)  # plain integers: the CPU reference path runs without Triton
    n = qweight.shape[0] if qweight.dim() == 2 else -1
    if qweight.dtype != torch.int32 or tuple(qweight.shape) != (n, groups * group // 8) or qweight.stride(1) != 1:
        raise ValueError(f"quant_int4: qweight must be int32 [N, {groups * group // 8}] with unit last stride "
                         f"for K = {k}, group {group}; got {tuple(qweight.shape)} {qweight.dtype}")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t.dtype != torch.float16 or tuple(t.shape) != (groups, n) or not t.is_contiguous():
            raise ValueError(f"quant_int4: {name} must be contiguous fp16 [{groups}, {n}], "
                             f"got {tuple(t.shape)} {t.dtype}")


def int4_dequantize_ref(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int,
                        group: int) -> torch.Tensor:
    """[N, K] fp32 weight: (Q - Z) * S group by group, padding columns dropped."""
    _check(qweight, scales, zeros, k, group)
    n = qweight.shape[0]
    q = unpack_int4(qweight, group).view(n, -1, group).float()  # [N, G, group]
    q.sub_(zeros.float().t()[:, :, None]).mul_(scales.float().t()[:, :, None])  # in place: one buffer
    return q.view(n, -1)[:, :k]


def int4_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int,
                  group: int) -> torch.Tensor:
    """Plain PyTorch: dequantize, fp32 matmul, round once to x.dtype; [M, K] -> [M, N]."""
    return F.linear(x.float(), int4_dequantize_ref(qweight, scales, zeros, k, group)).to(x.dtype)


def int4_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     k: int, group: int, *, silu_mul: bool = False,
                     config: QuantGemvConfig | None = None, row_params: torch.Tensor | None = None,
                     norm_ss: torch.Tensor | None = None, eps: float = 0.0, residual: torch.Tensor | None = None,
                     out_norm_weight: torch.Tensor | None = None):
    """Triton GEMV for 1 <= M <= DOT_MAX_M rows (past 16 on the dot paths); `silu_mul`: x is [M, 2K] gate | up.
    `row_params` (`int4_row_params` of scales and zeros): the persistent M = 1 kernels read it instead (the K
    loops and the dot paths keep the [groups, N] layout). Returns [M, N].

    One row also takes the RMSNorm neighbours that `quant_w8.w8_gemv_triton` documents (`norm_ss`: x is
    the stream prescaled by its producer; `residual`, `out_norm_weight`): the persistent kernels take
    both, the M = 1 K loop the output ones (`quant_common.m1_fusion_problem` names the rules)."""
    _check(qweight, scales, zeros, k, group)
    _check_row_params(row_params, scales)
    x = operand(x, k, silu_mul, "quant_int4")
    m, n = x.shape[0], qweight.shape[0]
    kp = 8 * qweight.shape[1]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    cfg = config or get_config("int4", n, k, m, group, x.device)
    fusions = dict(norm_ss=norm_ss, residual=residual, out_norm_weight=out_norm_weight)
    problem = m1_fusion_problem(x[:, :k], n, kp, cfg, **fusions)
    if problem:
        raise ValueError(f"quant_int4: {problem}")
    if n == 0 or k == 0:
        return out.zero_()
    pairs = cfg.pairs and pairs_ok(x, group)  # (check_config refuses pairs without the dot path)
    check_config(cfg, m, group, "quant_int4", dot_min_k=group if pairs else DOT_MIN_K, four_bit=True,
                 half2_k_loop=True)
    if cfg.persistent:
        return _int4_m1_launch(x, qweight, scales, zeros, k, group, silu_mul, cfg, out, row_params, eps, **fusions)
    if m == 1 and not cfg.use_dot and cfg.num_stages > 1 and half2_ok(cfg, x):  # the pipelined fp16x2 K loop
        pairs_x, meta = int4_x_pairs(x, kp, group, silu_mul)
        rp = row_params if row_params is not None else int4_row_params(scales, zeros)
        return int4_stream_launch(pairs_x, meta, qweight, rp, k, group, cfg, out, residual, out_norm_weight)
    half2 = not cfg.use_dot and cfg.num_stages == 1 and half2_ok(cfg, x)
    if half2:  # one kernel makes the tiles' x (and takes the SiLU kernel's place)
        x, meta = int4_x_pairs(x, kp, group, silu_mul)
    else:
        x, silu_mul = unfused_silu(x, silu_mul, cfg)
        meta = x
    if pairs:
        return int4_pairs_launch(x, qweight, scales, zeros, k, group, cfg, out)
    geo = geometry(cfg, m, n, kp, out)
    ss_out, scaled = fused_outputs(out, geo.tiles, residual, out_norm_weight)
    _int4_gemv_kernel[(geo.tiles, geo.splits)](
        x, meta, qweight, scales, zeros, out, geo.ws, geo.tickets,
        m, n, k, kp, kp // group, x.stride(0), qweight.stride(0), geo.blocks_per_split, geo.splits, *MAGIC,
        ptr_or(residual, out), ss_out, ptr_or(out_norm_weight, out), scaled,
        BLOCK_M=dot_block_m(m) if cfg.use_dot else 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=group,
        NUM_STAGES=cfg.num_stages, USE_DOT=cfg.use_dot, EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1,
        DOT_IEEE=x.dtype == torch.float32, HALF2=half2,
        EMULATE=x.device.type != "cuda", ADD_RESIDUAL=residual is not None, SCALE_OUT=out_norm_weight is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(x.device),
    )
    return fused_result(out, ss_out, scaled, residual, out_norm_weight)


def _int4_m1_launch(x, qweight, scales, zeros, k, group, silu_mul, cfg, out, row_params, eps=0.0, norm_ss=None,
                    residual=None, out_norm_weight=None):
    """The persistent M = 1 kernel: one K tile per program, `programs_per_sm` programs per SM in all."""
    n, kp = qweight.shape[0], 8 * qweight.shape[1]
    geo = persistent_geometry(cfg, n, kp, out)
    ss_out, scaled = fused_outputs(out, geo.tiles, residual, out_norm_weight)
    num_ss = norm_ss.shape[1] if norm_ss is not None else 0
    _int4_gemv_m1_kernel[(geo.programs,)](
        x, qweight, scales if row_params is None else row_params, zeros, out, geo.ws, geo.tickets,
        n, k, kp // group, qweight.stride(0), geo.tiles, geo.splits, *MAGIC,
        ptr_or(norm_ss, out), num_ss, float(eps), ptr_or(residual, out), ss_out, ptr_or(out_norm_weight, out), scaled,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=group,
        EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1, X_SILU_MUL=silu_mul, PREFETCH=cfg.prefetch,
        HALF2=half2_ok(cfg, x), EMULATE=x.device.type != "cuda", ROW_PARAMS=row_params is not None, **geo.reduce,
        X_PRESCALED=norm_ss is not None, ADD_RESIDUAL=residual is not None, SCALE_OUT=out_norm_weight is not None,
        SS_BLOCK=max(16, triton.next_power_of_2(num_ss)),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **persistent_pdl_args(cfg, x.device),
    )
    return fused_result(out, ss_out, scaled, residual, out_norm_weight)


def int4_dequantize_triton(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int, group: int,
                           out: torch.Tensor) -> torch.Tensor:
    """Writes the [N, K] weight into `out` (contiguous, any float dtype)."""
    _check(qweight, scales, zeros, k, group)
    n = qweight.shape[0]
    if tuple(out.shape) != (n, k) or not out.is_contiguous():
        raise ValueError(f"quant_int4: out must be contiguous [{n}, {k}], got {tuple(out.shape)}")
    bn = 32
    _int4_dequant_kernel[(triton.cdiv(n, bn), 8 * qweight.shape[1] // group)](
        qweight, scales, zeros, out, n, k, 8 * qweight.shape[1] // group, qweight.stride(0), *MAGIC,
        BLOCK_N=bn, GROUP=group)
    return out
