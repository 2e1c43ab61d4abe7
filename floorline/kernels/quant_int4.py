"""Group-wise int4 GEMV for decode: `y = x W^T` with W[n, k] = (Q[n, k] - Z[g, n]) * S[g, n], g = k // G.

floorline's int4 layout (AWQ and GPTQ checkpoints are unpacked into it at load):

* `qweight` uint8 [N, Kp / 2]: byte j of row n holds Q[n, 2j] in its high nibble and Q[n, 2j + 1] in
  its low nibble (the bitsandbytes order, so NF4 shares the code). Kp is K rounded up to the group
  size; the padding codes meet x columns masked to zero.
* `scales`, `zeros` fp16 [Kp / G, N]: one scale and one (integer-valued) zero point per group and
  output channel; rows of N are contiguous, so a program's [BLOCK_N] scales are one coalesced load.

The kernel reads a [BLOCK_N, BLOCK_K / G, G / 2] byte tile, so each group's scale and zero broadcast
over its G / 2 bytes without any per-weight index math. The high and low nibbles are the even and
odd columns of W: they meet the even and odd elements of x (two strided loads of x, which stays in
L1/L2) instead of being interleaved in registers. Nibble -> float uses the 2**23 trick: OR-ing the
nibble into the mantissa of 8388608.0 and subtracting (8388608 + zero) is exact and avoids the
slower int -> float conversion.
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
from floorline.kernels.skinny_gemm import _epilogue, _silu_mul
from floorline.kernels.triton_compat import tl, triton


@triton.jit
def _nibbles_to_weights(b, s, z):
    """uint8 bytes [BN, NB, H] and per-group scale/zero [BN, NB] -> fp32 (even, odd) weights."""
    i = b.to(tl.int32)
    zm = (z.to(tl.float32) + 8388608.0)[:, :, None]
    sc = s.to(tl.float32)[:, :, None]
    hi = ((i >> 4) | 0x4B000000).to(tl.float32, bitcast=True)
    lo = ((i & 15) | 0x4B000000).to(tl.float32, bitcast=True)
    return (hi - zm) * sc, (lo - zm) * sc


@triton.jit
def _load_group_params(s_ptr, z_ptr, g, rn_w, N, num_groups, EVEN_K: tl.constexpr):
    """Scales and zeros of groups g [NB] for rows rn_w [BN] -> two [BN, NB] tensors."""
    offs = g[None, :] * N + rn_w[:, None]
    if EVEN_K:
        s = tl.load(s_ptr + offs)
        z = tl.load(z_ptr + offs)
    else:
        gm = (g < num_groups)[None, :]
        s = tl.load(s_ptr + offs, mask=gm, other=0.0)
        z = tl.load(z_ptr + offs, mask=gm, other=0.0)
    return s, z


@triton.jit
def _load_x(ptrs, mask, K, X_SILU_MUL: tl.constexpr, MASKED: tl.constexpr = True):
    """x elements (with `X_SILU_MUL`, silu(gate) * up of x [M, 2K]); MASKED=False: no predication."""
    if MASKED:
        a = tl.load(ptrs, mask=mask, other=0.0)
        if X_SILU_MUL:
            a = _silu_mul(a, tl.load(ptrs + K, mask=mask, other=0.0))
    else:
        a = tl.load(ptrs)
        if X_SILU_MUL:
            a = _silu_mul(a, tl.load(ptrs + K))
    return a


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits"])
def _int4_gemv_kernel(
    x_ptr,  # [M, K] (or [M, 2K] gate | up), last-dim stride 1
    q_ptr,  # [N, Kp / 2] uint8
    s_ptr,  # [Kp / G, N] fp16
    z_ptr,  # [Kp / G, N] fp16
    out_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp, num_groups, stride_xm, stride_qn, k_blocks_per_split, num_splits,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    NUM_STAGES: tl.constexpr, USE_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
    DOT_IEEE: tl.constexpr, X_SILU_MUL: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_wait()
    NB: tl.constexpr = BLOCK_K // GROUP
    H: tl.constexpr = GROUP // 2
    tile = tl.program_id(0)
    split = tl.program_id(1)
    k_start = split * k_blocks_per_split * BLOCK_K
    k_end = tl.minimum(Kp, k_start + k_blocks_per_split * BLOCK_K)
    rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_w = tl.minimum(rn, N - 1)
    rg = tl.arange(0, NB)
    boff = rg[:, None] * H + tl.arange(0, H)[None, :]  # [NB, H] byte offsets within a tile
    q_ptrs = q_ptr + rn_w.to(tl.int64)[:, None, None] * stride_qn + (k_start // 2 + boff)[None, :, :]
    if USE_DOT:
        rm = tl.arange(0, BLOCK_M)
        m_mask = rm < M
        rh = tl.arange(0, BLOCK_K // 2)
        x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_start + 2 * rh)[None, :]  # even columns [BM, BK/2]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            g = k // GROUP + rg
            s, z = _load_group_params(s_ptr, z_ptr, g, rn_w, N, num_groups, EVEN_K)
            if EVEN_K:
                b = tl.load(q_ptrs, eviction_policy="evict_first")
                xe = _load_x(x_ptrs, m_mask[:, None], K, X_SILU_MUL)
                xo = _load_x(x_ptrs + 1, m_mask[:, None], K, X_SILU_MUL)
            else:
                b = tl.load(q_ptrs, mask=(g < num_groups)[None, :, None], other=0, eviction_policy="evict_first")
                ke = k + 2 * rh
                xe = _load_x(x_ptrs, m_mask[:, None] & (ke < K)[None, :], K, X_SILU_MUL)
                xo = _load_x(x_ptrs + 1, m_mask[:, None] & (ke + 1 < K)[None, :], K, X_SILU_MUL)
            we, wo = _nibbles_to_weights(b, s, z)
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
        x_ptrs = x_ptr + k_start + 2 * boff  # even elements of x, [NB, H]
        acc3 = tl.zeros([BLOCK_N, NB, H], dtype=tl.float32)
        for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
            g = k // GROUP + rg
            s, z = _load_group_params(s_ptr, z_ptr, g, rn_w, N, num_groups, EVEN_K)
            if EVEN_K:
                b = tl.load(q_ptrs, eviction_policy="evict_first")
                xe = _load_x(x_ptrs, None, K, X_SILU_MUL, False)
                xo = _load_x(x_ptrs + 1, None, K, X_SILU_MUL, False)
            else:
                b = tl.load(q_ptrs, mask=(g < num_groups)[None, :, None], other=0, eviction_policy="evict_first")
                ke = k + 2 * boff
                xe = _load_x(x_ptrs, ke < K, K, X_SILU_MUL)
                xo = _load_x(x_ptrs + 1, ke + 1 < K, K, X_SILU_MUL)
            we, wo = _nibbles_to_weights(b, s, z)
            # Elementwise FMAs into a 3D accumulator: the cross-thread reduction happens once, below.
            acc3 += we * xe.to(tl.float32)[None, :, :] + wo * xo.to(tl.float32)[None, :, :]
            q_ptrs += BLOCK_K // 2
            x_ptrs += BLOCK_K
        acc = tl.sum(tl.sum(acc3, axis=2), axis=1)
        _epilogue(acc, rn, rn, rn < N, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, N, N,
                  False, SPLIT)


@triton.jit
def _int4_dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, K, num_groups, stride_qn,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // GROUP
    H: tl.constexpr = GROUP // 2
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_w = tl.minimum(rn, N - 1)
    k0 = tl.program_id(1) * BLOCK_K
    rg = tl.arange(0, NB)
    g = k0 // GROUP + rg
    boff = rg[:, None] * H + tl.arange(0, H)[None, :]
    b = tl.load(q_ptr + rn_w.to(tl.int64)[:, None, None] * stride_qn + (k0 // 2 + boff)[None, :, :],
                mask=(g < num_groups)[None, :, None], other=0)
    s, z = _load_group_params(s_ptr, z_ptr, g, rn_w, N, num_groups, False)
    we, wo = _nibbles_to_weights(b, s, z)
    w = tl.reshape(tl.join(we, wo), (BLOCK_N, BLOCK_K))  # interleave back to column order
    rk = k0 + tl.arange(0, BLOCK_K)
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    tl.store(out_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def _check(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int, group: int) -> None:
    if group < 32 or group & (group - 1):
        raise ValueError(f"quant_int4: the group size must be a power of two >= 32, got {group}")
    groups = -(-k // group)  # plain integers: the CPU reference path runs without Triton
    n = qweight.shape[0] if qweight.dim() == 2 else -1
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, groups * group // 2) or qweight.stride(1) != 1:
        raise ValueError(f"quant_int4: qweight must be uint8 [N, {groups * group // 2}] with unit last stride "
                         f"for K = {k}, group {group}; got {tuple(qweight.shape)} {qweight.dtype}")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t.dtype != torch.float16 or tuple(t.shape) != (groups, n) or not t.is_contiguous():
            raise ValueError(f"quant_int4: {name} must be contiguous fp16 [{groups}, {n}], "
                             f"got {tuple(t.shape)} {t.dtype}")


def unpack_int4_rows(qweight: torch.Tensor) -> torch.Tensor:
    """[N, Kp / 2] packed bytes -> [N, Kp] codes 0..15 (uint8)."""
    return torch.stack([qweight >> 4, qweight & 15], dim=-1).reshape(qweight.shape[0], -1)


def pack_int4_rows(codes: torch.Tensor) -> torch.Tensor:
    """[N, Kp] codes 0..15 -> [N, Kp / 2] bytes (even column in the high nibble)."""
    c = codes.to(torch.uint8).reshape(codes.shape[0], -1, 2)
    return (c[..., 0] << 4) | c[..., 1]


def int4_dequantize_ref(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int,
                        group: int) -> torch.Tensor:
    """[N, K] fp32 weight: (Q - Z) * S group by group, padding columns dropped."""
    _check(qweight, scales, zeros, k, group)
    q = unpack_int4_rows(qweight).float()  # [N, Kp]
    s = scales.float().t().repeat_interleave(group, dim=1)  # [N, Kp]
    z = zeros.float().t().repeat_interleave(group, dim=1)
    return ((q - z) * s)[:, :k]


def int4_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int,
                  group: int) -> torch.Tensor:
    """Plain PyTorch: dequantize, fp32 matmul, round once to x.dtype; [M, K] -> [M, N]."""
    return F.linear(x.float(), int4_dequantize_ref(qweight, scales, zeros, k, group)).to(x.dtype)


def int4_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     k: int, group: int, *, silu_mul: bool = False,
                     config: QuantGemvConfig | None = None) -> torch.Tensor:
    """Triton GEMV for 1 <= M <= 16 rows; `silu_mul`: x is [M, 2K] gate | up. Returns [M, N]."""
    _check(qweight, scales, zeros, k, group)
    x = operand(x, k, silu_mul, "quant_int4")
    m, n = x.shape[0], qweight.shape[0]
    kp = 2 * qweight.shape[1]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if n == 0 or k == 0:
        return out.zero_()
    cfg = config or get_config("int4", n, k, m, group, x.device)
    check_config(cfg, m, group, "quant_int4")
    geo = geometry(cfg, m, n, kp, out)
    _int4_gemv_kernel[(geo.tiles, geo.splits)](
        x, qweight, scales, zeros, out, geo.ws, geo.tickets,
        m, n, k, kp, kp // group, x.stride(0), qweight.stride(0), geo.blocks_per_split, geo.splits,
        BLOCK_M=DOT_BLOCK_M if cfg.use_dot else 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=group,
        NUM_STAGES=cfg.num_stages, USE_DOT=cfg.use_dot, EVEN_K=k % cfg.block_k == 0, SPLIT=geo.splits > 1,
        DOT_IEEE=x.dtype == torch.float32, X_SILU_MUL=silu_mul,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(x.device),
    )
    return out


def int4_dequantize_triton(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int, group: int,
                           out: torch.Tensor) -> torch.Tensor:
    """Writes the [N, K] weight into `out` (contiguous, any float dtype)."""
    _check(qweight, scales, zeros, k, group)
    n = qweight.shape[0]
    if tuple(out.shape) != (n, k) or not out.is_contiguous():
        raise ValueError(f"quant_int4: out must be contiguous [{n}, {k}], got {tuple(out.shape)}")
    bn, bk = 32, max(group, 128)
    _int4_dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
        qweight, scales, zeros, out, n, k, 2 * qweight.shape[1] // group, qweight.stride(0),
        BLOCK_N=bn, BLOCK_K=bk, GROUP=group)
    return out
