"""Quantized GEMV and dequantization kernels (Triton interpreter on CPU) against their references."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import floorline.kernels.quant_common as qc
import floorline.kernels.quant_configs as qcfg
from floorline.kernels.activation import silu_and_mul
from floorline.kernels.quant_configs import QuantGemvConfig, get_config, heuristic_config, load_tuned_configs
from floorline.kernels.quant_int4 import (
    int4_dequantize_ref,
    int4_dequantize_triton,
    int4_gemm_ref,
    int4_gemv_triton,
)
from floorline.kernels.quant_int4_codes import int4_row_params
from floorline.kernels.quant_packing import pack_int4, pack_nf4
from floorline.kernels.quant_nf4 import (
    nf4_code,
    nf4_dequantize_ref,
    nf4_dequantize_triton,
    nf4_gemm_ref,
    nf4_gemv_triton,
)
from floorline.kernels.quant_w8 import (
    int8_to_stored,
    w8_dequantize_ref,
    w8_dequantize_triton,
    w8_gemm_ref,
    w8_gemv_triton,
)

TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.float16: {"rtol": 3e-3, "atol": 3e-3}}
# the fp16x2 loops sum 16 products a half in fp16: |out - ref| up to 3e-3 |ref| + 0.0047 in 120 seeds (outputs O(1))
TOL_HALF2 = {"rtol": 3e-3, "atol": 1e-2}


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (inputs differ between runs); reported when a comparison fails."""
    return torch.seed()


def _close(out, ref, dtype, seed, half2=False):
    # inputs are scaled so outputs are O(1); fp16 tolerances then mean a few ulps
    tol = TOL_HALF2 if half2 and dtype != torch.float32 else TOL[dtype]
    torch.testing.assert_close(out, ref, **tol, msg=lambda m: f"{m}\n(seed {seed})")


