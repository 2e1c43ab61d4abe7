"""Skinny GEMM for decode: `y = x W^T (+ b)` with x of 1..16 rows, streaming W once at the memory floor.

Decode reads every weight once per step, so this op is bound by HBM bandwidth, not by math. Design:

* Each program owns BLOCK_N rows of W (output columns) and walks its K range in BLOCK_K steps. Loads
  run along K, W's contiguous axis, so every thread issues 16-byte vectors (8 bf16); clamping the row
  index to N - 1 (instead of masking rows) keeps the W loads mask-free when K % BLOCK_K == 0.
* The K loop is a `tl.range(num_stages=...)`: for a loop without `tl.dot` that attribute is what lets
  Triton's pipeliner keep NUM_STAGES - 1 tiles in flight (cp.async into shared memory); with
  NUM_STAGES = 1 in-flight bytes come only from occupancy. The benchmark sweeps both.
* All M rows share each W tile, so W is read once whatever M is. M == 1 takes the FMA path: a
  [BLOCK_N, BLOCK_K] fp32 accumulator reduced over K once after the loop (no shuffles in the loop).
  M in 2..16 takes the dot path: x padded to 16 rows (masked, so never fetched) times the W tile on
  tensor cores, which keeps the math far below the load time even at M = 16. The x tile of an
  iteration lives in registers (or in the pipeline's shared buffers); x itself stays L2-resident.
* Split-K when N alone leaves SMs idle (e.g. N = 1024 k/v projections): grid (tiles, splits), each
  split writes an fp32 partial to a workspace, and the last program to finish a tile (an atomic
  ticket per tile) sums the partials in split order 0..S-1. One launch, and the sum order does not
  depend on which program comes last, so results are bit-for-bit deterministic. The ticket counters
  are allocated once per device (first eager call, or `prepare(device)` before graph capture) and
  reset by the kernel itself, so CUDA-graph replays need no memset. Split-K launches on one device
  must therefore be stream-ordered (the engine uses one stream).
* Neighbours fused in (`skinny_gemm_triton`'s keyword arguments): the operand may be
  silu(gate) * up (the down projection) or the RMSNorm of the residual stream (qkv, gate_up: the
  norm weight multiplies x as it loads, 1/rms scales the accumulator after the loop, from fp32
  partial sums of squares that the producing GEMV wrote); the output may be y + residual with those
  partials (o_proj, down). So a Llama layer's decode needs no norm or add kernel.
* With PDL the program first lets the next kernel launch (`gdc_launch_dependents`), then loads its
  first weight tile, and only then waits for the previous kernel (`gdc_wait`): weights never depend
  on earlier kernels, so the weight stream starts while the previous kernel drains.
* Launch configs: `skinny_gemm_configs` (tuned tables per GPU, else a heuristic; never autotuned).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from floorline.kernels.triton_compat import tl, triton

from floorline.kernels.fusion_args import fused_outputs, fused_result, layout_problem, ptr_or
from floorline.kernels.pdl import early_launch_args, gdc_launch_dependents, gdc_wait
from floorline.kernels.tickets import tickets

from floorline.kernels.skinny_gemm_configs import MAX_M, SkinnyConfig, check_tiles, get_config

DOT_BLOCK_M = 16  # tl.dot needs >= 16 rows; rows past M are masked and never fetched
_FAST_DTYPES = (torch.float16, torch.bfloat16)
# FLOORLINE_FUSE=0 keeps the residual add and RMSNorm out of the GEMVs (for A/B timing and tests).
FUSE_NEIGHBOURS = os.environ.get("FLOORLINE_FUSE", "1") != "0"
_KERNEL_DTYPES = _FAST_DTYPES + (torch.float32,)


@triton.jit
def _silu_mul(g, u):
    """silu(g) * u rounded like the unfused `silu_and_mul` (silu rounded to the dtype first)."""
    gf = g.to(tl.float32)
    act = (gf * tl.sigmoid(gf)).to(g.dtype).to(tl.float32)
    return (act * u.to(tl.float32)).to(g.dtype)


@triton.jit
def _finish(acc, c_offs, n_offs, mask, out_ptr, bias_ptr, N, HAS_BIAS: tl.constexpr,
            r=None, ss_ptr=None, ss_offs=None, ss_mask=None, ADD_RESIDUAL: tl.constexpr = False,
            nw_out_ptr=None, scaled_ptr=None, SCALE_OUT: tl.constexpr = False):
    """Adds the bias in fp32 and stores in the output dtype.

    ADD_RESIDUAL: stores `s = y + r` instead (r: the residual tile, loaded early by the caller; y is
    rounded first, then s: the unfused model's two roundings) and the fp32 sum of s^2 over the tile's
    columns at `ss_offs`, the partials from which the next GEMV's RMSNorm takes mean(s^2).
    SCALE_OUT (with ADD_RESIDUAL): also stores `s * nw_out` (the next RMSNorm's weight) at `scaled_ptr`,
    an operand its consumer reads as is and scales by 1/rms after its K loop.
    """
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n_offs, mask=n_offs < N, other=0.0).to(tl.float32)
    y = acc.to(out_ptr.dtype.element_ty)
    if ADD_RESIDUAL:
        y = (y.to(tl.float32) + r.to(tl.float32)).to(out_ptr.dtype.element_ty)
        yf = tl.where(mask, y.to(tl.float32), 0.0)
        tl.store(ss_ptr + ss_offs, tl.sum(yf * yf, axis=-1), mask=ss_mask)
        if SCALE_OUT:
            nw = tl.load(nw_out_ptr + n_offs, mask=n_offs < N, other=0.0).to(tl.float32)
            tl.store(scaled_ptr + c_offs, (yf * nw).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + c_offs, y, mask=mask)


@triton.jit
def _epilogue(acc, c_offs, n_offs, mask, out_ptr, bias_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, N, MN,
              HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
              r=None, ss_ptr=None, ss_offs=None, ss_mask=None, ADD_RESIDUAL: tl.constexpr = False,
              nw_out_ptr=None, scaled_ptr=None, SCALE_OUT: tl.constexpr = False):
    """Stores the tile, or with split-K its partial; the last split of a tile reduces all partials."""
    if SPLIT:
        tl.store(ws_ptr + split * MN + c_offs, acc, mask=mask)
        # Every thread's partial must be issued before the ticket is taken: the barrier orders the
        # CTA's stores before the (release) atomic, which one thread performs for the program.
        tl.debug_barrier()
        ticket = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if ticket == num_splits - 1:
            total = tl.zeros_like(acc)
            for s in range(num_splits):  # fixed order: the result never depends on arrival order
                # .cg reads from L2, where the other SMs' partials are, never a stale L1 line.
                total += tl.load(ws_ptr + s * MN + c_offs, mask=mask, other=0.0, cache_modifier=".cg")
            _finish(total, c_offs, n_offs, mask, out_ptr, bias_ptr, N, HAS_BIAS, r, ss_ptr, ss_offs, ss_mask,
                    ADD_RESIDUAL, nw_out_ptr, scaled_ptr, SCALE_OUT)
            tl.store(cnt_ptr + tile, 0)  # ready for the next launch (or graph replay)
    else:
        _finish(acc, c_offs, n_offs, mask, out_ptr, bias_ptr, N, HAS_BIAS, r, ss_ptr, ss_offs, ss_mask,
                ADD_RESIDUAL, nw_out_ptr, scaled_ptr, SCALE_OUT)


@triton.jit
def _dot(a, b, acc, DOT_IEEE: tl.constexpr):
    """acc + a @ b on tensor cores; fp32 inputs (DOT_IEEE) take exact products, not tf32."""
    if DOT_IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _load_ss_parts(ss_ptr, num_ss, M, BLOCK_M: tl.constexpr, SS_BLOCK: tl.constexpr):
    """The producer's [M, num_ss <= SS_BLOCK] fp32 partial sums of s^2, in one load."""
    rm = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, SS_BLOCK)
    mask = (rm[:, None] < M) & (cols[None, :] < num_ss)
    return tl.load(ss_ptr + rm[:, None] * num_ss + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _rstd(parts, K, eps):
    """[BLOCK_M] rsqrt(mean(s^2) + eps): a fixed-order sum, whichever producer program came last."""
    return tl.rsqrt(tl.sum(parts, axis=1) / K + eps)


@triton.jit
def _load(ptrs, mask, MASKED: tl.constexpr, EVICT_FIRST: tl.constexpr = False):
    """A masked load (zeros outside), or an unpredicated one when MASKED is False."""
    if EVICT_FIRST:
        if MASKED:
            v = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
        else:
            v = tl.load(ptrs, eviction_policy="evict_first")
    else:
        if MASKED:
            v = tl.load(ptrs, mask=mask, other=0.0)
        else:
            v = tl.load(ptrs)
    return v


@triton.jit
def _operand(x_ptrs, nw_ptrs, mask, K, MASKED: tl.constexpr, X_SILU_MUL: tl.constexpr, X_NORM: tl.constexpr):
    """The GEMV's x tile: x itself, silu(gate) * up of x = gate | up, or x * nw (the RMSNorm's weight;
    its 1/rms scales the accumulator after the K loop)."""
    a = _load(x_ptrs, mask, MASKED)
    if X_SILU_MUL:
        a = _silu_mul(a, _load(x_ptrs + K, mask, MASKED))
    if X_NORM:
        a = a.to(tl.float32) * _load(nw_ptrs, mask, MASKED).to(tl.float32)
    return a


@triton.jit(do_not_specialize=["M", "k_blocks_per_split", "num_splits", "num_ss_in"])
def _skinny_gemm_kernel(
    x_ptr,  # [M, K], last-dim stride 1
    w_ptr,  # [N, K], last-dim stride 1
    bias_ptr,  # [N] or a dummy when HAS_BIAS is False
    out_ptr,  # [M, N] contiguous
    ws_ptr,  # [num_splits, M, N] fp32 partials (SPLIT only)
    cnt_ptr,  # [>= num tiles] int32 tickets, zero between launches (SPLIT only)
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    k_blocks_per_split,
    num_splits,
    nw_ptr,  # [K] RMSNorm weight (X_NORM only)
    ss_in_ptr,  # [M, num_ss_in] fp32 partial sums of x^2 from x's producer (X_NORM only)
    num_ss_in,
    eps,
    res_ptr,  # [M, N] contiguous residual (ADD_RESIDUAL only)
    ss_out_ptr,  # [M, tiles] fp32 partial sums of the output's squares (ADD_RESIDUAL only)
    nw_out_ptr,  # [N] the next RMSNorm's weight (SCALE_OUT only)
    scaled_ptr,  # [M, N] the output times nw_out (SCALE_OUT only)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    USE_DOT: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_IEEE: tl.constexpr,
    USE_PDL: tl.constexpr = False,
    X_SILU_MUL: tl.constexpr = False,  # x is [M, 2K] gate|up: the operand is silu(gate) * up
    X_NORM: tl.constexpr = False,  # x is the residual stream: the operand is its RMSNorm times nw
    X_PRESCALED: tl.constexpr = False,  # x is the stream times nw already (its producer's SCALE_OUT)
    ADD_RESIDUAL: tl.constexpr = False,  # the output is y + residual, with its s^2 partials
    SCALE_OUT: tl.constexpr = False,  # with ADD_RESIDUAL: also stores the output times nw_out
    SS_BLOCK: tl.constexpr = 16,
    EARLY_LAUNCH: tl.constexpr = False,
):
    if EARLY_LAUNCH:
        # Let the next kernel launch once every program of this one has started: its programs then
        # fetch their first weight tile while this kernel's last wave drains.
        gdc_launch_dependents()
    tile = tl.program_id(0)
    split = tl.program_id(1)
    k_start = split * k_blocks_per_split * BLOCK_K
    k_end = tl.minimum(K, k_start + k_blocks_per_split * BLOCK_K)
    rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows past N re-read row N-1 instead of being masked: loads stay unpredicated, stores are masked.
    rn_w = tl.minimum(rn, N - 1).to(tl.int64)  # int64: row * stride can pass 2**31 on big vocabularies
    rk = tl.arange(0, BLOCK_K)
    rm = tl.arange(0, BLOCK_M)
    m_mask = rm < M
    k_mask = (k_start + rk) < k_end
    # The first weight tile is loaded before waiting for the previous kernel: weights never depend on it.
    if USE_DOT:
        w_ptrs = w_ptr + rn_w[None, :] * stride_wn + (k_start + rk)[:, None]  # [BLOCK_K, BLOCK_N] = W^T tile
        w_first = _load(w_ptrs, k_mask[:, None], not EVEN_K, True)  # W is read once: keep x in L2
    else:
        w_ptrs = w_ptr + rn_w[:, None] * stride_wn + (k_start + rk)[None, :]  # [BLOCK_N, BLOCK_K]
        w_first = _load(w_ptrs, k_mask[None, :], not EVEN_K, True)
    if USE_PDL:
        gdc_wait()  # from here on, the previous kernel's writes are visible
    if ADD_RESIDUAL:  # loaded now, used after the loop: its latency hides behind the weight stream
        if USE_DOT:
            r = tl.load(res_ptr + rm[:, None] * N + rn[None, :], mask=m_mask[:, None] & (rn[None, :] < N), other=0.0)
        else:
            r = tl.load(res_ptr + rn, mask=rn < N, other=0.0)
    else:
        r = None
    if X_NORM or X_PRESCALED:  # likewise: 1/rms is summed from these and scales the accumulator after the loop
        ss_parts = _load_ss_parts(ss_in_ptr, num_ss_in, M, BLOCK_M, SS_BLOCK)
    nw_ptrs = nw_ptr + k_start + rk
    if USE_DOT:
        x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_start + rk)[None, :]  # [BLOCK_M, BLOCK_K]
        a = _operand(x_ptrs, nw_ptrs[None, :], m_mask[:, None] & k_mask[None, :], K, True, X_SILU_MUL,
                     X_NORM).to(w_first.dtype)
        acc = _dot(a, w_first, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), DOT_IEEE)
        for k in tl.range(k_start + BLOCK_K, k_end, BLOCK_K, num_stages=NUM_STAGES):
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
            nw_ptrs += BLOCK_K
            kk_mask = (k + rk) < K
            b = _load(w_ptrs, kk_mask[:, None], not EVEN_K, True)
            # x rows past M are masked (never fetched); so is the K tail
            a = _operand(x_ptrs, nw_ptrs[None, :], m_mask[:, None] & kk_mask[None, :], K, True, X_SILU_MUL,
                         X_NORM).to(b.dtype)
            acc = _dot(a, b, acc, DOT_IEEE)
        if X_NORM or X_PRESCALED:
            acc = acc * _rstd(ss_parts, K, eps)[:, None]
        c_offs = rm[:, None] * N + rn[None, :]
        mask = m_mask[:, None] & (rn[None, :] < N)
        _epilogue(acc, c_offs, rn[None, :], mask, out_ptr, bias_ptr, ws_ptr, cnt_ptr, tile, split,
                  num_splits, N, M * N, HAS_BIAS, SPLIT,
                  r, ss_out_ptr, rm * tl.num_programs(0) + tile, m_mask, ADD_RESIDUAL, nw_out_ptr, scaled_ptr,
                  SCALE_OUT)
    else:
        x_ptrs = x_ptr + k_start + rk  # the one row of x
        xk = _operand(x_ptrs, nw_ptrs, k_mask, K, not EVEN_K, X_SILU_MUL, X_NORM)
        # Elementwise FMA into a 2D accumulator: the cross-thread reduction happens once, after the loop.
        acc2 = w_first.to(tl.float32) * xk.to(tl.float32)[None, :]
        for k in tl.range(k_start + BLOCK_K, k_end, BLOCK_K, num_stages=NUM_STAGES):
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
            nw_ptrs += BLOCK_K
            kk_mask = (k + rk) < K
            xk = _operand(x_ptrs, nw_ptrs, kk_mask, K, not EVEN_K, X_SILU_MUL, X_NORM)
            w = _load(w_ptrs, kk_mask[None, :], not EVEN_K, True)
            acc2 += w.to(tl.float32) * xk.to(tl.float32)[None, :]
        acc = tl.sum(acc2, axis=1)  # [BLOCK_N]
        if X_NORM or X_PRESCALED:
            acc = acc * _rstd(ss_parts, K, eps)  # [1] broadcast over the tile
        _epilogue(acc, rn, rn, rn < N, out_ptr, bias_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, N, N,
                  HAS_BIAS, SPLIT, r, ss_out_ptr, tile, None, ADD_RESIDUAL, nw_out_ptr, scaled_ptr, SCALE_OUT)


