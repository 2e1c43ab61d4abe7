"""Launch plumbing and device helpers shared by the quantized GEMV kernels (quant_w8, quant_int4, quant_nf4).

The kernels follow `skinny_gemm`: one program owns BLOCK_N output rows and walks K in BLOCK_K steps
(a multiple of the format's group), reading the packed weights once and dequantizing in registers;
M == 1 takes an FMA path, M in 2..64 a tensor-core dot path, split-K fills the SMs on short grids.
The 4-bit formats also have persistent M == 1 kernels (configs with `programs_per_sm`): a fixed grid
whose programs each own one K tile, load its x once, and walk row tiles with a stride.
Which kernel and tile a launch takes is `quant_configs`' business.

Prefill (M > DOT_MAX_M) dequantizes the whole weight into a per-device buffer and runs cuBLAS on it: the
dequantization reads the packed bytes once and writes 2 bytes a weight, small next to a GEMM of
hundreds of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floorline.kernels.decode_attention import num_sms_of
from floorline.kernels.fusion_args import layout_problem
from floorline.kernels.pdl import early_launch_args, pdl_args
from floorline.kernels.quant_configs import DOT_MAX_M, QuantGemvConfig, get_config
from floorline.kernels.skinny_gemm import DOT_BLOCK_M, _dot, _epilogue, _finish, _operand
from floorline.kernels.tickets import tickets
from floorline.kernels.triton_compat import tl, triton

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class Geometry:
    """Grid and split-K buffers of one launch."""

    tiles: int
    splits: int
    blocks_per_split: int
    ws: torch.Tensor  # [splits, M, N] fp32 partials, or a dummy
    tickets: torch.Tensor  # int32 counters, or a dummy


def geometry(cfg: QuantGemvConfig, m: int, n: int, k: int, out: torch.Tensor) -> Geometry:
    tiles = triton.cdiv(n, cfg.block_n)
    k_blocks = triton.cdiv(k, cfg.block_k)
    per_split = triton.cdiv(k_blocks, max(1, min(cfg.split_k, k_blocks)))
    splits = triton.cdiv(k_blocks, per_split)  # no empty splits
    if splits == 1:
        return Geometry(tiles, 1, per_split, out, out)  # dummies: SPLIT=False never touches them
    ws = torch.empty((splits, m, n), dtype=torch.float32, device=out.device)
    return Geometry(tiles, splits, per_split, ws, tickets(out.device, tiles, "quant_gemv"))


@dataclass
class PersistentGeometry:
    """Grid of a persistent M = 1 launch: `programs` = splits x programs per split; `reduce` the
    constexprs of `_persistent_reduce`'s partial tiles (split count and row tiles a load, powers of two)."""

    programs: int
    tiles: int
    splits: int
    ws: torch.Tensor
    tickets: torch.Tensor
    reduce: dict


REDUCE_ELEMENTS = 2048  # partials `_persistent_reduce` loads at once (a few registers a thread)


