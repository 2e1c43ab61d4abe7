"""NF4 GEMV for decode (bitsandbytes' code, block 64): W[n, k] = CODE[Q[n, k]] * absmax[n, k // 64].

Layout (per merged layer; each checkpoint shard keeps its own double-quantization state):

* `qweight` int32 [N, K / 8]: eight codes a word, slot-major within each 64-weight block, slot s
  at bits 4s (`quant_packing`); bitsandbytes' bytes are converted at load and back at export.
* absmax per 64-weight block, either plain fp32 [N, K / 64] or double-quantized (bitsandbytes
  `compress_statistics`): a uint8 code [N, K / 64] into a 256-entry fp32 map, times an fp32 scale
  per 256 consecutive blocks of the shard, plus the shard's offset:
  `absmax = nested_map[row_map[n] + code] * nested_absmax[(row_base[n] + k // 64) // 256] + row_offset[n]`.

The code lookup (`nf4_lookup`) is a warp shuffle on the GPU: lane l holds CODE[l % 16] (fp32, so the
dequantization is exactly the reference's), and `shfl.idx` with the word shifted to the slot reads
it. The interpreter takes a gather from the 16-entry table (or a select tree). The M = 1 path
factors absmax out of each block's sum (one FMA per weight). For 2..64 rows with 16-bit activations
configs with `pairs` take `quant_pairs`' NF4 dots; the first dot path (here) scales the codes, rounds
them to the activation dtype and joins the slots into one tile for a single `tl.dot`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.kernels.fusion_args import fused_outputs, fused_result, ptr_or
from floorline.kernels.nf4_lookup import NF4_CODE, lookup_id, nf4_code_of, nf4_lane_table
from floorline.kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_args
from floorline.kernels.quant_common import (
    _k_loop_epilogue,
    _load_x,
    _persistent_reduce,
    _persistent_store,
    _row_words,
    _slot_dot,
    _slot_dot_epilogue,
    _slot_dot_load,
    _slot_dot_pointers,
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
from floorline.kernels.quant_half2 import nf4_mac4, x_pairs, x_scale
from floorline.kernels.quant_nf4_state import _block_absmax, _row_state
from floorline.kernels.quant_packing import unpack_nf4
from floorline.kernels.quant_pairs import nf4_pairs_launch, pairs_ok
from floorline.kernels.skinny_gemm import (
    _load_ss_parts,
    _rstd,
)
from floorline.kernels.triton_compat import tl, triton


BLOCK = 64  # weights per absmax block
NESTED_BLOCK = 256  # absmax blocks per nested (second-level) scale


@triton.jit
def _nf4_fma_load(q_ptrs, a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, k, rb, KB, NESTED: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """The K loop's tile at k: words [2, NB, BN, 4] (uint32) and the blocks' absmax [BN, NB] (blocks past
    the end read as zero words unless EVEN_K)."""
    kb = k // 64 + rb
    kb_mask = kb < KB
    absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED, not EVEN_K)
    if EVEN_K:
        w = tl.load(q_ptrs, eviction_policy="evict_first")
    else:
        w = tl.load(q_ptrs, mask=kb_mask[None, :, None, None], other=0, eviction_policy="evict_first")
    return w.to(tl.uint32, bitcast=True), absmax


@triton.jit
def _nf4_fma_tile(acc, w, absmax, x_ptrs, code_ptr, table, k, rb, KB, K, LOOKUP: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """acc [2, NB, BN] + each block's absmax times its code-times-x sums, over the tile at k."""
    kb_mask = k // 64 + rb < KB
    t = tl.zeros(w.shape, dtype=tl.float32)
    for S in tl.static_range(8):
        if EVEN_K:
            xs = _load_x(x_ptrs + S * 8, None, K, False, False)
        else:
            xs = _load_x(x_ptrs + S * 8, kb_mask[None, :, None, None], K, False)
        t += nf4_code_of(w, S, code_ptr, table, LOOKUP) * xs.to(tl.float32)
    return acc + tl.trans(absmax)[None, :, :] * tl.sum(t, axis=3)  # the block's absmax, once per 4 words


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _nf4_gemv_kernel(
    x_ptr,  # [M, K] (or [M, 2K] gate | up), last-dim stride 1
    q_ptr,  # [N, K / 8] int32
    a_ptr,  # [N, K / 64]: fp32 absmax, or uint8 codes (NESTED)
    nabs_ptr, nmap_ptr, base_ptr, off_ptr, map_ptr,  # nested state (NESTED only)
    code_ptr,  # [16] fp32 NF4 code
    out_ptr, ws_ptr, cnt_ptr,
    M, N, K, stride_xm, stride_qn, k_blocks_per_split, num_splits,
    res_ptr, ss_out_ptr, nw_out_ptr, scaled_ptr,  # ADD_RESIDUAL / SCALE_OUT only (skinny_gemm's `_finish`)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    USE_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr, DOT_IEEE: tl.constexpr,
    NESTED: tl.constexpr, LOOKUP: tl.constexpr, USE_PDL: tl.constexpr = False,
    ADD_RESIDUAL: tl.constexpr = False, SCALE_OUT: tl.constexpr = False,
):
    NB: tl.constexpr = BLOCK_K // 64
    KB = K // 64
    tile, split, k_start, k_end, rn, rn_w = _split_tile(K, k_blocks_per_split, N, BLOCK_N, BLOCK_K)
    rn64 = rn_w.to(tl.int64)
    base, offset, mbase = _row_state(base_ptr, off_ptr, map_ptr, rn_w, NESTED)
    rb = tl.arange(0, NB)
    if USE_DOT:
        if USE_PDL:
            gdc_wait()
        # One tl.dot per tile (quant_common's _slot_dot): the eight slots as code * absmax; 8 words a block.
        q_ptrs, x_ptrs, xoff, m_mask = _slot_dot_pointers(q_ptr, x_ptr, rn64, M, stride_qn, stride_xm, k_start,
                                                          NB, 8, BLOCK_M, BLOCK_K)
        table = nf4_lane_table(tl.zeros([BLOCK_N, NB, 8], dtype=tl.int32), LOOKUP)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kb = k // 64 + rb
            kb_mask = kb < KB
            absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED,
                                   not EVEN_K)[:, :, None]
            w, xs = _slot_dot_load(q_ptrs, x_ptrs, kb_mask, m_mask, k, xoff, K, EVEN_K)
            acc = _slot_dot(acc, xs,
                            nf4_code_of(w, 0, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 1, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 2, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 3, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 4, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 5, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 6, code_ptr, table, LOOKUP) * absmax,
                            nf4_code_of(w, 7, code_ptr, table, LOOKUP) * absmax,
                            BLOCK_N, NB, 8, BLOCK_K, DOT_IEEE)
            q_ptrs += BLOCK_K // 8
            x_ptrs += BLOCK_K
        _slot_dot_epilogue(acc, rn, M, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, BLOCK_M, SPLIT)
    else:
        # [2, NB, BN, 4] tiles (half of a block, block, row, word): K axes first, so that lanes run along
        # K and each thread keeps several rows, which share its x elements (see quant_int4).
        rc = tl.arange(0, 2)[:, None, None, None]
        rb4 = rb[None, :, None, None]
        re = tl.arange(0, 4)[None, None, None, :]
        woff = rc * 4 + rb4 * 8 + re  # [2, NB, 1, 4] words
        xoff = rc * 4 + rb4 * 64 + re
        q_ptrs = q_ptr + rn64[None, None, :, None] * stride_qn + k_start // 8 + woff
        x_ptrs = x_ptr + k_start + xoff
        table = nf4_lane_table(tl.zeros([2, NB, BLOCK_N, 4], dtype=tl.int32), LOOKUP)
        # The first tile's weights and absmax never depend on the previous kernel: they are requested before
        # waiting for it, which overlaps them with its tail where it launches this one early (PDL). H200, NF4
        # batch-1 decode at 2048: 2.926 / 2.929 -> 2.916 / 2.902 ms a step; the same peel in int4's K loop lost
        # (2.351 / 2.356 -> 2.398 / 2.389), so that one waits first.
        w, absmax = _nf4_fma_load(q_ptrs, a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, k_start, rb, KB,
                                  NESTED, EVEN_K)
        if USE_PDL:
            gdc_wait()
        acc = _nf4_fma_tile(tl.zeros([2, NB, BLOCK_N], dtype=tl.float32), w, absmax, x_ptrs, code_ptr, table,
                            k_start, rb, KB, K, LOOKUP, EVEN_K)
        for k in tl.range(k_start + BLOCK_K, k_end, BLOCK_K, num_stages=NUM_STAGES):
            q_ptrs += BLOCK_K // 8
            x_ptrs += BLOCK_K
            w, absmax = _nf4_fma_load(q_ptrs, a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, k, rb, KB,
                                      NESTED, EVEN_K)
            acc = _nf4_fma_tile(acc, w, absmax, x_ptrs, code_ptr, table, k, rb, KB, K, LOOKUP, EVEN_K)
        out = tl.sum(tl.sum(acc, axis=0), axis=0)
        _k_loop_epilogue(out, rn, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, res_ptr, ss_out_ptr,
                         nw_out_ptr, scaled_ptr, SPLIT, ADD_RESIDUAL, SCALE_OUT)


