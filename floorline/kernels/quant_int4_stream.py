"""int4's pipelined M = 1 K loop: [row, word] tiles through cp.async, summed in packed fp16x2.

The unpipelined K loop (`quant_int4._int4_gemv_kernel`) loads a tile and then sums it, so a program's
loads and its math never overlap; 8-bit's pipelined K loop keeps several tiles in flight through shared
memory and reaches ~75% of DRAM on the H200. Earlier pipelined 4-bit loops ([chunk, group, row, word]
tiles, fp32 math) lost to 8-way shared-memory bank conflicts. Here a tile is loaded as [row, word], one
arange along a row's words, so cp.async puts a warp's lanes along 512 contiguous bytes and the shared
tile is row-major (conflict-free); it is then reshaped to [row, chunk, word], a chunk being one x
position (4 words, 32 codes, of one group). The scales come from `int4_row_params` loaded [row, group]
(contiguous along the groups) and are copied with the tile; gathered per chunk, they pulled Triton's
layout to lanes along rows (16-way conflicts). The math is `quant_half2`'s on `quant_x_pairs`' x pairs
(made once a call).
"""
from __future__ import annotations

import torch

from floorline.kernels.fusion_args import fused_outputs, fused_result, ptr_or
from floorline.kernels.pdl import gdc_wait, pdl_args
from floorline.kernels.quant_common import _k_loop_epilogue, _split_tile, geometry
from floorline.kernels.quant_half2 import int4_mac4, pairs_by_word
from floorline.kernels.quant_int4_codes import _unpack_row_params
from floorline.kernels.quant_x_pairs import load_pair_words
from floorline.kernels.triton_compat import tl, triton


@triton.jit
def _stream_pairs(pairs_ptr, meta_ptr, pos, P, mask, NP: tl.constexpr, MASKED: tl.constexpr):
    """x pairs of positions pos [1, NP, 1] (`quant_x_pairs`' layout): 16 pair words [1, NP, 1] in `int4_mac4`'s
    order, 1 / scale and the x sum [1, NP]; with MASKED, positions where `mask` is false read as 0."""
    a, b, c, d, inv_scale, xsum = load_pair_words(pairs_ptr, meta_ptr, tl.reshape(pos, (1, NP, 1, 1)), P,
                                                  tl.reshape(mask, (1, NP, 1, 1)) if MASKED else None, 1, NP, MASKED)
    return pairs_by_word(a, b, c, d, 1, NP), tl.reshape(inv_scale, (1, NP)), tl.reshape(xsum, (1, NP))