def _tickets(device: torch.device, num_tiles: int) -> torch.Tensor:
    """Zeroed per-device int32 split-K tickets (floorline.kernels.tickets)."""
    return tickets(device, num_tiles, "skinny_gemm")


def prepare(device: torch.device | str, num_tiles: int = 1 << 14) -> None:
    """Allocates the split-K tickets of `device` now (call before capturing CUDA graphs)."""
    _tickets(torch.device(device), num_tiles)


def _check(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(
            f"skinny_gemm: need x [M, K] and w [N, K], got x {tuple(x.shape)} and w {tuple(w.shape)}"
        )
    if x.dtype != w.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"skinny_gemm: x, w and bias must share a dtype, got {x.dtype}, {w.dtype}, "
                         f"{None if bias is None else bias.dtype}")
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise ValueError(f"skinny_gemm: bias must be [{w.shape[0]}], got {tuple(bias.shape)}")


def skinny_gemm_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: fp32 `x W^T + b`, rounded once to x.dtype; [M, K] x [N, K] -> [M, N]."""
    _check(x, w, bias)
    return F.linear(x.float(), w.float(), None if bias is None else bias.float()).to(x.dtype)


def skinny_gemm_triton(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
                       config: SkinnyConfig | None = None, silu_mul: bool = False,
                       norm_weight: torch.Tensor | None = None, norm_ss: torch.Tensor | None = None,
                       eps: float = 0.0, prescaled: bool = False, residual: torch.Tensor | None = None,
                       out_norm_weight: torch.Tensor | None = None):
    """Triton `x W^T + b` for 1 <= M <= 16; `config` overrides the table. Returns [M, N] contiguous.

    Operand fusions (at most one): `silu_mul=True`: x is [M, 2K] (gate | up) and the operand is
    `silu(gate) * up`; `norm_weight` [K] with `norm_ss` [M, parts]: x is the residual stream and the
    operand is `rms_norm(x) * norm_weight`, with mean(x^2) summed from the fp32 partials `norm_ss`
    that x's producer wrote; `prescaled` with `norm_ss`: x is the stream already times the norm weight
    (its producer's `out_norm_weight`), so only 1/rms is applied, after the K loop. Output fusion:
    `residual` [M, N]: returns `(s, ss)` with `s = y + residual` and `ss` [M, tiles] the fp32 partial
    sums of s^2, ready to be the next GEMV's `norm_ss`; with `out_norm_weight` [N], `(s, ss, s * it)`.
    """
    x_in = x
    if silu_mul:
        if x.dim() != 2 or x.shape[1] != 2 * w.shape[1]:
            raise ValueError(f"skinny_gemm: silu_mul needs x [M, 2K] for w [N, K], got {tuple(x.shape)}")
        x = x[:, : w.shape[1]]  # the gate half: shapes and strides below are the operand's
    _check(x, w, bias)
    m, k = x.shape
    n = w.shape[0]
    problem = layout_problem(x, n, norm_weight, norm_ss, residual, silu_mul, prescaled, out_norm_weight)
    if problem:
        raise ValueError(f"skinny_gemm: {problem}")
    if m > MAX_M:
        raise ValueError(f"skinny_gemm: the Triton kernel takes M <= {MAX_M} rows, got {m}")
    if x.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"skinny_gemm: dtype must be float16/bfloat16/float32, got {x.dtype}")
    if x.device != w.device or (bias is not None and bias.device != x.device):
        raise ValueError("skinny_gemm: x, w and bias must be on one device")
    if x.stride(1) != 1 or w.stride(1) != 1 or (bias is not None and bias.stride(0) != 1):
        raise ValueError("skinny_gemm: x, w and bias need a contiguous last dim (stride 1)")
    if m == 0 or n == 0 or k == 0:  # nothing to stream: the reference handles the empty cases
        if prescaled or out_norm_weight is not None:
            raise ValueError(f"skinny_gemm: the prescaled fusions need a non-empty problem, got {m}x{k} by {n}")
        return skinny_gemm_fused_ref(x_in, w, bias, silu_mul=silu_mul, norm_weight=norm_weight, eps=eps,
                                     residual=residual)
    cfg = config or get_config(n, k, m, x.device)
    check_tiles(cfg, m, "skinny_gemm")
    if silu_mul and cfg.use_dot:
        # The dot path loads x once per row tile, so a fused activation is recomputed by every tile
        # (H200, Llama-3.1-8B down projection: 95.8 us at M = 4 and 180.7 at M = 16, against a ~27 us
        # floor); one activation kernel first costs ~1.3 us. The FMA path (M = 1) keeps it fused.
        from floorline.kernels.activation import silu_and_mul

        x_in = x = silu_and_mul(x_in)
        silu_mul = False
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    tiles = triton.cdiv(n, cfg.block_n)
    k_blocks = triton.cdiv(k, cfg.block_k)
    per_split = triton.cdiv(k_blocks, max(1, min(cfg.split_k, k_blocks)))
    splits = triton.cdiv(k_blocks, per_split)  # no empty splits
    if splits > 1:
        ws = torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
        tickets = _tickets(x.device, tiles)
    else:
        ws, tickets = out, out  # dummies: SPLIT=False never touches them
    ss_out, scaled = fused_outputs(out, tiles, residual, out_norm_weight)
    norm = norm_weight is not None
    num_ss = norm_ss.shape[1] if norm_ss is not None else 0
    _skinny_gemm_kernel[(tiles, splits)](
        x_in, w, bias if bias is not None else out, out, ws, tickets,
        m, n, k, x.stride(0), w.stride(0), per_split, splits,
        ptr_or(norm_weight, out), ptr_or(norm_ss, out), num_ss, float(eps), ptr_or(residual, out), ss_out,
        ptr_or(out_norm_weight, out), scaled,
        BLOCK_M=DOT_BLOCK_M if cfg.use_dot else 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NUM_STAGES=cfg.num_stages, USE_DOT=cfg.use_dot, EVEN_K=k % cfg.block_k == 0,
        HAS_BIAS=bias is not None, SPLIT=splits > 1, DOT_IEEE=x.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, X_SILU_MUL=silu_mul,
        X_NORM=norm, X_PRESCALED=prescaled, ADD_RESIDUAL=residual is not None,
        SCALE_OUT=out_norm_weight is not None, SS_BLOCK=max(16, triton.next_power_of_2(num_ss)),
        **early_launch_args(x.device),
    )
    return fused_result(out, ss_out, scaled, residual, out_norm_weight)


def skinny_gemm_fused_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
                          silu_mul: bool = False, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                          residual: torch.Tensor | None = None):
    """Reference for the fusions of `skinny_gemm_triton`; `ss` comes back as one [M, 1] partial per row."""
    if silu_mul:
        from floorline.kernels.activation import silu_and_mul_ref

        x = silu_and_mul_ref(x)
    if norm_weight is not None:
        from floorline.kernels.rms_norm import rms_norm_ref

        x = rms_norm_ref(x, norm_weight, eps)
    y = skinny_gemm_ref(x, w, bias)
    if residual is None:
        return y
    s = y + residual  # rounded to the dtype, as the unfused model does
    return s, s.float().pow(2).sum(1, keepdim=True)


def shape_supported(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Shape/dtype/layout half of `triton_supported`: fp16/bf16, 1 <= M <= 16, 16-byte aligned rows."""
    if x.dim() != 2 or w.dim() != 2 or not 1 <= x.shape[0] <= MAX_M or x.shape[1] != w.shape[1]:
        return False
    if x.dtype not in _FAST_DTYPES or w.dtype != x.dtype or w.device != x.device:
        return False
    # Rows must start on 16-byte boundaries for the vector loads the kernel is built around.
    if x.shape[1] % 8 or x.stride(1) != 1 or w.stride(1) != 1 or x.stride(0) % 8 or w.stride(0) % 8:
        return False
    return bias is None or (bias.dim() == 1 and bias.shape[0] == w.shape[0] and bias.dtype == x.dtype
                            and bias.device == x.device and bias.stride(0) == 1)


def triton_supported(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `skinny_gemm` takes the Triton path: a CUDA tensor and `shape_supported`."""
    return x.is_cuda and shape_supported(x, w, bias)


def skinny_gemm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x W^T (+ b)`: x [M, K], w [N, K], bias [N] -> [M, N].

    Triton on CUDA for 1..16 rows (decode), `torch.nn.functional.linear` otherwise (prefill, CPU, fp32).
    """
    if triton_supported(x, w, bias):
        return skinny_gemm_triton(x, w, bias)
    return F.linear(x, w, bias)


def skinny_gemm_silu_mul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`silu(gate) * up` then `W^T`, for x [M, 2K] = gate | up: the MLP's down projection.

    On the Triton path the activation is computed in the GEMV's operand loads, so decode saves a
    kernel and a round trip of the [M, K] activation; elsewhere it is `silu_and_mul` then linear.
    """
    k = w.shape[1]
    if x.dim() == 2 and x.shape[1] == 2 * k and triton_supported(x[:, :k], w, bias):
        return skinny_gemm_triton(x, w, bias, silu_mul=True)
    from floorline.kernels.activation import silu_and_mul

    return F.linear(silu_and_mul(x), w, bias)


def fusion_supported(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, silu_mul: bool = False,
                     norm_weight: torch.Tensor | None = None, norm_ss: torch.Tensor | None = None,
                     prescaled: bool = False, residual: torch.Tensor | None = None,
                     out_norm_weight: torch.Tensor | None = None) -> bool:
    """Whether `skinny_gemm_triton` can run these fusions here: `triton_supported` plus their layouts."""
    if not FUSE_NEIGHBOURS:
        return False
    if silu_mul:
        if x.dim() != 2 or x.shape[1] != 2 * w.shape[1]:
            return False
        x = x[:, : w.shape[1]]
    return triton_supported(x, w, bias) and layout_problem(x, w.shape[0], norm_weight, norm_ss, residual,
                                                            silu_mul, prescaled, out_norm_weight) is None