@triton.jit
def _nf4_dot_slots(w, x0, x1, x2, x3, x4, x5, x6, x7, code_ptr, table, LOOKUP: tl.constexpr):
    """sum_S CODE[slot S of w] * x_S over the eight slots of words w (fp32)."""
    t = nf4_code_of(w, 0, code_ptr, table, LOOKUP) * x0
    t += nf4_code_of(w, 1, code_ptr, table, LOOKUP) * x1
    t += nf4_code_of(w, 2, code_ptr, table, LOOKUP) * x2
    t += nf4_code_of(w, 3, code_ptr, table, LOOKUP) * x3
    t += nf4_code_of(w, 4, code_ptr, table, LOOKUP) * x4
    t += nf4_code_of(w, 5, code_ptr, table, LOOKUP) * x5
    t += nf4_code_of(w, 6, code_ptr, table, LOOKUP) * x6
    t += nf4_code_of(w, 7, code_ptr, table, LOOKUP) * x7
    return t


@triton.jit(do_not_specialize=["num_tiles", "num_splits"])
def _nf4_gemv_m1_kernel(
    x_ptr, q_ptr, a_ptr, nabs_ptr, nmap_ptr, base_ptr, off_ptr, map_ptr, code_ptr, out_ptr, ws_ptr, cnt_ptr,
    N, K, stride_qn, num_tiles, num_splits,
    ss_in_ptr, num_ss_in, eps,  # X_PRESCALED only: the producer's partial sums of the stream's squares
    res_ptr, ss_out_ptr, nw_out_ptr, scaled_ptr,  # ADD_RESIDUAL / SCALE_OUT only (skinny_gemm's `_finish`)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr, NESTED: tl.constexpr, LOOKUP: tl.constexpr, X_SILU_MUL: tl.constexpr,
    PREFETCH: tl.constexpr, HALF2: tl.constexpr = False, SPLITS_P2: tl.constexpr = 1,
    TILES_AT_ONCE: tl.constexpr = 1, USE_PDL: tl.constexpr = False, EARLY_LAUNCH: tl.constexpr = False,
    ASM_LOADS: tl.constexpr = False, X_PRESCALED: tl.constexpr = False, ADD_RESIDUAL: tl.constexpr = False,
    SCALE_OUT: tl.constexpr = False, SS_BLOCK: tl.constexpr = 16,
):
    """Persistent M = 1 GEMV (quant_int4's `_int4_gemv_m1_kernel`, with NF4 codes and block absmax):
    program p owns K tile p % num_splits, loads its x once and walks row tiles with a stride. HALF2:
    the packed fp16x2 loop of `quant_half2` (emulated in Triton ops unless LOOKUP is the shuffle).
    X_PRESCALED, ADD_RESIDUAL, SCALE_OUT: the RMSNorm neighbours, as in the int4 kernel."""
    if EARLY_LAUNCH:  # the successor's programs may become resident now (see the config's early_launch)
        gdc_launch_dependents()
    NB: tl.constexpr = BLOCK_K // 64
    KB = K // 64
    pid = tl.program_id(0)
    split = pid % num_splits
    step = tl.num_programs(0) // num_splits
    k_start = split * BLOCK_K
    # [2, NB, BN, 4] tiles (half of a block, block, row, word), as in `_nf4_gemv_kernel`
    rc = tl.arange(0, 2)[:, None, None, None]
    rb = tl.arange(0, NB)
    rb4 = rb[None, :, None, None]
    re = tl.arange(0, 4)[None, None, None, :]
    woff = k_start // 8 + rc * 4 + rb4 * 8 + re  # [2, NB, 1, 4]
    xoff = rc * 4 + rb4 * 64 + re
    kb = k_start // 64 + rb
    kb_mask = kb < KB
    rr = tl.arange(0, BLOCK_N)
    first = pid // num_splits
    if PREFETCH:  # weights never depend on the previous kernel: load them before waiting for it
        w = _row_words(q_ptr, tl.minimum(first * BLOCK_N + rr, N - 1), stride_qn, woff, kb_mask[:, None], EVEN_K)
    if USE_PDL:
        gdc_wait()
    x_ptrs = x_ptr + k_start + xoff
    kx = k_start + xoff
    x0, x1, x2, x3, x4, x5, x6, x7 = _slot_xs(x_ptrs, kx, K, 8, EVEN_K, X_SILU_MUL)
    if X_PRESCALED:
        rstd = _rstd(_load_ss_parts(ss_in_ptr, num_ss_in, 1, 1, SS_BLOCK), K, eps)  # [1]
    else:
        rstd = None
    if HALF2:  # x as scaled fp16 pairs (quant_half2)
        table = nf4_lane_table(tl.zeros([2, NB, BLOCK_N], dtype=tl.int32), LOOKUP, HALF2=True)
        scale, inv_scale = x_scale(x0, x1, x2, x3, x4, x5, x6, x7)
        xp = x_pairs(x0, x1, x2, x3, x4, x5, x6, x7, scale, 2, NB)
    else:
        table = nf4_lane_table(tl.zeros([2, NB, BLOCK_N, 4], dtype=tl.int32), LOOKUP)
    for tile in tl.range(first, num_tiles, step, num_stages=1):  # never pipelined (quant_configs.check_config)
        rn = tile * BLOCK_N + rr
        rn_w = tl.minimum(rn, N - 1)  # past-N rows re-read row N-1: unmasked loads, masked stores
        if ADD_RESIDUAL:  # loaded first: its latency hides behind the tile's weights
            r = tl.load(res_ptr + rn, mask=rn < N, other=0.0)
        else:
            r = None
        if PREFETCH:
            nxt = tl.minimum(rn + step * BLOCK_N, N - 1)
            w_next = _row_words(q_ptr, nxt, stride_qn, woff, kb_mask[:, None], EVEN_K, tile + step, num_tiles)
        else:
            w = _row_words(q_ptr, rn_w, stride_qn, woff, kb_mask[:, None], EVEN_K)
        base, offset, mbase = _row_state(base_ptr, off_ptr, map_ptr, rn_w, NESTED, ASM_LOADS)
        absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED,
                               not EVEN_K, ASM_LOADS)  # [BN, NB]
        if HALF2:
            t = nf4_mac4(w, xp, table, code_ptr, 2, NB, BLOCK_N, LOOKUP)  # [2, NB, BN]
            out = tl.sum(tl.reshape(tl.trans(absmax)[None, :, :] * t, (2 * NB, BLOCK_N)), axis=0) * inv_scale
        else:
            t = tl.sum(_nf4_dot_slots(w, x0, x1, x2, x3, x4, x5, x6, x7, code_ptr, table, LOOKUP), axis=3)
            out = tl.sum(tl.sum(tl.trans(absmax)[None, :, :] * t, axis=0), axis=0)
        _persistent_store(out, rn, N, out_ptr, ws_ptr, split, SPLIT, tile, rstd, r, ss_out_ptr, nw_out_ptr,
                          scaled_ptr, X_PRESCALED, ADD_RESIDUAL, SCALE_OUT)
        if PREFETCH:
            w = w_next
    if SPLIT:
        _persistent_reduce(out_ptr, ws_ptr, cnt_ptr, first, num_tiles, step, num_splits, N, BLOCK_N,
                           SPLITS_P2, TILES_AT_ONCE)