def persistent_geometry(cfg: QuantGemvConfig, n: int, k: int, out: torch.Tensor) -> PersistentGeometry:
    tiles = triton.cdiv(n, cfg.block_n)
    splits = triton.cdiv(k, cfg.block_k)
    per_split = max(1, min(tiles, triton.cdiv(cfg.programs_per_sm * num_sms_of(out.device), splits)))
    if splits == 1:
        return PersistentGeometry(per_split, tiles, 1, out, out, dict(SPLITS_P2=1, TILES_AT_ONCE=1))
    splits_p2 = triton.next_power_of_2(splits)
    at_once = min(triton.next_power_of_2(triton.cdiv(tiles, per_split)),
                  max(1, REDUCE_ELEMENTS // (splits_p2 * cfg.block_n)))
    ws = torch.empty((splits, 1, n), dtype=torch.float32, device=out.device)
    return PersistentGeometry(per_split * splits, tiles, splits, ws, tickets(out.device, tiles, "quant_gemv"),
                              dict(SPLITS_P2=splits_p2, TILES_AT_ONCE=at_once))


def dot_block_m(m: int) -> int:
    """Rows of a dot path's x tile: 16 (tl.dot's least) up to the next power of two of m."""
    return max(DOT_BLOCK_M, triton.next_power_of_2(m))


def persistent_pdl_args(cfg: QuantGemvConfig, device: torch.device) -> dict:
    """A persistent launch's PDL keywords: with `early_launch`, the EARLY_LAUNCH trigger too."""
    return early_launch_args(device) if cfg.early_launch else pdl_args(device)


def half2_ok(cfg: QuantGemvConfig, x: torch.Tensor) -> bool:
    """Whether a persistent launch takes the fp16x2 loop: asked for, and 16-bit activations (fp32 ones
    keep the fp32 loop, whose results their tolerances expect)."""
    return cfg.half2 and x.dtype in (torch.float16, torch.bfloat16)


def unfused_silu(x: torch.Tensor, silu_mul: bool, cfg: QuantGemvConfig) -> tuple[torch.Tensor, bool]:
    """(x, silu_mul) for the launch: the SiLU-and-mul stays in the GEMV's x loads only in the persistent
    M = 1 kernels, which load x once per program. The others load x once per row tile, so each tile
    would recompute it; one activation kernel first costs less (H200, down projection at M = 1, same
    config fused / plain: int8 `fma n16 k512 st4` 25.1 / 16.6 us, int4 `fma n8 k4096` 22.6 / 17.3 us;
    the activation kernel adds ~1.3 us)."""
    if silu_mul and not cfg.persistent:
        from floorline.kernels.activation import silu_and_mul

        return silu_and_mul(x), False
    return x, silu_mul


def m1_fusion_problem(x: torch.Tensor, n: int, kp: int, cfg: QuantGemvConfig, norm_ss=None, residual=None,
                      out_norm_weight=None) -> str | None:
    """What keeps a 4-bit GEMV from fusing its RMSNorm neighbours (`quant_w8.w8_gemv_triton` documents
    them) for the operand x [M, K] (the gate half with the SiLU), or None: one row; the persistent
    kernels take all of them (the residual without a K split), the M = 1 K loop the residual and the
    next norm's weight."""
    if norm_ss is None and residual is None and out_norm_weight is None:
        return None
    if x.shape[0] != 1 or cfg.use_dot:
        return f"the fusions run on one row's M = 1 kernels, got {x.shape[0]} rows{' on the dot path' * cfg.use_dot}"
    if norm_ss is not None and not cfg.persistent:
        return "a prescaled operand (norm_ss) needs a persistent config (programs_per_sm > 0)"
    if residual is not None and cfg.persistent and triton.cdiv(kp, cfg.block_k) > 1:
        return f"the residual add needs a persistent config without a K split, got block_k {cfg.block_k} for K {kp}"
    return layout_problem(x, n, None, norm_ss, residual, False, norm_ss is not None, out_norm_weight)


def default_config_fuses(fmt: str, x: torch.Tensor, n: int, k: int, k_unit: int, problem) -> bool:
    """Whether `problem(cfg)` (a launcher's fusion rules) finds nothing against format `fmt`'s default
    config for one row x [1, K] and N outputs."""
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != k:
        return False
    return problem(get_config(fmt, n, k, 1, k_unit, x.device)) is None


def m1_fusion_wanted(fmt: str, x: torch.Tensor, qweight: torch.Tensor, k: int, k_unit: int, **fusions) -> bool:
    """Whether a 4-bit format's GEMV runs these neighbour fusions (its launcher's keywords) for the operand
    x (the gate half with the SiLU) with its default config."""
    n, kp = qweight.shape[0], 8 * qweight.shape[1]
    return default_config_fuses(fmt, x, n, k, k_unit, lambda cfg: m1_fusion_problem(x, n, kp, cfg, **fusions))


def operand(x: torch.Tensor, k: int, silu_mul: bool, name: str) -> torch.Tensor:
    """Checks x [M, K] (or [M, 2K] gate | up with `silu_mul`) and returns it with a unit last stride."""
    width = 2 * k if silu_mul else k
    if x.dim() != 2 or x.shape[1] != width:
        raise ValueError(f"{name}: x must be [M, {width}] for a weight of {k} input features, got {tuple(x.shape)}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{name}: x must be float16/bfloat16/float32, got {x.dtype}")
    if not 1 <= x.shape[0] <= DOT_MAX_M:
        raise ValueError(f"{name}: the GEMV takes 1 <= M <= {DOT_MAX_M} rows, got {x.shape[0]}")
    return x if x.stride(1) == 1 else x.contiguous()


_BUFFERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # replaced buffers stay alive: a captured graph may still read them


def dequant_buffer(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A flat buffer of at least `numel` elements shared by every layer on `device` (one stream: layers
    run one after another, so each overwrites the previous layer's weights only after it was used)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _BUFFERS.get((device, dtype))
    if buf is not None and buf.numel() >= numel:
        return buf
    fresh = torch.empty(numel, dtype=dtype, device=device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return fresh  # from the graph's pool and owned by it; never cached (DecodeGraphs warms up first)
    if buf is not None:
        _RETIRED.append(buf)
    _BUFFERS[(device, dtype)] = fresh
    return fresh


# Device helpers of the quantized GEMV kernels. Triton inlines them into each kernel; they were
# factored out of quant_int4 / quant_nf4 / quant_w8 without changing the sm_90 code those compile to.


@triton.jit
def _nc_load(ptrs, ASM: tl.constexpr):
    """Unmasked read-only load of 32-bit or uint8 elements (uint8 ones come back as int32).

    ASM: as inline PTX. The result of an elementwise op takes whatever layout its consumer wants, where a
    `tl.load` takes a coalesced layout of its own and, in the persistent loops, converts it through shared
    memory each row tile (offline sm_90: 4 of int4's 9 barriers a tile). The interpreter has no PTX."""
    if ptrs.dtype.element_ty == tl.uint8:
        if ASM:
            v = tl.inline_asm_elementwise("ld.global.nc.u8 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                          is_pure=True, pack=1)
        else:
            v = tl.load(ptrs).to(tl.int32)
    elif ASM:
        v = tl.inline_asm_elementwise("ld.global.nc.b32 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=True,
                                      pack=1).to(ptrs.dtype.element_ty, bitcast=True)
    else:
        v = tl.load(ptrs)
    return v


@triton.jit
def _load_x(ptrs, mask, K, X_SILU_MUL: tl.constexpr, MASKED: tl.constexpr = True):
    """x elements (with `X_SILU_MUL`, silu(gate) * up of x [M, 2K]); MASKED=False: no predication."""
    return _operand(ptrs, None, mask, K, MASKED, X_SILU_MUL, False)


@triton.jit
def _split_tile(k_limit, k_blocks_per_split, N, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(tile, split, k_start, k_end, rn, rn_w) of a K-loop program on a (tiles, splits) grid: its rows rn,
    clamped to N - 1 in rn_w (past-N rows re-read row N - 1: unmasked loads, masked stores), and its
    split's K range, cut at k_limit."""
    tile = tl.program_id(0)
    split = tl.program_id(1)
    k_start = split * k_blocks_per_split * BLOCK_K
    k_end = tl.minimum(k_limit, k_start + k_blocks_per_split * BLOCK_K)
    rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    return tile, split, k_start, k_end, rn, tl.minimum(rn, N - 1)


@triton.jit
def _join_slots(w0, w1, w2, w3, w4, w5, w6, w7):
    """Eight [..] tensors -> [.., 2, 2, 2] with slot 4a + 2b + c at [.., a, b, c] (a register-only join).

    Each join appends its pair as the new last dimension, so the outermost join picks c.
    """
    return tl.join(tl.join(tl.join(w0, w4), tl.join(w2, w6)), tl.join(tl.join(w1, w5), tl.join(w3, w7)))


@triton.jit
def _slot_dot_pointers(q_ptr, x_ptr, rn64, M, stride_qn, stride_xm, k_start, NB: tl.constexpr, GW: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """4-bit dot path: word pointers [BN, NB, GW] (row, group, word), x pointers [BM, BK], the x tile's
    column offsets [1, BK] and row mask [BM, 1] at k_start."""
    rj = tl.arange(0, GW)
    woff = tl.arange(0, NB)[:, None] * GW + rj[None, :]  # [NB, GW]
    q_ptrs = q_ptr + rn64[:, None, None] * stride_qn + (k_start // 8 + woff)[None, :, :]
    rm = tl.arange(0, BLOCK_M)
    xoff = tl.arange(0, BLOCK_K)[None, :]
    x_ptrs = x_ptr + rm[:, None] * stride_xm + k_start + xoff
    return q_ptrs, x_ptrs, xoff, (rm < M)[:, None]


@triton.jit
def _slot_dot_load(q_ptrs, x_ptrs, group_ok, m_mask, k, xoff, K, EVEN_K: tl.constexpr):
    """4-bit dot path, the tile at k: words [BN, NB, GW] as uint32 (groups past the end, `group_ok` [NB]
    false, read as 0 unless EVEN_K) and x [BM, BK]."""
    if EVEN_K:
        w = tl.load(q_ptrs, eviction_policy="evict_first")
        xs = _load_x(x_ptrs, m_mask, K, False)
    else:
        w = tl.load(q_ptrs, mask=group_ok[None, :, None], other=0, eviction_policy="evict_first")
        xs = _load_x(x_ptrs, m_mask & (k + xoff < K), K, False)
    return w.to(tl.uint32, bitcast=True), xs


@triton.jit
def _slot_dot(acc, xs, w0, w1, w2, w3, w4, w5, w6, w7, BLOCK_N: tl.constexpr, NB: tl.constexpr, GW: tl.constexpr,
              BLOCK_K: tl.constexpr, DOT_IEEE: tl.constexpr):
    """acc + xs W^T, W the tile's eight dequantized slots [BN, NB, GW]: joined in registers and permuted to
    column order [BN, BK] on their way to the dot operand layout, rounded to x's dtype, one tl.dot."""
    wt = _join_slots(w0, w1, w2, w3, w4, w5, w6, w7)
    wt = tl.permute(tl.reshape(wt, (BLOCK_N, NB, GW, 8)), (0, 1, 3, 2))  # to column order
    wt = tl.reshape(wt, (BLOCK_N, BLOCK_K)).to(xs.dtype)
    return _dot(xs, tl.trans(wt), acc, DOT_IEEE)


@triton.jit
def _k_loop_epilogue(out, rn, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, res_ptr, ss_out_ptr, nw_out_ptr,
                     scaled_ptr, SPLIT: tl.constexpr, ADD_RESIDUAL: tl.constexpr, SCALE_OUT: tl.constexpr):
    """An M = 1 K loop's rows out [BN]: stored, or as split-K partials (skinny_gemm's `_epilogue`), with the
    residual and the next norm's outputs when asked (ADD_RESIDUAL / SCALE_OUT)."""
    if ADD_RESIDUAL:
        r = tl.load(res_ptr + rn, mask=rn < N, other=0.0)
    else:
        r = None
    _epilogue(out, rn, rn, rn < N, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, N, N,
              False, SPLIT, r, ss_out_ptr, tile, None, ADD_RESIDUAL, nw_out_ptr, scaled_ptr, SCALE_OUT)


@triton.jit
def _slot_dot_epilogue(acc, rn, M, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, BLOCK_M: tl.constexpr,
                       SPLIT: tl.constexpr):
    """Stores the dot path's [BM, BN] tile (rows < M, columns < N), through split-K partials with SPLIT."""
    rm = tl.arange(0, BLOCK_M)
    c_offs = rm[:, None] * N + rn[None, :]
    mask = (rm < M)[:, None] & (rn[None, :] < N)
    _epilogue(acc, c_offs, rn[None, :], mask, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split,
              num_splits, N, M * N, False, SPLIT)


@triton.jit
def _slot_x(x_ptrs, kx, K, S: tl.constexpr, GW: tl.constexpr, EVEN_K: tl.constexpr, X_SILU_MUL: tl.constexpr):
    """fp32 x elements of slot S (columns kx + S * GW), zero past K."""
    if EVEN_K:
        return _load_x(x_ptrs + S * GW, None, K, X_SILU_MUL, False).to(tl.float32)
    return _load_x(x_ptrs + S * GW, kx + S * GW < K, K, X_SILU_MUL).to(tl.float32)


@triton.jit
def _slot_xs(x_ptrs, kx, K, GW: tl.constexpr, EVEN_K: tl.constexpr, X_SILU_MUL: tl.constexpr):
    """The eight slots' fp32 x elements (`_slot_x` for S = 0..7), as a tuple."""
    return (_slot_x(x_ptrs, kx, K, 0, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 1, GW, EVEN_K, X_SILU_MUL),
            _slot_x(x_ptrs, kx, K, 2, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 3, GW, EVEN_K, X_SILU_MUL),
            _slot_x(x_ptrs, kx, K, 4, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 5, GW, EVEN_K, X_SILU_MUL),
            _slot_x(x_ptrs, kx, K, 6, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 7, GW, EVEN_K, X_SILU_MUL))


@triton.jit
def _persistent_store(out, rn, N, out_ptr, ws_ptr, split, SPLIT: tl.constexpr, tile=None, rstd=None, r=None,
                      ss_ptr=None, nw_out_ptr=None, scaled_ptr=None, X_PRESCALED: tl.constexpr = False,
                      ADD_RESIDUAL: tl.constexpr = False, SCALE_OUT: tl.constexpr = False):
    """Persistent M = 1 kernels, one row tile's result: the output, or with SPLIT its fp32 partial
    (summed by `_persistent_reduce` once every split of the program's rows is done).

    The RMSNorm neighbours: X_PRESCALED scales the result by rstd first; ADD_RESIDUAL (no split) stores
    it through skinny_gemm's `_finish` (the residual r, the s^2 partial at `tile`, with SCALE_OUT the
    output times the next norm's weight)."""
    if X_PRESCALED:
        out = out * rstd
    if ADD_RESIDUAL:
        _finish(out, rn, rn, rn < N, out_ptr, out_ptr, N, False, r, ss_ptr, tile, None, True, nw_out_ptr,
                scaled_ptr, SCALE_OUT)
    elif SPLIT:
        tl.store(ws_ptr + split * N + rn, out, mask=rn < N)
    else:
        tl.store(out_ptr + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)


@triton.jit
def _persistent_reduce(out_ptr, ws_ptr, cnt_ptr, group, num_tiles, step, num_splits, N, BLOCK_N: tl.constexpr,
                       SPLITS_P2: tl.constexpr, TILES_AT_ONCE: tl.constexpr):
    """After its last row tile: the programs of one row group (one per split, all walking the same
    tiles) take one ticket each, and the last sums the group's partials (deterministic: a fixed tree
    over the splits).

    One ticket per program, not per tile: a ticket is a round trip to L2 that the program waits for.
    The partials are read as [TILES_AT_ONCE, SPLITS_P2, BLOCK_N] tiles, all loads in flight together:
    a loop of one load per split and tile made the last program wait ~one L2 round trip for each
    (about 38 of them on the down projection), the tail that left the split kernels behind the K loop."""
    tl.debug_barrier()  # every thread's partials issued before the (release) ticket
    ticket = tl.atomic_add(cnt_ptr + group, 1, sem="acq_rel", scope="gpu")
    if ticket == num_splits - 1:
        ri = tl.arange(0, TILES_AT_ONCE)[:, None]
        rs = tl.arange(0, SPLITS_P2)[None, :, None]
        rb = tl.arange(0, BLOCK_N)[None, :]
        for first in range(group, num_tiles, step * TILES_AT_ONCE):
            rn = (first + ri * step) * BLOCK_N + rb  # [T, BN]
            ok = (first + ri * step < num_tiles) & (rn < N)
            parts = tl.load(ws_ptr + rs * N + rn[:, None, :], mask=ok[:, None, :] & (rs < num_splits), other=0.0,
                            cache_modifier=".cg")  # from L2, where the other SMs' partials are
            tl.store(out_ptr + rn, tl.sum(parts, axis=1).to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(cnt_ptr + group, 0)  # ready for the next launch (or graph replay)


@triton.jit
def _row_words(q_ptr, rn_w, stride_qn, woff, g_ok, EVEN_K: tl.constexpr, tile=None, num_tiles=None):
    """Persistent M = 1 kernels: words [.., NB, BN, 4] (uint32) of rows rn_w at word offsets woff [.., NB, 1, 4];
    groups (blocks) where g_ok [NB, 1] is false read 0 unless EVEN_K; with `tile`, nothing is read unless
    tile < num_tiles (a prefetch past the program's last tile)."""
    ptrs = q_ptr + rn_w.to(tl.int64)[None, None, :, None] * stride_qn + woff
    if tile is not None:
        ok = woff * 0 + tile < num_tiles  # as a tensor: a scalar mask is not one
        if not EVEN_K:
            ok = ok & g_ok[None, :, :, None]
        w = tl.load(ptrs, mask=ok, other=0, eviction_policy="evict_first")
    elif EVEN_K:
        w = tl.load(ptrs, eviction_policy="evict_first")
    else:
        w = tl.load(ptrs, mask=g_ok[None, :, :, None], other=0, eviction_policy="evict_first")
    return w.to(tl.uint32, bitcast=True)
