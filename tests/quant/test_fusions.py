"""The GEMVs' RMSNorm neighbours in the interpreter: a producer's residual epilogue (with the next norm's
weight) and its consumer's prescaled operand, in the 8-bit and 4-bit kernels, against the references,
and the refusals where a kernel cannot run them. (bf16's are in tests/kernels/test_skinny_gemm.py.)"""

from __future__ import annotations

import pytest
import torch

import floorline.kernels.quant_common as qc
from floorline.kernels.quant_configs import QuantGemvConfig
from floorline.kernels.quant_int4 import int4_gemm_ref, int4_gemv_triton
from floorline.kernels.quant_nf4 import nf4_code, nf4_gemm_ref, nf4_gemv_triton
from floorline.kernels.quant_w8 import w8_fusion_wanted, w8_gemm_ref, w8_gemv_triton
from tests.quant.test_kernels import HALF2, K_LOOP_HALF2, PERSISTENT, _close, _int4, _nf4, _w8, _x


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (inputs differ between runs); reported when a comparison fails."""
    return torch.seed()


# ---- int8 / fp8 -----------------------------------------------------------------------------------

W8_FUSED_CONFIGS = [  # M = 1 FMA paths: pipelined, unpipelined, split-K, a masked K tail (K = 200 in 64s)
    QuantGemvConfig(block_n=16, block_k=64, num_stages=3),
    QuantGemvConfig(block_n=8, block_k=128, num_stages=1),
    QuantGemvConfig(block_n=16, block_k=64, split_k=2),
]


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("cfg", W8_FUSED_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_w8_residual_epilogue_and_norm_prologue_match_unfused(fp8, cfg, dtype, seed):
    """o_proj / down add the residual and write s^2 partials; qkv / gate_up normalize from them."""
    from floorline.kernels.rms_norm import rms_norm_ref

    q, s = _w8(72, 200, fp8)
    x, _ = _x(1, 200, dtype, False)
    residual = torch.randn(1, 72).to(dtype)
    total, ss = w8_gemv_triton(x, q, s, fp8, config=cfg, residual=residual)
    want = w8_gemm_ref(x, q, s, fp8) + residual  # y rounded, then the sum: the unfused model's roundings
    assert ss.shape == (1, -(-72 // cfg.block_n)) and ss.dtype == torch.float32
    _close(total, want, dtype, seed)
    _close(ss.sum(1, keepdim=True), total.float().pow(2).sum(1, keepdim=True), torch.float32, seed)

    # the producer also applies the next norm's weight; its consumer then only scales by 1/rms
    q2, s2 = _w8(40, 72, fp8)
    nw = (1 + 0.3 * torch.randn(72)).to(dtype)
    total2, ss2, scaled = w8_gemv_triton(x, q, s, fp8, config=cfg, residual=residual, out_norm_weight=nw)
    assert torch.equal(total2, total) and torch.equal(ss2, ss)
    assert torch.equal(scaled, (total.float() * nw.float()).to(dtype))
    y = w8_gemv_triton(scaled, q2, s2, fp8, config=cfg, norm_ss=ss, eps=1e-5)
    _close(y, w8_gemm_ref(rms_norm_ref(total, nw, 1e-5), q2, s2, fp8), dtype, seed)


def test_w8_fusions_are_refused_where_they_do_not_run():
    q, s = _w8(8, 64, False)
    with pytest.raises(ValueError, match="one row's FMA path, got 2 rows on the dot path"):
        w8_gemv_triton(torch.randn(2, 64), q, s, False, residual=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="residual must be contiguous"):
        w8_gemv_triton(torch.randn(1, 64), q, s, False, residual=torch.zeros(1, 9))
    with pytest.raises(ValueError, match=r"norm_ss must be contiguous fp32 \[1, parts\]"):
        w8_gemv_triton(torch.randn(1, 64), q, s, False, norm_ss=torch.ones(1, 4).half())
    with pytest.raises(ValueError, match="out_norm_weight scales the residual sum: it needs residual"):
        w8_gemv_triton(torch.randn(1, 64), q, s, False, out_norm_weight=torch.ones(8))
    with pytest.raises(ValueError, match=r"out_norm_weight must be a contiguous \[8\] tensor"):
        w8_gemv_triton(torch.randn(1, 64), q, s, False, residual=torch.zeros(1, 8), out_norm_weight=torch.ones(9))
    assert w8_fusion_wanted(torch.randn(1, 64), q, False, residual=torch.zeros(1, 8))
    assert not w8_fusion_wanted(torch.randn(2, 64), q, False, residual=torch.zeros(2, 8))
    assert not w8_fusion_wanted(torch.randn(1, 64), q, False, residual=torch.zeros(1, 8).half())


# ---- int4 / NF4 -----------------------------------------------------------------------------------

# the RMSNorm neighbours: a producer (o_proj: persistent, whole K; down: the K loop, SiLU operand) adds the
# residual and applies the next norm's weight; its consumer (qkv, gate_up: persistent, split or fp16x2) then
# only scales by 1/rms
WHOLE_K = QuantGemvConfig(block_n=4, block_k=256, num_warps=2, num_stages=1, programs_per_sm=1)
K_LOOP = QuantGemvConfig(block_n=8, block_k=128, split_k=2, num_stages=1)
FUSED_4BIT = [("int4", WHOLE_K, False, PERSISTENT[0], torch.float32),
              ("int4", K_LOOP, True, PERSISTENT[1], torch.float32),
              ("int4", K_LOOP_HALF2[0], True, HALF2[1], torch.float16),
              ("nf4", WHOLE_K, False, PERSISTENT[0], torch.float32),
              ("nf4", K_LOOP, True, HALF2[1], torch.float16)]


def _four_bit(fmt: str, n: int, k: int):
    """(gemv(x, **launcher keywords), reference(x)) of a random 4-bit weight [n, k]."""
    if fmt == "int4":
        qw, s, z = _int4(n, k, 64)
        return (lambda x, **kw: int4_gemv_triton(x, qw, s, z, k, 64, **kw)), lambda x: int4_gemm_ref(x, qw, s, z, k, 64)
    qw, a, nest = _nf4(n, k, False)
    return (lambda x, **kw: nf4_gemv_triton(x, qw, a, nest, nf4_code(), **kw)), lambda x: nf4_gemm_ref(x, qw, a, nest)


@pytest.mark.parametrize("fmt,producer,silu,consumer,dtype", FUSED_4BIT,
                         ids=["int4-persistent", "int4-k-loop", "int4-half2", "nf4-persistent", "nf4-k-loop"])
def test_4bit_residual_epilogue_and_prescaled_operand_match_unfused(fmt, producer, silu, consumer, dtype, seed):
    from floorline.kernels.rms_norm import rms_norm_ref

    gemv, ref = _four_bit(fmt, 256, 256)
    x, xr = _x(1, 256, dtype, silu)
    residual = torch.randn(1, 256).to(dtype)
    nw = (1 + 0.3 * torch.randn(256)).to(dtype)
    total, ss, scaled = gemv(x, silu_mul=silu, config=producer, residual=residual, out_norm_weight=nw)
    _close(total, ref(xr) + residual, dtype, seed, producer.half2)
    assert ss.shape == (1, 256 // producer.block_n)
    _close(ss.sum(1, keepdim=True), total.float().pow(2).sum(1, keepdim=True), torch.float32, seed)
    assert torch.equal(scaled, (total.float() * nw.float()).to(dtype))
    gemv2, ref2 = _four_bit(fmt, 40, 256)
    y = gemv2(scaled, config=consumer, norm_ss=ss, eps=1e-5)
    _close(y, ref2(rms_norm_ref(total, nw, 1e-5)), dtype, seed, consumer.half2)


def test_4bit_fusions_are_refused_where_they_do_not_run():
    qw, s, z = _int4(8, 256, 64)
    x, ss, r = torch.randn(1, 256), torch.ones(1, 4), torch.zeros(1, 8)
    with pytest.raises(ValueError, match="a prescaled operand \\(norm_ss\\) needs a persistent config"):
        int4_gemv_triton(x, qw, s, z, 256, 64, norm_ss=ss, config=QuantGemvConfig(8, 128, num_stages=1))
    with pytest.raises(ValueError, match="the residual add needs a persistent config without a K split"):
        int4_gemv_triton(x, qw, s, z, 256, 64, residual=r, config=PERSISTENT[0])
    with pytest.raises(ValueError, match="one row's M = 1 kernels, got 2 rows on the dot path"):
        int4_gemv_triton(torch.randn(2, 256), qw, s, z, 256, 64, residual=torch.zeros(2, 8))
    qn, a, _ = _nf4(8, 256, False)
    with pytest.raises(ValueError, match="quant_nf4: residual must be contiguous"):
        nf4_gemv_triton(x, qn, a, None, nf4_code(), residual=torch.zeros(1, 9))
    assert qc.m1_fusion_wanted("int4", x, qw, 256, 64, residual=r)
    assert qc.m1_fusion_wanted("nf4", x, qn, 256, 64, residual=r)
    assert not qc.m1_fusion_wanted("int4", torch.randn(2, 256), qw, 256, 64, residual=torch.zeros(2, 8))