@triton.jit
def _nf4_dequant_kernel(q_ptr, a_ptr, nabs_ptr, nmap_ptr, base_ptr, off_ptr, map_ptr, code_ptr, out_ptr, N, K,
                        stride_qn, BLOCK_N: tl.constexpr, NB: tl.constexpr, NESTED: tl.constexpr,
                        LOOKUP: tl.constexpr):
    """NB blocks of BLOCK_N rows per program: the eight slots stored at their columns."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_w = tl.minimum(rn, N - 1)
    kb = tl.program_id(1) * NB + tl.arange(0, NB)
    kb_mask = kb < K // 64
    base, offset, mbase = _row_state(base_ptr, off_ptr, map_ptr, rn_w, NESTED)
    absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, K // 64, kb_mask, NESTED,
                           True)[:, :, None]
    rj = tl.arange(0, 8)
    w = tl.load(q_ptr + rn_w.to(tl.int64)[:, None, None] * stride_qn + (kb[:, None] * 8 + rj[None, :])[None, :, :],
                mask=kb_mask[None, :, None], other=0).to(tl.uint32, bitcast=True)  # [BN, NB, 8]
    table = nf4_lane_table(tl.zeros([BLOCK_N, NB, 8], dtype=tl.int32), LOOKUP)
    row = rn[:, None, None].to(tl.int64) * K
    mask = (rn[:, None, None] < N) & kb_mask[None, :, None]
    for S in tl.static_range(8):
        col = (kb[:, None] * 64 + S * 8 + rj[None, :])[None, :, :]
        wt = nf4_code_of(w, S, code_ptr, table, LOOKUP) * absmax
        tl.store(out_ptr + row + col, wt.to(out_ptr.dtype.element_ty), mask=mask)


def nf4_code(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def _check(qweight, absmax, nested) -> None:
    n = qweight.shape[0] if qweight.dim() == 2 else -1
    k = 8 * qweight.shape[1] if qweight.dim() == 2 else -1
    if qweight.dtype != torch.int32 or k % BLOCK or qweight.stride(1) != 1:
        raise ValueError(f"quant_nf4: qweight must be int32 [N, K / 8] with K a multiple of {BLOCK} and unit "
                         f"last stride, got {tuple(qweight.shape)} {qweight.dtype}")
    want = torch.uint8 if nested is not None else torch.float32
    if absmax.dtype != want or tuple(absmax.shape) != (n, k // BLOCK) or not absmax.is_contiguous():
        raise ValueError(f"quant_nf4: absmax must be contiguous {want} [{n}, {k // BLOCK}], got "
                         f"{tuple(absmax.shape)} {absmax.dtype}")
    if nested is not None:
        nested_absmax, nested_map, row_base, row_offset, row_map = nested
        if nested_map.numel() % 256 or nested_absmax.dtype != torch.float32 or nested_map.dtype != torch.float32:
            raise ValueError("quant_nf4: nested state needs fp32 nested_absmax and fp32 maps of 256 entries")
        if row_base.dtype != torch.int32 or row_map.dtype != torch.int32 or row_offset.dtype != torch.float32 \
                or not row_base.numel() == row_map.numel() == row_offset.numel() == n:
            raise ValueError(f"quant_nf4: row_base, row_map (int32) and row_offset (fp32) must have {n} entries")


def nf4_absmax_ref(absmax: torch.Tensor, nested: tuple | None) -> torch.Tensor:
    """[N, K / 64] fp32 block absmax (decoding the double quantization when `nested` is given)."""
    if nested is None:
        return absmax.float()
    nested_absmax, nested_map, row_base, row_offset, row_map = nested
    kb = torch.arange(absmax.shape[1], device=absmax.device)
    group = (row_base.long()[:, None] + kb[None, :]) // NESTED_BLOCK
    return nested_map.reshape(-1)[row_map.long()[:, None] + absmax.long()] * nested_absmax[group] + row_offset[:, None]


def nf4_dequantize_ref(qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None = None,
                       code: torch.Tensor | None = None) -> torch.Tensor:
    """[N, K] fp32 weight. `nested` = (nested_absmax, nested_map, row_base, row_offset, row_map) or None."""
    _check(qweight, absmax, nested)
    code = nf4_code(qweight.device) if code is None else code.float()
    n = qweight.shape[0]
    # index_select takes int32 indices (no int64 copy of the codes): 1.7x faster than code[idx.long()] on the CPU
    w = code.index_select(0, unpack_nf4(qweight, BLOCK).view(-1).int()).view(n, -1, BLOCK)  # [N, K / 64, 64]
    return w.mul_(nf4_absmax_ref(absmax, nested)[:, :, None]).view(n, -1)


def nf4_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None = None,
                 code: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: dequantize, fp32 matmul, round once to x.dtype; [M, K] -> [M, N]."""
    return F.linear(x.float(), nf4_dequantize_ref(qweight, absmax, nested, code)).to(x.dtype)