def _x(m: int, k: int, dtype: torch.dtype, silu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(m, 2 * k if silu else k).to(dtype)
    return x, (silu_and_mul(x) if silu else x)


def _check_int4_config(cfg, m, n, k, group, silu, dtype, seed):
    """int4_gemv_triton with `cfg` against the reference on random weights and x (M rows)."""
    if cfg.block_k % group:
        pytest.skip("block_k must be a multiple of the group")
    qw, s, z = _int4(n, k, group)
    x, xr = _x(m, k, dtype, silu)
    out = int4_gemv_triton(x, qw, s, z, k, group, silu_mul=silu, config=cfg)
    _close(out, int4_gemm_ref(xr, qw, s, z, k, group), dtype, seed, cfg.half2)


def _int4(n: int, k: int, group: int):
    kp = -(-k // group) * group
    codes = torch.randint(0, 16, (n, kp), dtype=torch.uint8)
    scales = (torch.rand(kp // group, n) / (2 * k**0.5)).half()
    zeros = torch.randint(0, 16, (kp // group, n)).half()
    return pack_int4(codes, group), scales, zeros


def _nf4(n: int, k: int, nested: bool):
    qweight = pack_nf4(torch.randint(0, 16, (n, k), dtype=torch.uint8))
    if not nested:
        return qweight, torch.rand(n, k // 64) / k**0.5, None
    codes = torch.randint(0, 256, (n, k // 64), dtype=torch.uint8)
    groups = -(-n * (k // 64) // 256) + 3
    maps = torch.rand(2, 256) * 2 - 1  # two shards' maps: rows below n // 2 use the first
    row_map = torch.where(torch.arange(n) < n // 2, 0, 256).to(torch.int32)
    nested_state = (torch.rand(groups) / k**0.5, maps, (torch.arange(n, dtype=torch.int32) * (k // 64) + 256).int(),
                    torch.rand(n) / k**0.5, row_map)
    return qweight, codes, nested_state


# ---- int4 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k,group", [(40, 128, 128), (72, 320, 64), (33, 200, 32), (16, 64, 128)])
@pytest.mark.parametrize("silu", [False, True])
def test_int4_gemv_default_config(dtype, m, n, k, group, silu, seed):
    qw, s, z = _int4(n, k, group)
    x, xr = _x(m, k, dtype, silu)
    half2 = get_config("int4", n, k, m, group, "cpu").half2  # one row: the fp16x2 loop (its fp16 sums' tolerance)
    _close(int4_gemv_triton(x, qw, s, z, k, group, silu_mul=silu), int4_gemm_ref(xr, qw, s, z, k, group), dtype, seed,
           half2)


@pytest.mark.parametrize("use_dot,m,stages", [(False, 1, 1), (False, 1, 3), (True, 1, 3), (True, 5, 3)])
@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("k,block_k", [(256, 128), (384, 256), (320, 128)])
def test_int4_gemv_configs_and_split_k(use_dot, m, stages, split_k, k, block_k, seed):
    """The FMA path's K loop on [NC, NB, BN, 4] tiles, unpipelined and pipelined; the dot path."""
    qw, s, z = _int4(72, k, 64)
    x, _ = _x(m, k, torch.float32, False)
    cfg = QuantGemvConfig(block_n=16 if use_dot else 8, block_k=block_k, split_k=split_k, use_dot=use_dot,
                          num_stages=stages)
    _close(int4_gemv_triton(x, qw, s, z, k, 64, config=cfg), int4_gemm_ref(x, qw, s, z, k, 64), torch.float32, seed)


# the M = 1 K loops in fp16x2 (per-position x scales), unpipelined and pipelined (quant_int4_stream): split-K,
# several K tiles a split, masked K tails (320 = 2.5 tiles), the SiLU operand, groups of 32..128, 1-2 warps
K_LOOP_HALF2 = [QuantGemvConfig(block_n=8, block_k=128, split_k=2, num_warps=2, num_stages=1, half2=True),
                QuantGemvConfig(block_n=4, block_k=256, split_k=1, num_warps=1, num_stages=1, half2=True),
                QuantGemvConfig(block_n=8, block_k=128, split_k=2, num_warps=2, num_stages=3, half2=True)]


@pytest.mark.parametrize("cfg", K_LOOP_HALF2, ids=["split", "one-warp", "pipelined"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,group", [(72, 512, 64), (40, 320, 32), (24, 384, 128)])
@pytest.mark.parametrize("silu", [False, True])
def test_int4_k_loop_half2(cfg, dtype, n, k, group, silu, seed):
    """fp32 activations keep the fp32 loop (half2 needs 16-bit x); both loops must match the reference."""
    _check_int4_config(cfg, 1, n, k, group, silu, dtype, seed)


# the pair dot path (quant_pairs, emulated in Triton ops here): 16-bit activations, groups >= 64;
# several groups a K tile, split-K partials, K tails, rows past N and M, and the SiLU-and-mul operand
PAIRS = [QuantGemvConfig(block_n=16, block_k=64, split_k=1, num_stages=2, use_dot=True, pairs=True),
         QuantGemvConfig(block_n=32, block_k=256, split_k=3, num_stages=2, use_dot=True, pairs=True)]


@pytest.mark.parametrize("cfg", PAIRS, ids=["one-group-tiles", "split"])
@pytest.mark.parametrize("m", [2, 16, 40])  # 40: past MAX_M, a 64-row x tile
@pytest.mark.parametrize("n,k,group", [(40, 320, 64), (72, 512, 128), (16, 200, 64)])
@pytest.mark.parametrize("silu", [False, True])
def test_int4_pairs_dot_path(cfg, m, n, k, group, silu, seed):
    _check_int4_config(cfg, m, n, k, group, silu, torch.float16, seed)


def test_int4_pairs_slot_order_is_the_packing_layouts():
    """Each slot's code meets its own x column: one code at a time, every slot, the zero point off."""
    from floorline.kernels.quant_pairs import PAIRS as SLOT_PAIRS

    assert sorted(s for pair in SLOT_PAIRS for s in pair) == list(range(8))
    n, k, group = 16, 128, 128
    x = torch.zeros(2, k, dtype=torch.float16)
    x[0] = torch.arange(k, dtype=torch.float16) / k
    x[1] = 1.0
    for q in (1, 9, 15):
        codes = torch.zeros(n, k, dtype=torch.uint8)
        codes[torch.arange(n), torch.arange(n) * 8 % k] = q  # row r: one code, column 8 r (all eight slots)
        qw = pack_int4(codes, group)
        s, z = torch.ones(1, n).half(), torch.zeros(1, n).half()
        out = int4_gemv_triton(x, qw, s, z, k, group, config=dataclasses.replace(PAIRS[0], block_k=128))
        torch.testing.assert_close(out.float(), int4_gemm_ref(x, qw, s, z, k, group).float(), rtol=1e-3, atol=1e-3)


def test_int4_pairs_configs_fall_back_where_the_path_does_not_apply(seed):
    """fp32 activations and groups of 32 take the first dot path: fp32 tolerances, any group."""
    cfg = dataclasses.replace(PAIRS[0], block_k=128)
    for dtype, group in ((torch.float32, 128), (torch.float16, 32)):
        qw, s, z = _int4(24, 256, group)
        x, _ = _x(3, 256, dtype, False)
        _close(int4_gemv_triton(x, qw, s, z, 256, group, config=cfg), int4_gemm_ref(x, qw, s, z, 256, group), dtype,
               seed)


@pytest.mark.parametrize("fmt", ["int4", "nf4", "int8"])
def test_more_than_16_rows_run_on_the_dot_paths(fmt, seed):
    """17..DOT_MAX_M rows on the first dot paths (fp32 x, a 64-row x tile; the pair dots' 40-row cases are with
    their tests) against the reference; the FMA path and 65 rows are refused, naming what is accepted."""
    first = QuantGemvConfig(block_n=16, block_k=128, split_k=2, num_stages=1, use_dot=True)
    x32, _ = _x(40, 256, torch.float32, False)
    if fmt == "int4":
        qw, s, z = _int4(24, 256, 64)
        run = lambda x, cfg=None: int4_gemv_triton(x, qw, s, z, 256, 64, config=cfg)  # noqa: E731
        ref = lambda x: int4_gemm_ref(x, qw, s, z, 256, 64)  # noqa: E731
    elif fmt == "nf4":
        qn, a, _ = _nf4(24, 256, False)
        run = lambda x, cfg=None: nf4_gemv_triton(x, qn, a, None, nf4_code(), config=cfg)  # noqa: E731
        ref = lambda x: nf4_gemm_ref(x, qn, a, None)  # noqa: E731
    else:
        q8, sc = _w8(24, 256, False)
        run = lambda x, cfg=None: w8_gemv_triton(x, q8, sc, False, config=cfg)  # noqa: E731
        ref = lambda x: w8_gemm_ref(x, q8, sc, False)  # noqa: E731
    _close(run(x32, first), ref(x32), torch.float32, seed)
    _close(run(x32), ref(x32), torch.float32, seed)  # the heuristic's config for 40 rows
    with pytest.raises(ValueError, match="M == 1 only"):
        run(x32, QuantGemvConfig(block_n=8, block_k=128))
    with pytest.raises(ValueError, match=f"1 <= M <= {qcfg.DOT_MAX_M}"):
        run(_x(qcfg.DOT_MAX_M + 1, 256, torch.float32, False)[0])
    with pytest.raises(ValueError, match="M == 1 only"):
        qcfg.set_tuned_config(fmt, 24, 256, 32, QuantGemvConfig(8, 128))


def test_rows_past_16_have_their_own_config_buckets(monkeypatch):
    """17..32 rows read bucket 32, 33..64 bucket 64 (table entries or FLOORLINE_QUANT_CONFIGS); other
    bucket numbers are refused."""
    monkeypatch.setattr(qcfg, "TUNED_CONFIGS", dict(qcfg.TUNED_CONFIGS))
    b32, b64 = QuantGemvConfig(32, 128, use_dot=True), QuantGemvConfig(64, 256, use_dot=True)
    qcfg.set_tuned_config("int8", 24, 256, 32, b32)
    qcfg.set_tuned_config("int8", 24, 256, 64, b64)
    assert [qcfg.quant_m_bucket(m) for m in (16, 17, 32, 33, 64)] == [16, 32, 32, 64, 64]
    assert qcfg.get_config("int8", 24, 256, 17, 16, "cpu") == b32 and qcfg.get_config("int8", 24, 256, 40, 16, "cpu") == b64
    with pytest.raises(ValueError, match="M-bucket must be one of"):
        qcfg.set_tuned_config("int8", 24, 256, 48, b64)


# persistent M = 1 kernels: several row tiles per program (2 programs "per SM" on the CPU's few), one K
# tile per program (K > block_k: split partials and tickets), masked K tails, prefetch, one-warp programs
PERSISTENT = [QuantGemvConfig(block_n=4, block_k=128, num_warps=2, num_stages=1, programs_per_sm=1),
              QuantGemvConfig(block_n=8, block_k=256, num_warps=2, num_stages=1, programs_per_sm=2, prefetch=True),
              QuantGemvConfig(block_n=16, block_k=128, num_warps=1, num_stages=1, programs_per_sm=1)]


# the fp16x2 loop (quant_half2, emulated in Triton ops here) for 16-bit activations; fp32 ones keep the fp32 loop
HALF2 = [dataclasses.replace(c, half2=True) for c in PERSISTENT[:2]]
M1_CASES = [(c, torch.float32) for c in PERSISTENT] + [(c, torch.float16) for c in HALF2]
M1_IDS = ["split", "prefetch", "one-warp", "half2-split", "half2-prefetch"]


@pytest.mark.parametrize("cfg,dtype", M1_CASES, ids=M1_IDS)
@pytest.mark.parametrize("n,k,group", [(72, 256, 64), (40, 300, 32), (24, 128, 128)])
@pytest.mark.parametrize("silu", [False, True])
def test_int4_persistent_m1_kernel(cfg, dtype, n, k, group, silu, seed):
    _check_int4_config(cfg, 1, n, k, group, silu, dtype, seed)


# the kernels that read the row-major copy of scales and zeros: persistent (split: tickets; prefetch: the next
# tile's params too; fp16x2); EVEN_K and masked K tails
ROW_PARAM_CASES = [(PERSISTENT[0], torch.float32), (PERSISTENT[1], torch.float32), (HALF2[1], torch.float16)]


@pytest.mark.parametrize("cfg,dtype", ROW_PARAM_CASES, ids=["split", "prefetch", "half2-prefetch"])
@pytest.mark.parametrize("n,k,group", [(72, 256, 64), (40, 300, 32)])
def test_int4_m1_kernels_read_the_row_major_params(cfg, dtype, n, k, group, seed):
    qw, s, z = _int4(n, k, group)
    rows = int4_row_params(s, z)
    assert rows.shape == (n, s.shape[0]) and rows.dtype == torch.int32
    assert torch.equal((rows & 0xFFFF).to(torch.int16).view(torch.float16), s.t())
    assert torch.equal((rows >> 16).to(torch.int16).view(torch.float16), z.t())
    x, _ = _x(1, k, dtype, False)
    out = int4_gemv_triton(x, qw, s, z, k, group, config=cfg, row_params=rows)
    _close(out, int4_gemm_ref(x, qw, s, z, k, group), dtype, seed, cfg.half2)
    # the same values from another layout: the same sums, bit for bit
    assert torch.equal(out, int4_gemv_triton(x, qw, s, z, k, group, config=cfg))
    with pytest.raises(ValueError, match=r"row_params must be contiguous int32 \[%d, %d\]" % (n, s.shape[0])):
        int4_gemv_triton(x, qw, s, z, k, group, config=cfg, row_params=rows.t())


@pytest.mark.parametrize("elements", [16, 32])
def test_persistent_split_reduce_in_chunks(elements, monkeypatch, seed):
    """The last program of a row group sums its partials a few row tiles at a time when they do not fit
    one load (1 and 2 tiles here, of 4-5 a program: a short last chunk), for int4 and NF4."""
    monkeypatch.setattr(qc, "REDUCE_ELEMENTS", elements)
    cfg = PERSISTENT[0]  # 4 rows, 128-wide K tiles: 3 splits (SPLITS_P2 = 4)
    geo = qc.persistent_geometry(cfg, 36, 384, torch.empty(1, 36))
    assert geo.splits == 3 and geo.reduce["TILES_AT_ONCE"] == elements // 16 and geo.tiles == 9
    qw, s, z = _int4(36, 384, 64)
    x, _ = _x(1, 384, torch.float32, False)
    _close(int4_gemv_triton(x, qw, s, z, 384, 64, config=cfg), int4_gemm_ref(x, qw, s, z, 384, 64),
           torch.float32, seed)
    qn, a, _ = _nf4(36, 384, False)
    _close(nf4_gemv_triton(x, qn, a, None, nf4_code(), config=cfg), nf4_gemm_ref(x, qn, a, None), torch.float32,
           seed)


def test_half2_configs_keep_the_fp32_loop_for_fp32_activations(seed):
    """fp32 x with a half2 config runs the fp32 loop: fp32 tolerances hold (fp16 sums would not)."""
    qw, s, z = _int4(40, 256, 64)
    qn, a, _ = _nf4(40, 256, False)
    x, _ = _x(1, 256, torch.float32, False)
    _close(int4_gemv_triton(x, qw, s, z, 256, 64, config=HALF2[0]), int4_gemm_ref(x, qw, s, z, 256, 64),
           torch.float32, seed)
    _close(nf4_gemv_triton(x, qn, a, None, nf4_code(), config=HALF2[0]), nf4_gemm_ref(x, qn, a, None),
           torch.float32, seed)


def test_half2_loops_scale_x_past_the_fp16_range_and_keep_zero_x_exact():
    """|x| near fp16's max (products past it) would overflow the fp16 partial sums unscaled; small x is
    scaled up (3e-4, where the fp16 outputs stay normal: at 1e-5 they are fp16 subnormals, whose own
    rounding failed the bound); all-zero x must give zeros, not NaN."""
    qw, s, z = _int4(40, 256, 64)
    qn, a, _ = _nf4(40, 256, False)
    cfg = HALF2[0]
    for scale in (5e3, 3e-4):
        x = (torch.randn(1, 256) * scale).clamp(-6e4, 6e4).half()
        rel = lambda out, ref: float((out.float() - ref.float()).norm() / ref.float().norm())  # noqa: E731
        assert rel(int4_gemv_triton(x, qw, s, z, 256, 64, config=cfg), int4_gemm_ref(x, qw, s, z, 256, 64)) < 3e-3
        assert rel(nf4_gemv_triton(x, qn, a, None, nf4_code(), config=cfg), nf4_gemm_ref(x, qn, a, None)) < 3e-3
    zero = torch.zeros(1, 256, dtype=torch.float16)
    assert torch.equal(int4_gemv_triton(zero, qw, s, z, 256, 64, config=cfg), torch.zeros(1, 40, dtype=torch.float16))
    assert torch.equal(nf4_gemv_triton(zero, qn, a, None, nf4_code(), config=cfg), torch.zeros(1, 40, dtype=torch.float16))


@pytest.mark.parametrize("n,k,group", [(40, 192, 64), (33, 100, 32), (64, 256, 128)])
def test_int4_dequantize_kernel(n, k, group):
    qw, s, z = _int4(n, k, group)
    for dtype in (torch.float32, torch.float16):
        out = int4_dequantize_triton(qw, s, z, k, group, torch.empty(n, k, dtype=dtype))
        assert torch.equal(out, int4_dequantize_ref(qw, s, z, k, group).to(dtype))


# ---- NF4 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("n,k", [(40, 128), (72, 320), (17, 64)])
@pytest.mark.parametrize("nested", [True, False])
def test_nf4_gemv_default_config(dtype, m, n, k, nested, seed):
    qw, a, nest = _nf4(n, k, nested)
    x, _ = _x(m, k, dtype, False)
    _close(nf4_gemv_triton(x, qw, a, nest, nf4_code()), nf4_gemm_ref(x, qw, a, nest), dtype, seed)


@pytest.mark.parametrize("cfg", PAIRS, ids=["one-block-tiles", "split"])
@pytest.mark.parametrize("m", [2, 16, 40])
@pytest.mark.parametrize("n,k", [(40, 320), (72, 512)])
@pytest.mark.parametrize("nested,silu", [(True, False), (False, True)])
def test_nf4_pairs_dot_path(cfg, m, n, k, nested, silu, seed):
    """quant_pairs' NF4 dots (emulated here): codes rounded to fp16, absmax per block on the fp32 sums."""
    qw, a, ns = _nf4(n, k, nested)
    x, xr = _x(m, k, torch.float16, silu)
    out = nf4_gemv_triton(x, qw, a, ns, nf4_code(), silu_mul=silu, config=cfg)
    _close(out, nf4_gemm_ref(xr, qw, a, ns), torch.float16, seed)


@pytest.mark.parametrize("lookup", ["gather", "select"])
@pytest.mark.parametrize("use_dot,m", [(False, 1), (True, 6)])
@pytest.mark.parametrize("split_k", [1, 2])
def test_nf4_gemv_silu_lookup_split(lookup, use_dot, m, split_k, seed):
    k = 448
    qw, a, nest = _nf4(48, k, True)
    x, xr = _x(m, k, torch.float32, True)
    cfg = QuantGemvConfig(block_n=16, block_k=128, split_k=split_k, use_dot=use_dot)
    out = nf4_gemv_triton(x, qw, a, nest, nf4_code(), silu_mul=True, lookup=lookup, config=cfg)
    _close(out, nf4_gemm_ref(xr, qw, a, nest), torch.float32, seed)


@pytest.mark.parametrize("cfg,dtype", M1_CASES, ids=M1_IDS)
@pytest.mark.parametrize("lookup", ["gather", "select"])
@pytest.mark.parametrize("nested,silu", [(True, False), (False, True)])
def test_nf4_persistent_m1_kernel(cfg, dtype, lookup, nested, silu, seed):
    k = 320  # not a multiple of either block_k: a masked last K tile
    qw, a, nest = _nf4(40, k, nested)
    x, xr = _x(1, k, dtype, silu)
    out = nf4_gemv_triton(x, qw, a, nest, nf4_code(), silu_mul=silu, lookup=lookup, config=cfg)
    _close(out, nf4_gemm_ref(xr, qw, a, nest), dtype, seed, cfg.half2)


def test_nf4_dequantize_kernel():
    for nested in (True, False):
        qw, a, nest = _nf4(40, 320, nested)
        out = nf4_dequantize_triton(qw, a, nest, nf4_code(), torch.empty(40, 320))
        torch.testing.assert_close(out, nf4_dequantize_ref(qw, a, nest), rtol=1e-6, atol=1e-7)


# ---- int8 / fp8 -----------------------------------------------------------------------------------

def _w8(n: int, k: int, fp8: bool):
    if fp8:
        q = (torch.randn(n, k) * 40).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        q[0, :4] = torch.tensor([0x01, 0x81, 0x07, 0x00], dtype=torch.uint8)  # subnormals and zero
        return q, torch.rand(n) / (40 * k**0.5)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    return int8_to_stored(q), torch.rand(n) / (60 * k**0.5)


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k", [(40, 128), (72, 200), (5, 48)])
@pytest.mark.parametrize("silu", [False, True])
def test_w8_gemv_default_config(fp8, dtype, m, n, k, silu, seed):
    q, s = _w8(n, k, fp8)
    x, xr = _x(m, k, dtype, silu)
    _close(w8_gemv_triton(x, q, s, fp8, silu_mul=silu), w8_gemm_ref(xr, q, s, fp8), dtype, seed)


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("use_dot,m", [(False, 1), (True, 2)])
def test_w8_gemv_split_k(fp8, use_dot, m, seed):
    q, s = _w8(72, 320, fp8)
    x, _ = _x(m, 320, torch.float32, False)
    cfg = QuantGemvConfig(block_n=16, block_k=64, split_k=3, use_dot=use_dot)
    _close(w8_gemv_triton(x, q, s, fp8, config=cfg), w8_gemm_ref(x, q, s, fp8), torch.float32, seed)
    assert torch.equal(w8_gemv_triton(x, q, s, fp8, config=cfg), w8_gemv_triton(x, q, s, fp8, config=cfg))


def test_fp8_bit_trick_is_exact_for_every_code():
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F].reshape(1, -1)  # all 254 finite e4m3 values
    out = w8_dequantize_triton(codes, torch.ones(1), True, torch.empty(1, codes.shape[1]))
    assert torch.equal(out, codes.view(torch.float8_e4m3fn).float())
    q, s = _w8(24, 80, False)
    assert torch.equal(w8_dequantize_triton(q, s, False, torch.empty(24, 80)), w8_dequantize_ref(q, s, False))


# ---- launchers, configs ---------------------------------------------------------------------------

def test_launchers_reject_bad_inputs():
    qw, s, z = _int4(16, 128, 128)
    with pytest.raises(ValueError, match="x must be"):
        int4_gemv_triton(torch.randn(2, 64), qw, s, z, 128, 128)
    with pytest.raises(ValueError, match="1 <= M <= 64"):
        int4_gemv_triton(torch.randn(65, 128), qw, s, z, 128, 128)
    with pytest.raises(ValueError, match="scales must be"):
        int4_gemv_triton(torch.randn(1, 128), qw, s.float(), z, 128, 128)
    with pytest.raises(ValueError, match="multiple of 128"):
        int4_gemv_triton(torch.randn(1, 128), qw, s, z, 128, 128, config=QuantGemvConfig(16, 64))
    with pytest.raises(ValueError, match="M == 1 only"):
        w8_gemv_triton(torch.randn(2, 64), *_w8(8, 64, False), False, config=QuantGemvConfig(16, 64))
    with pytest.raises(ValueError, match="qweight must be"):
        w8_gemv_triton(torch.randn(1, 64), torch.zeros(8, 64, dtype=torch.int8), torch.ones(8), False)
    with pytest.raises(ValueError, match="absmax must be"):
        nf4_gemv_triton(torch.randn(1, 128), torch.zeros(8, 16, dtype=torch.int32), torch.zeros(8, 3), None,
                        nf4_code())
    pipelined = QuantGemvConfig(4, 128, num_stages=2, programs_per_sm=1)
    with pytest.raises(ValueError, match="persistent kernels .* take num_stages = 1"):
        int4_gemv_triton(torch.randn(1, 128), qw, s, z, 128, 128, config=pipelined)
    with pytest.raises(ValueError, match="pairs is an option of the dot path"):
        int4_gemv_triton(torch.randn(1, 128), qw, s, z, 128, 128, config=QuantGemvConfig(4, 128, pairs=True))
    with pytest.raises(ValueError, match="early_launch is an option of the persistent M = 1 kernels"):
        int4_gemv_triton(torch.randn(1, 128), qw, s, z, 128, 128, config=QuantGemvConfig(4, 128, early_launch=True))
    k_loop_half2 = "half2 is an option of the persistent M = 1 kernels .* and of this format's M = 1 K loops"
    with pytest.raises(ValueError, match=k_loop_half2):  # the dot path has no fp16x2 form
        int4_gemv_triton(torch.randn(1, 128), qw, s, z, 128, 128, config=QuantGemvConfig(16, 128, half2=True, use_dot=True))
    with pytest.raises(ValueError, match=r"half2 is an option of the persistent M = 1 kernels \(programs_per_sm > 0, "
                                         r"use_dot=False\), got"):  # NF4's K loop has no fp16x2 form
        nf4_gemv_triton(torch.randn(1, 128), torch.zeros(8, 16, dtype=torch.int32), torch.ones(8, 2), None,
                        nf4_code(), config=QuantGemvConfig(8, 128, num_stages=1, half2=True))
    prefetch = "prefetch is an option of the persistent M = 1 kernels"  # the K loops have none
    with pytest.raises(ValueError, match=prefetch):
        int4_gemv_triton(torch.randn(1, 128), qw, s, z, 128, 128, config=QuantGemvConfig(8, 128, prefetch=True))
    with pytest.raises(ValueError, match=prefetch):
        w8_gemv_triton(torch.randn(1, 64), *_w8(8, 64, False), False, config=QuantGemvConfig(8, 64, prefetch=True))
    for four_bit_only in (dict(programs_per_sm=2, num_stages=1), dict(half2=True), dict(use_dot=True, pairs=True),
                          dict(early_launch=True)):
        with pytest.raises(ValueError, match="8-bit formats have no persistent, fp16x2 or pair kernels"):
            w8_gemv_triton(torch.randn(2, 64), *_w8(8, 64, False), False,
                           config=QuantGemvConfig(16, 64, **{"use_dot": True, **four_bit_only}))


def test_config_table_and_heuristic(monkeypatch, tmp_path):
    assert not heuristic_config("int4", 4096, 4096, 1, 128).use_dot
    assert heuristic_config("int4", 4096, 4096, 1, 128).programs_per_sm  # one K tile: persistent
    assert heuristic_config("int4", 4096, 4096, 1, 128).half2  # int4's persistent loop in fp16x2, NF4's not
    assert not heuristic_config("nf4", 4096, 4096, 1, 64).half2
    assert not heuristic_config("nf4", 4096, 14336, 1, 64).programs_per_sm  # longer K: the K loop
    dot = heuristic_config("nf4", 4096, 4096, 4, 64)
    assert dot.use_dot and dot.block_k % 64 == 0
    small = heuristic_config("int4", 40, 64, 1, 128, num_sms=4)
    assert small.block_k == 128 and small.block_n <= 64
    monkeypatch.setattr(qcfg, "TUNED_CONFIGS", {})
    tuned = QuantGemvConfig(block_n=64, block_k=256, split_k=2, num_warps=8, num_stages=3, use_dot=True)
    path = tmp_path / "q.json"
    entry = {"format": "int4", "n": 4096, "k": 4096, "m_bucket": 4, "config": tuned.as_dict()}
    path.write_text(json.dumps({"configs": [entry]}))
    assert load_tuned_configs(path) == 1
    assert get_config("int4", 4096, 4096, 3, 128, "cpu") == tuned
    assert get_config("nf4", 4096, 4096, 3, 64, "cpu") != tuned
    with pytest.raises(ValueError, match="M == 1 only"):
        qcfg.set_tuned_config("int4", 1, 1, 2, QuantGemvConfig(16, 128))


def test_swept_configs_load_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(qcfg, "TUNED_CONFIGS", {})
    monkeypatch.setattr(qcfg, "_ENV_LOADED", False)
    swept = QuantGemvConfig(block_n=4, block_k=4096, num_warps=2, num_stages=1, programs_per_sm=8)
    path = tmp_path / "swept.json"
    old_entry = {"format": "nf4", "n": 64, "k": 4096, "m_bucket": 1,  # written before programs_per_sm existed
                 "config": {f: v for f, v in swept.as_dict().items() if f not in ("programs_per_sm", "prefetch")}}
    entry = {"format": "int4", "n": 6144, "k": 4096, "m_bucket": 1, "config": swept.as_dict()}
    path.write_text(json.dumps({"configs": [entry, old_entry]}))
    monkeypatch.setenv("FLOORLINE_QUANT_CONFIGS", str(path))
    assert get_config("int4", 6144, 4096, 1, 128, "cpu") == swept
    assert get_config("nf4", 64, 4096, 1, 64, "cpu").programs_per_sm == 0


@pytest.mark.parametrize("content", [None, "not json", '{"configs": [{"format": "int4"}]}',
                                     '{"configs": [{"format": "int9", "n": 1, "k": 1, "m_bucket": 1, "config": {}}]}'])
def test_a_bad_config_file_names_the_variable(monkeypatch, tmp_path, content):
    from floorline.errors import FloorlineError

    path = tmp_path / "swept.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(qcfg, "TUNED_CONFIGS", dict(qcfg.TUNED_CONFIGS))
    monkeypatch.setattr(qcfg, "_ENV_LOADED", False)
    monkeypatch.setenv("FLOORLINE_QUANT_CONFIGS", str(path))
    with pytest.raises(FloorlineError, match="FLOORLINE_QUANT_CONFIGS=.*bench.quant --sweep --out"):
        get_config("int4", 6144, 4096, 1, 128, "cpu")
