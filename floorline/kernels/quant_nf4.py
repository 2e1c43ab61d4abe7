"""NF4 GEMV for decode (bitsandbytes layout, block 64): W[n, k] = CODE[Q[n, k]] * absmax[n, k // 64].

Layout (per merged layer; each checkpoint shard keeps its own double-quantization state):

* `qweight` uint8 [N, K / 2]: high nibble = even column, low nibble = odd column (bitsandbytes order).
* absmax per 64-weight block, either plain fp32 [N, K / 64] or double-quantized (bitsandbytes
  `compress_statistics`): a uint8 code [N, K / 64] into a 256-entry fp32 map, times an fp32 scale
  per 256 consecutive blocks of the shard, plus the shard's offset:
  `absmax = nested_map[row_map[n] + code] * nested_absmax[(row_base[n] + k // 64) // 256] + row_offset[n]`.
  `row_base` (int32 [N]) places row n's blocks in its shard's run of nested groups, `row_map` (int32
  [N]) points at its shard's 256-entry map and `row_offset` (fp32 [N]) repeats the shard's offset, so
  all three load once per program.

The NF4 code lookup is either a gather from the 16-entry table (one L1-resident line; default) or a
select tree over the 16 codebook constants (CODEBOOK_SELECT; no memory traffic, 15 selects per
weight). The benchmark times both. Tiles are [BLOCK_N, BLOCK_K / 64, 32] bytes, as in quant_int4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.kernels.pdl import gdc_wait, pdl_args
from floorline.kernels.quant_common import (
    DOT_BLOCK_M,
    QuantGemvConfig,
    check_config,
    geometry,
    get_config,
    operand,
)
from floorline.kernels.quant_int4 import _load_x
from floorline.kernels.skinny_gemm import _epilogue
from floorline.kernels.triton_compat import tl, triton

BLOCK = 64  # weights per absmax block
NESTED_BLOCK = 256  # absmax blocks per nested (second-level) scale

# The NF4 code: the 16 fp32 values bitsandbytes stores as `quant_map` (normal quantiles, scaled to [-1, 1]).
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


@triton.jit
def _nf4_select(i):
    """CODE[i] for int32 codes 0..15 without a memory access: a select tree over the 16 constants."""
    b0 = (i & 1) != 0
    b1 = (i & 2) != 0
    b2 = (i & 4) != 0
    neg = (i & 8) == 0
    # codes 0..7 (the negative half and zero)
    lo = tl.where(b2,
                  tl.where(b1, tl.where(b0, 0.0, -0.09105003625154495),
                           tl.where(b0, -0.18477343022823334, -0.28444138169288635)),
                  tl.where(b1, tl.where(b0, -0.39491748809814453, -0.5250730514526367),
                           tl.where(b0, -0.6961928009986877, -1.0)))
    # codes 8..15
    hi = tl.where(b2,
                  tl.where(b1, tl.where(b0, 1.0, 0.7229568362236023),
                           tl.where(b0, 0.5626170039176941, 0.44070982933044434)),
                  tl.where(b1, tl.where(b0, 0.33791524171829224, 0.24611230194568634),
                           tl.where(b0, 0.16093020141124725, 0.07958029955625534)))
    return tl.where(neg, lo, hi)


@triton.jit
def _code_values(i, code_ptr, CODEBOOK_SELECT: tl.constexpr):
    if CODEBOOK_SELECT:
        v = _nf4_select(i)
    else:
        v = tl.load(code_ptr + i)
    return v


@triton.jit
def _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED: tl.constexpr,
                  MASKED: tl.constexpr):
    """absmax of blocks kb [NB] of rows rn_w [BN] -> [BN, NB] fp32."""
    offs = rn_w.to(tl.int64)[:, None] * KB + kb[None, :]
    if MASKED:
        a = tl.load(a_ptr + offs, mask=kb_mask[None, :], other=0)
    else:
        a = tl.load(a_ptr + offs)
    if NESTED:
        nested = tl.load(nabs_ptr + (base[:, None] + kb[None, :]) // 256, mask=kb_mask[None, :], other=0.0)
        a = tl.load(nmap_ptr + mbase[:, None] + a.to(tl.int32)) * nested + offset[:, None]
    return a


@triton.jit
def _nf4_weights(b, absmax, code_ptr, CODEBOOK_SELECT: tl.constexpr):
    """uint8 bytes [BN, NB, 32] and absmax [BN, NB] -> fp32 (even, odd) weights."""
    i = b.to(tl.int32)
    a = absmax[:, :, None]
    return _code_values(i >> 4, code_ptr, CODEBOOK_SELECT) * a, _code_values(i & 15, code_ptr, CODEBOOK_SELECT) * a


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _nf4_gemv_kernel(
    x_ptr,  # [M, K] (or [M, 2K] gate | up), last-dim stride 1
    q_ptr,  # [N, K / 2] uint8
    a_ptr,  # [N, K / 64]: fp32 absmax, or uint8 codes (NESTED)
    nabs_ptr, nmap_ptr, base_ptr, off_ptr, map_ptr,  # nested state (NESTED only)
    code_ptr,  # [16] fp32 NF4 code
    out_ptr, ws_ptr, cnt_ptr,
    M, N, K, stride_xm, stride_qn, k_blocks_per_split, num_splits,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    USE_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr, DOT_IEEE: tl.constexpr,
    NESTED: tl.constexpr, CODEBOOK_SELECT: tl.constexpr, X_SILU_MUL: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_wait()
    NB: tl.constexpr = BLOCK_K // 64
    KB = K // 64
    tile = tl.program_id(0)
    split = tl.program_id(1)
    k_start = split * k_blocks_per_split * BLOCK_K
    k_end = tl.minimum(K, k_start + k_blocks_per_split * BLOCK_K)
    rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_w = tl.minimum(rn, N - 1)
    base = rn_w
    mbase = rn_w
    offset = rn_w.to(tl.float32)
    if NESTED:  # per-row nested state, loaded once
        base = tl.load(base_ptr + rn_w)
        mbase = tl.load(map_ptr + rn_w)
        offset = tl.load(off_ptr + rn_w)
    rb = tl.arange(0, NB)
    boff = rb[:, None] * 32 + tl.arange(0, 32)[None, :]  # [NB, 32] byte offsets within a tile
    q_ptrs = q_ptr + rn_w.to(tl.int64)[:, None, None] * stride_qn + (k_start // 2 + boff)[None, :, :]
    if USE_DOT:
        rm = tl.arange(0, BLOCK_M)
        m_mask = rm < M
        rh = tl.arange(0, BLOCK_K // 2)
        x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_start + 2 * rh)[None, :]  # even columns [BM, BK/2]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kb = k // 64 + rb
            kb_mask = kb < KB
            absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED,
                                   not EVEN_K)
            if EVEN_K:
                b = tl.load(q_ptrs, eviction_policy="evict_first")
                xm = m_mask[:, None]
            else:
                b = tl.load(q_ptrs, mask=kb_mask[None, :, None], other=0, eviction_policy="evict_first")
                xm = m_mask[:, None] & (k + 2 * rh < K)[None, :]
            xe = _load_x(x_ptrs, xm, K, X_SILU_MUL)
            xo = _load_x(x_ptrs + 1, xm, K, X_SILU_MUL)
            we, wo = _nf4_weights(b, absmax, code_ptr, CODEBOOK_SELECT)
            we = tl.trans(tl.reshape(we, (BLOCK_N, BLOCK_K // 2)).to(xe.dtype))  # [BK/2, BN]
            wo = tl.trans(tl.reshape(wo, (BLOCK_N, BLOCK_K // 2)).to(xo.dtype))
            if DOT_IEEE:
                acc = tl.dot(xe, we, acc, input_precision="ieee")
                acc = tl.dot(xo, wo, acc, input_precision="ieee")
            else:
                acc = tl.dot(xe, we, acc)
                acc = tl.dot(xo, wo, acc)
            q_ptrs += BLOCK_K // 2
            x_ptrs += BLOCK_K
        c_offs = rm[:, None] * N + rn[None, :]
        mask = m_mask[:, None] & (rn[None, :] < N)
        _epilogue(acc, c_offs, rn[None, :], mask, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split,
                  num_splits, N, M * N, False, SPLIT)
    else:
        x_ptrs = x_ptr + k_start + 2 * boff  # even elements of x, [NB, 32]
        acc3 = tl.zeros([BLOCK_N, NB, 32], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kb = k // 64 + rb
            kb_mask = kb < KB
            absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED,
                                   not EVEN_K)
            if EVEN_K:
                b = tl.load(q_ptrs, eviction_policy="evict_first")
                xe = _load_x(x_ptrs, None, K, X_SILU_MUL, False)
                xo = _load_x(x_ptrs + 1, None, K, X_SILU_MUL, False)
            else:
                b = tl.load(q_ptrs, mask=kb_mask[None, :, None], other=0, eviction_policy="evict_first")
                xe = _load_x(x_ptrs, kb_mask[:, None], K, X_SILU_MUL)
                xo = _load_x(x_ptrs + 1, kb_mask[:, None], K, X_SILU_MUL)
            we, wo = _nf4_weights(b, absmax, code_ptr, CODEBOOK_SELECT)
            acc3 += we * xe.to(tl.float32)[None, :, :] + wo * xo.to(tl.float32)[None, :, :]
            q_ptrs += BLOCK_K // 2
            x_ptrs += BLOCK_K
        acc = tl.sum(tl.sum(acc3, axis=2), axis=1)
        _epilogue(acc, rn, rn, rn < N, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, N, N,
                  False, SPLIT)


@triton.jit
def _nf4_dequant_kernel(q_ptr, a_ptr, nabs_ptr, nmap_ptr, base_ptr, off_ptr, map_ptr, code_ptr, out_ptr, N, K,
                        stride_qn,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NESTED: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 64
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_w = tl.minimum(rn, N - 1)
    k0 = tl.program_id(1) * BLOCK_K
    rb = tl.arange(0, NB)
    kb = k0 // 64 + rb
    kb_mask = kb < K // 64
    base = rn_w
    mbase = rn_w
    offset = rn_w.to(tl.float32)
    if NESTED:
        base = tl.load(base_ptr + rn_w)
        mbase = tl.load(map_ptr + rn_w)
        offset = tl.load(off_ptr + rn_w)
    absmax = _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, K // 64, kb_mask, NESTED, True)
    boff = rb[:, None] * 32 + tl.arange(0, 32)[None, :]
    b = tl.load(q_ptr + rn_w.to(tl.int64)[:, None, None] * stride_qn + (k0 // 2 + boff)[None, :, :],
                mask=kb_mask[None, :, None], other=0)
    we, wo = _nf4_weights(b, absmax, code_ptr, False)
    w = tl.reshape(tl.join(we, wo), (BLOCK_N, BLOCK_K))
    rk = k0 + tl.arange(0, BLOCK_K)
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    tl.store(out_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def nf4_code(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def _check(qweight, absmax, nested) -> None:
    n = qweight.shape[0] if qweight.dim() == 2 else -1
    k = 2 * qweight.shape[1] if qweight.dim() == 2 else -1
    if qweight.dtype != torch.uint8 or k % BLOCK or qweight.stride(1) != 1:
        raise ValueError(f"quant_nf4: qweight must be uint8 [N, K / 2] with K a multiple of {BLOCK} and unit "
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
    idx = torch.stack([qweight >> 4, qweight & 15], dim=-1).reshape(qweight.shape[0], -1).long()
    scale = nf4_absmax_ref(absmax, nested).repeat_interleave(BLOCK, dim=1)
    return code[idx] * scale


def nf4_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None = None,
                 code: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: dequantize, fp32 matmul, round once to x.dtype; [M, K] -> [M, N]."""
    return F.linear(x.float(), nf4_dequantize_ref(qweight, absmax, nested, code)).to(x.dtype)