def _nested_args(absmax: torch.Tensor, nested: tuple | None) -> tuple:
    if nested is None:
        return absmax, absmax, absmax, absmax, absmax  # dummies: NESTED=False never reads them
    return nested


def nf4_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None,
                    code: torch.Tensor, *, silu_mul: bool = False, lookup: str | None = None,
                    config: QuantGemvConfig | None = None, norm_ss: torch.Tensor | None = None, eps: float = 0.0,
                    residual: torch.Tensor | None = None, out_norm_weight: torch.Tensor | None = None):
    """Triton GEMV for 1 <= M <= DOT_MAX_M rows (past 16 on the dot paths); `silu_mul`: x is [M, 2K] gate | up.
    Returns [M, N].

    `lookup`: one of LOOKUPS; None takes the shuffle on CUDA, the gather elsewhere (the interpreter).
    `norm_ss`, `eps`, `residual`, `out_norm_weight`: the RMSNorm neighbours of `quant_int4.int4_gemv_triton`.
    """
    _check(qweight, absmax, nested)
    n, k = qweight.shape[0], 8 * qweight.shape[1]
    x = operand(x, k, silu_mul, "quant_nf4")
    m = x.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    cfg = config or get_config("nf4", n, k, m, BLOCK, x.device)
    problem = m1_fusion_problem(x[:, :k], n, k, cfg, norm_ss, residual, out_norm_weight)
    if problem:
        raise ValueError(f"quant_nf4: {problem}")
    if n == 0 or k == 0:
        return out.zero_()
    pairs = cfg.pairs and pairs_ok(x, BLOCK) and lookup in (None, "shfl")  # it has its own shuffles
    check_config(cfg, m, BLOCK, "quant_nf4", dot_min_k=BLOCK if pairs else DOT_MIN_K, four_bit=True)
    x, silu_mul = unfused_silu(x, silu_mul, cfg)
    if pairs:
        return nf4_pairs_launch(x, qweight, absmax, _nested_args(absmax, nested), nested is not None, code, cfg, out)
    if cfg.persistent:
        geo = persistent_geometry(cfg, n, k, out)
        ss_out, scaled = fused_outputs(out, geo.tiles, residual, out_norm_weight)
        num_ss = norm_ss.shape[1] if norm_ss is not None else 0
        _nf4_gemv_m1_kernel[(geo.programs,)](
            x, qweight, absmax, *_nested_args(absmax, nested), code, out, geo.ws, geo.tickets,
            n, k, qweight.stride(0), geo.tiles, geo.splits,
            ptr_or(norm_ss, out), num_ss, float(eps), ptr_or(residual, out), ss_out, ptr_or(out_norm_weight, out), scaled,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, EVEN_K=k % cfg.block_k == 0,
            SPLIT=geo.splits > 1, NESTED=nested is not None, LOOKUP=lookup_id(lookup, x.device),
            X_SILU_MUL=silu_mul, PREFETCH=cfg.prefetch, HALF2=half2_ok(cfg, x), ASM_LOADS=x.device.type == "cuda",
            X_PRESCALED=norm_ss is not None, ADD_RESIDUAL=residual is not None, SCALE_OUT=out_norm_weight is not None,
            SS_BLOCK=max(16, triton.next_power_of_2(num_ss)),
            **geo.reduce, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **persistent_pdl_args(cfg, x.device))
        return fused_result(out, ss_out, scaled, residual, out_norm_weight)
    geo = geometry(cfg, m, n, k, out)
    ss_out, scaled = fused_outputs(out, geo.tiles, residual, out_norm_weight)
    _nf4_gemv_kernel[(geo.tiles, geo.splits)](
        x, qweight, absmax, *_nested_args(absmax, nested), code, out, geo.ws, geo.tickets,
        m, n, k, x.stride(0), qweight.stride(0), geo.blocks_per_split, geo.splits,
        ptr_or(residual, out), ss_out, ptr_or(out_norm_weight, out), scaled,
        BLOCK_M=dot_block_m(m) if cfg.use_dot else 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NUM_STAGES=cfg.num_stages, USE_DOT=cfg.use_dot, EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1,
        DOT_IEEE=x.dtype == torch.float32, NESTED=nested is not None, LOOKUP=lookup_id(lookup, x.device),
        ADD_RESIDUAL=residual is not None, SCALE_OUT=out_norm_weight is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(x.device),
    )
    return fused_result(out, ss_out, scaled, residual, out_norm_weight)


def nf4_dequantize_triton(qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None, code: torch.Tensor,
                          out: torch.Tensor, lookup: str | None = None) -> torch.Tensor:
    """Writes the [N, K] weight into `out` (contiguous, any float dtype)."""
    _check(qweight, absmax, nested)
    n, k = qweight.shape[0], 8 * qweight.shape[1]
    if tuple(out.shape) != (n, k) or not out.is_contiguous():
        raise ValueError(f"quant_nf4: out must be contiguous [{n}, {k}], got {tuple(out.shape)}")
    bn, nb = 32, 2
    _nf4_dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(k // BLOCK, nb))](
        qweight, absmax, *_nested_args(absmax, nested), code, out, n, k, qweight.stride(0),
        BLOCK_N=bn, NB=nb, NESTED=nested is not None, LOOKUP=lookup_id(lookup, out.device))
    return out