@triton.jit(do_not_specialize=["k_blocks_per_split", "num_splits"])
def _int4_stream_kernel(
    pairs_ptr, meta_ptr,  # `quant_x_pairs`' x
    q_ptr,  # [N, Kp / 8] int32
    rp_ptr,  # [N, Kp / G] int32: `int4_row_params`
    out_ptr, ws_ptr, cnt_ptr,
    N, Kp, num_groups, stride_qn, k_blocks_per_split, num_splits,
    res_ptr, ss_out_ptr, nw_out_ptr, scaled_ptr,  # ADD_RESIDUAL / SCALE_OUT only (skinny_gemm's `_finish`)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, NUM_STAGES: tl.constexpr,
    EVEN_K: tl.constexpr, SPLIT: tl.constexpr, EMULATE: tl.constexpr, USE_PDL: tl.constexpr = False,
    ADD_RESIDUAL: tl.constexpr = False, SCALE_OUT: tl.constexpr = False,
):
    """Program (tile, split) sums its BLOCK_N rows over its split's K range, NUM_STAGES tiles in flight.
    A tile is [row, chunk, word], a chunk being 4 words (32 codes) of one group: one x position."""
    if USE_PDL:
        gdc_wait()
    NP: tl.constexpr = BLOCK_K // 32  # chunks (x positions) a tile
    NC: tl.constexpr = GROUP // 32  # chunks a group
    NB: tl.constexpr = BLOCK_K // GROUP  # groups a tile
    tile, split, k_start, k_end, rn, rn_w = _split_tile(Kp, k_blocks_per_split, N, BLOCK_N, BLOCK_K)
    rows = rn_w.to(tl.int64)[:, None]
    rp_ = tl.arange(0, NP)[None, :, None]  # [1, NP, 1]
    # [BN, words]: one arange along a row's words, so the copy's layout spreads a warp's lanes along them
    q_ptrs = q_ptr + rows * stride_qn + k_start // 8 + tl.arange(0, BLOCK_K // 8)[None, :]
    rp_ptrs = rp_ptr + rows * num_groups + k_start // GROUP + tl.arange(0, NB)[None, :]
    acc = tl.zeros([BLOCK_N, NP], dtype=tl.float32)
    for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        if EVEN_K:
            w = tl.reshape(tl.load(q_ptrs, eviction_policy="evict_first"), (BLOCK_N, NP, 4))
            sz = tl.load(rp_ptrs)
            xp, inv_scale, xsum = _stream_pairs(pairs_ptr, meta_ptr, k // 32 + rp_, Kp // 32, None, NP, False)
        else:
            ok = (k // 32 + rp_) < Kp // 32  # [1, NP, 1]
            w_ok = tl.reshape(tl.broadcast_to(ok, (1, NP, 4)), (1, BLOCK_K // 8))
            w = tl.reshape(tl.load(q_ptrs, mask=w_ok, other=0, eviction_policy="evict_first"), (BLOCK_N, NP, 4))
            sz = tl.load(rp_ptrs, mask=(k // GROUP + tl.arange(0, NB)[None, :]) < num_groups, other=0)
            xp, inv_scale, xsum = _stream_pairs(pairs_ptr, meta_ptr, k // 32 + rp_, Kp // 32, ok, NP, True)
        t = int4_mac4(w.to(tl.uint32, bitcast=True), xp, BLOCK_N, NP, 1, EMULATE)  # [BN, NP, 1]
        s, z = _unpack_row_params(sz)  # [BN, NB] -> each group's chunks [BN, NP]
        s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, NB, NC)), (BLOCK_N, NP))
        z = tl.reshape(tl.broadcast_to(z[:, :, None], (BLOCK_N, NB, NC)), (BLOCK_N, NP))
        acc += (s * inv_scale) * (tl.reshape(t, (BLOCK_N, NP)) + (8.0 - z) * xsum)
        q_ptrs += BLOCK_K // 8
        rp_ptrs += BLOCK_K // GROUP
    _k_loop_epilogue(tl.sum(acc, axis=1), rn, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, res_ptr,
                     ss_out_ptr, nw_out_ptr, scaled_ptr, SPLIT, ADD_RESIDUAL, SCALE_OUT)


def int4_stream_launch(pairs: torch.Tensor, meta: torch.Tensor, qweight: torch.Tensor, row_params: torch.Tensor,
                       k: int, group: int, cfg, out: torch.Tensor, residual=None, out_norm_weight=None) -> torch.Tensor:
    """The pipelined K loop on x pairs (`quant_x_pairs.int4_x_pairs`) for one row; returns out (or the fused
    outputs, `fusion_args.fused_result`)."""
    n, kp = qweight.shape[0], 8 * qweight.shape[1]
    geo = geometry(cfg, 1, n, kp, out)
    ss_out, scaled = fused_outputs(out, geo.tiles, residual, out_norm_weight)
    _int4_stream_kernel[(geo.tiles, geo.splits)](
        pairs, meta, qweight, row_params, out, geo.ws, geo.tickets,
        n, kp, kp // group, qweight.stride(0), geo.blocks_per_split, geo.splits,
        ptr_or(residual, out), ss_out, ptr_or(out_norm_weight, out), scaled,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=group, NUM_STAGES=cfg.num_stages,
        EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1, EMULATE=out.device.type != "cuda",
        ADD_RESIDUAL=residual is not None, SCALE_OUT=out_norm_weight is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(out.device),
    )
    return fused_result(out, ss_out, scaled, residual, out_norm_weight)