def _nested_args(absmax: torch.Tensor, nested: tuple | None) -> tuple:
    if nested is None:
        return absmax, absmax, absmax, absmax, absmax  # dummies: NESTED=False never reads them
    return nested


def nf4_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None,
                    code: torch.Tensor, *, silu_mul: bool = False, codebook_select: bool = False,
                    config: QuantGemvConfig | None = None) -> torch.Tensor:
    """Triton GEMV for 1 <= M <= 16 rows; `silu_mul`: x is [M, 2K] gate | up. Returns [M, N]."""
    _check(qweight, absmax, nested)
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    x = operand(x, k, silu_mul, "quant_nf4")
    m = x.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if n == 0 or k == 0:
        return out.zero_()
    cfg = config or get_config("nf4", n, k, m, BLOCK, x.device)
    check_config(cfg, m, BLOCK, "quant_nf4")
    geo = geometry(cfg, m, n, k, out)
    _nf4_gemv_kernel[(geo.tiles, geo.splits)](
        x, qweight, absmax, *_nested_args(absmax, nested), code, out, geo.ws, geo.tickets,
        m, n, k, x.stride(0), qweight.stride(0), geo.blocks_per_split, geo.splits,
        BLOCK_M=DOT_BLOCK_M if cfg.use_dot else 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NUM_STAGES=cfg.num_stages, USE_DOT=cfg.use_dot, EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1,
        DOT_IEEE=x.dtype == torch.float32, NESTED=nested is not None, CODEBOOK_SELECT=codebook_select,
        X_SILU_MUL=silu_mul, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(x.device),
    )
    return out


def nf4_dequantize_triton(qweight: torch.Tensor, absmax: torch.Tensor, nested: tuple | None, code: torch.Tensor,
                          out: torch.Tensor) -> torch.Tensor:
    """Writes the [N, K] weight into `out` (contiguous, any float dtype)."""
    _check(qweight, absmax, nested)
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    if tuple(out.shape) != (n, k) or not out.is_contiguous():
        raise ValueError(f"quant_nf4: out must be contiguous [{n}, {k}], got {tuple(out.shape)}")
    bn, bk = 32, 128
    _nf4_dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
        qweight, absmax, *_nested_args(absmax, nested), code, out, n, k, qweight.stride(0),
        BLOCK_N=bn, BLOCK_K=bk, NESTED=nested is not None)
    return out
