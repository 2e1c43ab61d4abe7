"""8-bit weight GEMV for decode (int8 or fp8 e4m3, one fp32 scale per output channel): `y = x (s * Q)^T`.

Q is [N, K] uint8: int8 codes stored offset by 128 (q + 128), fp8 kept as its raw e4m3 bits. s is
[N] fp32. The per-channel scale factors out of the K sum, so the loop is skinny_gemm's with the bytes
converted in registers and s applied once in the epilogue. Neither conversion uses I2F (a
quarter-rate unit: one a weight caps an int8 GEMV below the memory floor):

* int8: the offset byte OR-ed into the bits of 2**23 is the float 2**23 + q + 128; one FADD takes
  2**23 + 128 off, exactly.
* fp8, M = 1: the hardware e4m3x2 -> f16x2 conversion, then f16 -> f32 (a full-rate HADD2), exact.
* fp8, dot path: the byte moved to the top of a word and shifted right arithmetically by 4, masked
  to the sign and the 7 exponent/mantissa bits, is the fp32 whose value is exactly value * 2**-120
  (e4m3 subnormals become fp32 subnormals, which FMA and the bf16 conversion keep); the 2**120
  joins the row scale. (The dequantization kernel builds fp16 bits instead: value / 256.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.kernels.activation import silu_and_mul
from floorline.kernels.fusion_args import fused_outputs, fused_result, layout_problem, ptr_or
from floorline.kernels.pdl import early_launch_args, gdc_launch_dependents, gdc_wait
from floorline.kernels.quant_common import (
    _load_x,
    _split_tile,
    default_config_fuses,
    dot_block_m,
    geometry,
    operand,
)
from floorline.kernels.quant_configs import QuantGemvConfig, check_config, get_config
from floorline.kernels.skinny_gemm import (
    _epilogue,
    _load,
    _load_ss_parts,
    _rstd,
)
from floorline.kernels.triton_compat import tl, triton

K_UNIT = 16  # block_k granularity


@triton.jit
def _bytes_to_float(b, FP8: tl.constexpr):
    """uint8 codes -> exact fp32: int8 q (stored q + 128), or fp8 e4m3 value * 2**-120 (module docstring)."""
    i = b.to(tl.int32)
    if FP8:
        bits = ((i << 24) >> 4) & -0x78100000  # 0x87F00000: the sign and bits 20..26
    else:
        bits = i | 0x4B000000
    w = bits.to(tl.float32, bitcast=True)
    if not FP8:
        w = w - 8388736.0  # 2**23 + 128
    return w


@triton.jit
def _bytes_to_fma_float(b, FP8: tl.constexpr):
    """The M = 1 path's exact fp32 weights: int8 q as `_bytes_to_float` makes it; fp8 as its value, by
    the hardware e4m3x2 -> f16x2 conversion and a full-rate f16 -> f32 (sm_90 SASS, `scripts/sass_count.py
    w8 --fp8`: 3.7 instructions a weight in the loop instead of 6.0 for the bit trick, whose 2**-120 the
    FMA path then skips)."""
    if FP8:
        return b.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    return _bytes_to_float(b, FP8)


@triton.jit
def _bytes_to_dequant(b, FP8: tl.constexpr):
    """uint8 codes -> exact float: int8 q as fp32, fp8 as fp16 holding value / 256 (normal range)."""
    if FP8:
        i = b.to(tl.int32)
        w = (((i & 0x80) << 8) | ((i & 0x7F) << 7)).to(tl.int16).to(tl.float16, bitcast=True)
    else:
        w = _bytes_to_float(b, FP8)
    return w


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _w8_gemv_kernel(
    x_ptr,  # [M, K] (or [M, 2K] gate | up), last-dim stride 1
    w_ptr,  # [N, K] int8 or uint8 (fp8 bits)
    s_ptr,  # [N] fp32
    out_ptr,  # [M, N] contiguous
    ws_ptr,  # [num_splits, M, N] fp32 (SPLIT only)
    cnt_ptr,  # int32 tickets (SPLIT only)
    M, N, K, stride_xm, stride_wn, k_blocks_per_split, num_splits,
    ss_in_ptr,  # [1, num_ss_in] fp32 partial sums of x^2 from x's producer (X_PRESCALED only)
    num_ss_in,
    eps,
    res_ptr,  # [1, N] residual (ADD_RESIDUAL only)
    ss_out_ptr,  # [1, tiles] fp32 partial sums of the output's squares (ADD_RESIDUAL only)
    nw_out_ptr,  # [N] the next RMSNorm's weight (SCALE_OUT only)
    scaled_ptr,  # [1, N] output * nw_out (SCALE_OUT only)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    USE_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr, DOT_IEEE: tl.constexpr,
    FP8: tl.constexpr, FP16_X: tl.constexpr = False, USE_PDL: tl.constexpr = False,
    EARLY_LAUNCH: tl.constexpr = False,
    X_PRESCALED: tl.constexpr = False,  # M = 1 only: x is stream * norm weight; 1/rms scales the sum
    ADD_RESIDUAL: tl.constexpr = False,  # M = 1 only: the output is y + residual, with its s^2 partials
    SCALE_OUT: tl.constexpr = False,  # with ADD_RESIDUAL: also stores the output times nw_out
    SS_BLOCK: tl.constexpr = 16,
):
    if EARLY_LAUNCH:
        # The next kernel may launch (it reads this one's output after gdc_wait): on the H200 the 8-bit steps
        # measured 0.04-0.06 ms faster (the 4-bit GEMVs choose per config: `QuantGemvConfig.early_launch`).
        gdc_launch_dependents()
    if USE_PDL:
        # Before any load: loading the first weight tile ahead of the wait, as skinny_gemm does, made the
        # 8-bit steps 0.07 ms slower on the H200 (quant_h200_notes, thirteenth session).
        gdc_wait()
    tile, split, k_start, k_end, rn, rn_w = _split_tile(K, k_blocks_per_split, N, BLOCK_N, BLOCK_K)
    rn_w = rn_w.to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    scale = tl.load(s_ptr + rn_w)
    FP8_AS_FP16: tl.constexpr = FP8 and USE_DOT and FP16_X  # fp16 cannot hold value * 2**-120
    if FP8_AS_FP16:
        scale = scale * 256.0
    elif FP8 and USE_DOT:
        scale = scale * 1.329227995784916e36  # 2**120
    if USE_DOT:
        rm = tl.arange(0, BLOCK_M)
        m_mask = rm < M
        x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_start + rk)[None, :]  # [BLOCK_M, BLOCK_K]
        w_ptrs = w_ptr + rn_w[None, :] * stride_wn + (k_start + rk)[:, None]  # [BLOCK_K, BLOCK_N]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            if EVEN_K:
                a_mask = m_mask[:, None]
                b = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
                k_mask = (k + rk) < K
                a_mask = m_mask[:, None] & k_mask[None, :]
                b = tl.load(w_ptrs, mask=k_mask[:, None], other=0, eviction_policy="evict_first")
            a = _load_x(x_ptrs, a_mask, K, False)
            if FP8_AS_FP16:
                wt = _bytes_to_dequant(b, FP8)  # value / 256 in fp16, exact
            else:
                wt = _bytes_to_float(b, FP8).to(a.dtype)  # int8: exact; fp8 * 2**-120: exact in bf16
            if DOT_IEEE:
                acc = tl.dot(a, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, wt, acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        acc = acc * scale[None, :]
        c_offs = rm[:, None] * N + rn[None, :]
        mask = m_mask[:, None] & (rn[None, :] < N)
        _epilogue(acc, c_offs, rn[None, :], mask, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split,
                  num_splits, N, M * N, False, SPLIT)
    else:
        x_ptrs = x_ptr + k_start + rk
        w_ptrs = w_ptr + rn_w[:, None] * stride_wn + (k_start + rk)[None, :]  # [BLOCK_N, BLOCK_K]
        if ADD_RESIDUAL:  # loaded now, used after the loop: its latency hides behind the weight stream
            r = tl.load(res_ptr + rn, mask=rn < N, other=0.0)
        else:
            r = None
        if X_PRESCALED:  # likewise: 1/rms is summed from these and scales the sum after the loop
            ss_parts = _load_ss_parts(ss_in_ptr, num_ss_in, 1, 1, SS_BLOCK)
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            k_mask = (k + rk) < K
            xk = _load(x_ptrs, k_mask, not EVEN_K)
            b = _load(w_ptrs, k_mask[None, :], not EVEN_K, True)
            acc2 += _bytes_to_fma_float(b, FP8) * xk.to(tl.float32)[None, :]
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        acc = tl.sum(acc2, axis=1) * scale
        if X_PRESCALED:
            acc = acc * _rstd(ss_parts, K, eps)  # [1] broadcast over the tile
        _epilogue(acc, rn, rn, rn < N, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, N, N,
                  False, SPLIT, r, ss_out_ptr, tile, None, ADD_RESIDUAL, nw_out_ptr, scaled_ptr, SCALE_OUT)


@triton.jit
def _w8_dequant_kernel(w_ptr, s_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       FP8: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    offs = rn[:, None].to(tl.int64) * K + rk[None, :]
    b = tl.load(w_ptr + offs, mask=mask, other=0)
    scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
    if FP8:
        scale = scale * 256.0
    w = _bytes_to_dequant(b, FP8).to(tl.float32) * scale[:, None]
    tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=mask)


def _check(qweight: torch.Tensor, scale: torch.Tensor, fp8: bool) -> None:
    if qweight.dim() != 2 or qweight.dtype != torch.uint8 or qweight.stride(1) != 1:
        raise ValueError(f"quant_w8: qweight must be a [N, K] uint8 tensor with unit last stride, "
                         f"got {tuple(qweight.shape)} {qweight.dtype}")
    if scale.dtype != torch.float32 or tuple(scale.shape) != (qweight.shape[0],) or not scale.is_contiguous():
        raise ValueError(f"quant_w8: scale must be contiguous fp32 [{qweight.shape[0]}], got "
                         f"{tuple(scale.shape)} {scale.dtype}")


def w8_dequantize_ref(qweight: torch.Tensor, scale: torch.Tensor, fp8: bool) -> torch.Tensor:
    """[N, K] fp32 weight: s[n] * Q[n, k] (int8: the stored byte - 128; fp8: its bits read as e4m3)."""
    _check(qweight, scale, fp8)
    q = qweight.view(torch.float8_e4m3fn).float() if fp8 else qweight.float() - 128.0
    return q * scale[:, None]


def int8_to_stored(q: torch.Tensor) -> torch.Tensor:
    """int8 codes -> the uint8 bytes the kernels read (q + 128)."""
    return (q.to(torch.int16) + 128).to(torch.uint8)


def stored_to_int8(qweight: torch.Tensor) -> torch.Tensor:
    return (qweight.to(torch.int16) - 128).to(torch.int8)


def w8_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, fp8: bool) -> torch.Tensor:
    """Plain PyTorch: dequantize, fp32 matmul, round once to x.dtype; [M, K] -> [M, N]."""
    return F.linear(x.float(), w8_dequantize_ref(qweight, scale, fp8)).to(x.dtype)


def w8_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, fp8: bool, *,
                   silu_mul: bool = False, config: QuantGemvConfig | None = None,
                   norm_ss: torch.Tensor | None = None, eps: float = 0.0, residual: torch.Tensor | None = None,
                   out_norm_weight: torch.Tensor | None = None):
    """Triton GEMV for 1 <= M <= DOT_MAX_M rows (past 16 on the dot path); `silu_mul`: x is [M, 2K] gate | up.
    Returns [M, N].

    One row on the FMA path also fuses its RMSNorm neighbours (`fusion_problem` names the rules):
    * `norm_ss` [1, parts]: x is a residual stream already multiplied by the norm's weight (by its
      producer's `out_norm_weight`), and 1/rms, from these fp32 partial sums of the stream's squares,
      scales the result after the K loop;
    * `residual` [1, N] returns `(y + residual, ss)`, with `out_norm_weight` [N] `(s, ss, s * out_norm_weight)`.
    The norm weight is applied by the producer because multiplying it in the consumer's loads cost as
    much as the norm kernel it replaced (H200, quant_h200_notes thirteenth session).
    """
    _check(qweight, scale, fp8)
    n, k = qweight.shape
    x = operand(x, k, silu_mul, "quant_w8")
    m = x.shape[0]
    cfg = config or get_config("fp8" if fp8 else "int8", n, k, m, K_UNIT, x.device)
    check_config(cfg, m, K_UNIT, "quant_w8")
    if silu_mul:  # no 8-bit kernel fuses it (quant_common.unfused_silu says why)
        x = silu_and_mul(x)
    problem = fusion_problem(x, n, cfg, norm_ss, residual, out_norm_weight)
    if problem:
        raise ValueError(f"quant_w8: {problem}")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if n == 0 or k == 0:
        if residual is not None or norm_ss is not None:
            raise ValueError(f"quant_w8: the fusions need a non-empty weight, got [{n}, {k}]")
        return out.zero_()
    geo = geometry(cfg, m, n, k, out)
    ss_out, scaled = fused_outputs(out, geo.tiles, residual, out_norm_weight)
    num_ss = norm_ss.shape[1] if norm_ss is not None else 0
    _w8_gemv_kernel[(geo.tiles, geo.splits)](
        x, qweight, scale, out, geo.ws, geo.tickets, m, n, k, x.stride(0), qweight.stride(0),
        geo.blocks_per_split, geo.splits,
        ptr_or(norm_ss, out), num_ss, float(eps), ptr_or(residual, out), ss_out, ptr_or(out_norm_weight, out), scaled,
        BLOCK_M=dot_block_m(m) if cfg.use_dot else 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NUM_STAGES=cfg.num_stages, USE_DOT=cfg.use_dot, EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1,
        DOT_IEEE=x.dtype == torch.float32, FP8=fp8, FP16_X=x.dtype == torch.float16,
        X_PRESCALED=norm_ss is not None, ADD_RESIDUAL=residual is not None,
        SCALE_OUT=out_norm_weight is not None, SS_BLOCK=max(16, triton.next_power_of_2(num_ss)),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **early_launch_args(x.device),
    )
    return fused_result(out, ss_out, scaled, residual, out_norm_weight)


def fusion_problem(x: torch.Tensor, n: int, cfg: QuantGemvConfig, norm_ss=None, residual=None,
                   out_norm_weight=None) -> str | None:
    """What keeps `w8_gemv_triton` from fusing these neighbours for the operand x [M, K] (after any SiLU),
    or None: the fusions run on one row's FMA path, with skinny_gemm's layouts."""
    if norm_ss is None and residual is None and out_norm_weight is None:
        return None
    if x.shape[0] != 1 or cfg.use_dot:
        return f"the fusions run on one row's FMA path, got {x.shape[0]} rows{' on the dot path' * cfg.use_dot}"
    return layout_problem(x, n, None, norm_ss, residual, False, norm_ss is not None, out_norm_weight)


def w8_fusion_wanted(x: torch.Tensor, qweight: torch.Tensor, fp8: bool, **fusions) -> bool:
    """Whether `w8_gemv_triton` runs these neighbour fusions (its keywords) for the operand x (after any
    SiLU) with its default config."""
    n, k = qweight.shape
    return default_config_fuses("fp8" if fp8 else "int8", x, n, k, K_UNIT,
                                lambda cfg: fusion_problem(x, n, cfg, **fusions))


def w8_dequantize_triton(qweight: torch.Tensor, scale: torch.Tensor, fp8: bool, out: torch.Tensor) -> torch.Tensor:
    """Writes the [N, K] weight into `out` (a contiguous [N, K] view of the dequantization buffer)."""
    _check(qweight, scale, fp8)
    n, k = qweight.shape
    if tuple(out.shape) != (n, k) or not out.is_contiguous():
        raise ValueError(f"quant_w8: out must be contiguous [{n}, {k}], got {tuple(out.shape)}")
    bn, bk = 32, 128
    _w8_dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](qweight, scale, out, n, k, BLOCK_N=bn,
                                                                 BLOCK_K=bk, FP8=fp8)
    return out
