"""GPU checks in bf16 (skipped without CUDA): kernels at Llama-3.1-8B shapes, the prefill path, FP8 W8A8,
and the engine with CUDA graphs in every format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from floorline.kernels.activation import silu_and_mul
from floorline.bench.quant import _gemv_with_config
from floorline.kernels.quant_configs import QuantGemvConfig
from floorline.kernels.quant_int4 import int4_gemv_triton
from floorline.kernels.quant_w8 import w8_gemm_ref
from floorline.layers.linear import Linear
from floorline.layers.norm import NormedInput
from floorline.quant.fp8 import Fp8Method, w8a8_ref, w8a8_supported
from floorline.quant.int4 import Int4Method
from floorline.quant.int8 import Int8Method
from floorline.quant.nf4 import Nf4Method

pytestmark = pytest.mark.gpu

SHAPES = [(4096, 6144), (14336, 4096), (4096, 1024), (576, 1536)]  # (K, N); last: SmolLM2 (padded int4)
METHODS = {"int8": Int8Method, "fp8": Fp8Method, "int4": Int4Method, "nf4": Nf4Method}


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert bool(torch.isfinite(out).all())
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def _layer(fmt: str, k: int, n: int) -> tuple[Linear, torch.Tensor]:
    method = METHODS[fmt]()
    layer = Linear(k, [n], dtype=torch.bfloat16, device="cuda", quant_method=method)
    layer.load(0, "weight", (torch.randn(n, k, device="cuda") / k**0.5).to(torch.bfloat16))
    layer.finish_loading()
    return layer, method.dequantize_ref(layer)


@pytest.mark.parametrize("fmt", list(METHODS))
@pytest.mark.parametrize("k,n", SHAPES)
def test_gpu_gemv_matches_reference_in_bf16(fmt, k, n):
    if fmt == "nf4" and k % 64:
        pytest.skip("NF4 needs K % 64 == 0")
    layer, w = _layer(fmt, k, n)
    for m in (1, 2, 5, 16, 40):  # 40: a decode batch past 16 (the dot paths' 64-row x tiles)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        out = layer.quant_method.gemv(layer, x, False)
        assert out.dtype == torch.bfloat16 and _rel(out, F.linear(x.float(), w)) < 1e-2
    x2 = torch.randn(4, 2 * k, device="cuda", dtype=torch.bfloat16)  # fused SiLU-and-mul operand
    assert _rel(layer.quant_method.gemv(layer, x2, True), F.linear(silu_and_mul(x2).float(), w)) < 1e-2


@pytest.mark.parametrize("fmt", list(METHODS))
@pytest.mark.parametrize("k,n", [(4096, 4096), (14336, 4096)])
def test_gpu_fused_residual_then_norm(fmt, k, n):
    """o_proj / down with the residual add (and the next norm's weight), then qkv with the norm, on the
    default configs, against the unfused GEMV, add and norm kernels."""
    from floorline.kernels.rms_norm import rms_norm

    layer, _ = _layer(fmt, k, n)
    method = layer.quant_method
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn(1, n, device="cuda", dtype=torch.bfloat16)
    nw = (1 + 0.3 * torch.randn(n, device="cuda")).to(torch.bfloat16)
    s, ss, scaled = method.apply_fused(layer, x, residual=residual, next_norm_weight=nw)
    assert torch.equal(s, method.gemv(layer, x, False) + residual)  # the unfused rounding points
    assert torch.equal(scaled, (s.float() * nw.float()).to(torch.bfloat16))
    torch.testing.assert_close(ss.sum(1), s.float().pow(2).sum(1), rtol=1e-5, atol=1e-3)
    qkv, _ = _layer(fmt, n, 6144)
    y_ref = qkv.quant_method.gemv(qkv, rms_norm(s, nw, 1e-5), False)
    y = qkv.quant_method.apply_fused(qkv, s, norm=NormedInput(s, ss, nw, 1e-5, scaled))
    assert _rel(y, y_ref) < 5e-3  # the fused operand skips one bf16 rounding of the normed x
    assert qkv.quant_method.apply_fused(qkv, s, norm=NormedInput(s, ss, nw, 1e-5)) is None  # the norm kernel's job


PERSISTENT = [QuantGemvConfig(16, 4096, num_warps=4, num_stages=1, programs_per_sm=4),
              QuantGemvConfig(8, 2048, num_warps=2, num_stages=1, programs_per_sm=8, prefetch=True),
              QuantGemvConfig(8, 4096, num_warps=4, num_stages=1, programs_per_sm=6),
              QuantGemvConfig(4, 4096, num_warps=2, num_stages=1, programs_per_sm=8, half2=True),
              QuantGemvConfig(4, 16384, num_warps=8, num_stages=1, programs_per_sm=2, prefetch=True, half2=True)]


@pytest.mark.parametrize("fmt", ["int4", "nf4"])
@pytest.mark.parametrize("k,n", [(4096, 6144), (14336, 4096), (576, 1536)])
@pytest.mark.parametrize("cfg", PERSISTENT, ids=["x4", "x8-prefetch-split", "x6-w4", "x8-half2",
                                                 "x2-half2-whole-k"])
def test_gpu_persistent_m1_kernels_match_reference(fmt, k, n, cfg):
    if fmt == "nf4" and k % 64:
        pytest.skip("NF4 needs K % 64 == 0")
    layer, w = _layer(fmt, k, n)
    for silu in (False, True):
        x = torch.randn(1, 2 * k if silu else k, device="cuda", dtype=torch.bfloat16)
        ref = F.linear((silu_and_mul(x) if silu else x).float(), w)
        out = _gemv_with_config(fmt, layer, x, cfg, silu)
        assert _rel(out, ref) < 1e-2
        if fmt == "int4":  # the same sums from the [groups, N] scales and zeros, bit for bit
            same = int4_gemv_triton(x, layer.qweight, layer.scales, layer.zeros, k, layer.quant_method.group,
                                    silu_mul=silu, config=cfg)
            assert torch.equal(out, same)


PIPELINED = [QuantGemvConfig(8, 2048, split_k=2, num_warps=2, num_stages=2),
             QuantGemvConfig(8, 1024, split_k=1, num_warps=4, num_stages=3)]


@pytest.mark.parametrize("k,n", [(4096, 6144), (14336, 4096), (576, 1536)])
@pytest.mark.parametrize("cfg", PIPELINED, ids=["st2-split", "st3"])
def test_gpu_int4_pipelined_k_loop_matches_reference(k, n, cfg):
    """The int4 K loop pipelined through shared memory (Triton's cp.async stages), in bf16."""
    layer, w = _layer("int4", k, n)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    out = _gemv_with_config("int4", layer, x, cfg)
    assert _rel(out, F.linear(x.float(), w)) < 1e-2


K_LOOP_HALF2 = [QuantGemvConfig(8, 2048, split_k=2, num_warps=2, num_stages=1, half2=True),
                QuantGemvConfig(16, 1024, split_k=4, num_warps=4, num_stages=1, half2=True),
                QuantGemvConfig(8, 1024, split_k=4, num_warps=1, num_stages=1, half2=True),
                QuantGemvConfig(8, 1024, split_k=1, num_warps=2, num_stages=3, half2=True),
                QuantGemvConfig(16, 512, split_k=2, num_warps=4, num_stages=4, half2=True)]


@pytest.mark.parametrize("k,n", [(4096, 6144), (14336, 4096), (576, 1536)])
@pytest.mark.parametrize("cfg", K_LOOP_HALF2, ids=["split2", "w4-split4", "one-warp", "stream-st3", "stream-st4-split"])
@pytest.mark.parametrize("silu", [False, True])
def test_gpu_int4_k_loop_half2_matches_reference(k, n, cfg, silu):
    """The int4 K loops in fp16x2 (inline PTX; unpipelined, and pipelined with num_stages > 1) on
    `quant_x_pairs`' x, in bf16; with `silu` the pairs kernel applies the SiLU-and-mul of gate | up, as for
    the down projection."""
    layer, w = _layer("int4", k, n)
    x = torch.randn(1, 2 * k if silu else k, device="cuda", dtype=torch.bfloat16)
    ref = F.linear((silu_and_mul(x) if silu else x).float(), w)
    assert _rel(_gemv_with_config("int4", layer, x, cfg, silu_mul=silu), ref) < 1e-2


@pytest.mark.parametrize("k,group", [(14336, 128), (576, 64)])
@pytest.mark.parametrize("silu", [False, True])
def test_gpu_int4_x_pairs_match_reference(k, group, silu):
    """The pairs kernel in bf16 (which the interpreter cannot load) against its reference: bit for bit on plain
    x; with the SiLU, Triton's sigmoid may round a bf16 activation one step off PyTorch's, so values compare
    within that step."""
    from floorline.kernels.quant_x_pairs import int4_x_pairs, int4_x_pairs_ref

    x = torch.randn(1, 2 * k if silu else k, device="cuda", dtype=torch.bfloat16)
    pairs, meta = int4_x_pairs(x, k, group, silu)
    want_pairs, want_meta = int4_x_pairs_ref(x, k, group, silu)
    assert torch.equal(meta[0], want_meta[0])
    if silu:
        halves = lambda p: p.view(torch.float16).float()  # noqa: E731
        torch.testing.assert_close(halves(pairs), halves(want_pairs), rtol=1e-2, atol=1e-2)
    else:
        assert torch.equal(pairs, want_pairs)
    torch.testing.assert_close(meta[1], want_meta[1], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fmt", ["int4", "nf4"])
def test_gpu_early_launch_successor_reads_the_finished_output(fmt):
    """A persistent GEMV with `early_launch` lets the next kernel start while it runs: that kernel (here a
    second GEMV taking the first one's output as x) must still see every row of it."""
    first, w1 = _layer(fmt, 4096, 4096)
    second, w2 = _layer(fmt, 4096, 4096)
    early = QuantGemvConfig(4, 4096, num_warps=2, num_stages=1, programs_per_sm=8, early_launch=True)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):  # back to back: each launch overlaps the previous one's tail
        y = _gemv_with_config(fmt, first, x, early)
        out = second.quant_method.gemv(second, y, False)
    ref = F.linear(F.linear(x.float(), w1).to(torch.bfloat16).float(), w2)
    assert _rel(out, ref) < 2e-2


PAIRS = [QuantGemvConfig(128, 128, num_warps=4, num_stages=2, use_dot=True, pairs=True),
         QuantGemvConfig(64, 256, split_k=2, num_warps=4, num_stages=3, use_dot=True, pairs=True),
         QuantGemvConfig(256, 128, num_warps=8, num_stages=2, use_dot=True, pairs=True),
         QuantGemvConfig(32, 128, split_k=3, num_warps=4, num_stages=2, use_dot=True, pairs=True)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("cfg", PAIRS, ids=["n128", "n64-split", "n256-w8", "n32-split3"])
@pytest.mark.parametrize("fmt", ["int4", "nf4"])
def test_gpu_pair_dots_match_reference(fmt, dtype, k, n, cfg):
    """The inline-asm operands (which the interpreter emulates) in both 16-bit dtypes, wgmma and mma tiles."""
    if fmt == "nf4" and k % 64:
        pytest.skip("NF4 needs K % 64 == 0")
    layer, w = _layer(fmt, k, n)
    for m in (2, 5, 16, 33, 64):  # past 16: 64-row x tiles
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        assert _rel(_gemv_with_config(fmt, layer, x, cfg), F.linear(x.float(), w)) < 1e-2


@pytest.mark.parametrize("fmt", list(METHODS))
def test_gpu_decode_batches_past_16_take_the_dot_paths(fmt):
    """17..64 rows through the layer: the default configs of the dot paths (fused SiLU operand too)."""
    layer, w = _layer(fmt, 4096, 6144)
    for m in (17, 32, 64):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        assert _rel(layer(x), F.linear(x.float(), w)) < 1e-2
    x2 = torch.randn(24, 8192, device="cuda", dtype=torch.bfloat16)
    assert _rel(layer.forward_silu_mul(x2), F.linear(silu_and_mul(x2).float(), w)) < 1e-2


@pytest.mark.parametrize("fmt", list(METHODS))
def test_gpu_lm_head_shape_takes_the_default_configs(fmt):
    """`--lm-head-quantization` at Llama-3's vocabulary: the table's LM-head entries (one row; NF4 has none)
    and the heuristic configs (4 rows)."""
    layer, w = _layer(fmt, 4096, 128256)
    for m in (1, 4):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        assert _rel(layer.quant_method.gemv(layer, x, False), F.linear(x.float(), w)) < 1e-2


@pytest.mark.parametrize("fmt", list(METHODS))
def test_gpu_prefill_dequantizes_then_uses_tensor_cores(fmt):
    layer, w = _layer(fmt, 4096, 1024)
    x = torch.randn(100, 4096, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x.float(), w)
    out = layer(x)  # 100 rows: the dequantization buffer and cuBLAS (FP8 on Hopper: W8A8)
    if fmt == "fp8" and layer.quant_method.w8a8:
        ref = w8a8_ref(x, layer.qweight, layer.scale)
    assert _rel(out, ref) < 1e-2
    buf = layer.quant_method.dequantize(layer, torch.bfloat16, x.device)
    assert _rel(buf, w) < 4e-3  # bf16 rounding of the dequantized weight


def test_gpu_nf4_lookups_agree():
    layer, w = _layer("nf4", 4096, 4096)
    for m in (1, 4):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        outs = []
        for lookup in ("shfl", "gather", "select"):
            layer.quant_method.lookup = lookup
            outs.append(layer.quant_method.gemv(layer, x, False))
        # the same exact codes: only the summation order differs from the fp32 reference
        for out in outs:
            assert _rel(out, F.linear(x.float(), w)) < 1e-2 and _rel(out, outs[0]) < 1e-2
    layer.quant_method.lookup = None
    buf = layer.quant_method.dequantize(layer, torch.float32, x.device)
    # the shuffle reads the exact codes; the nested absmax may round once less (a fused multiply-add)
    torch.testing.assert_close(buf, w, rtol=1e-6, atol=1e-6 * float(w.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available() or not w8a8_supported(torch.device("cuda")),
                    reason="FP8 W8A8 needs compute capability >= 9.0")
def test_gpu_fp8_w8a8_scaled_mm_matches_reference():
    """Past DOT_MAX_M rows (prefill) W8A8 runs `_scaled_mm` on per-token fp8 activations; up to it (decode) the
    weight-only GEMV reads the same fp8 weights, with the activations unrounded."""
    layer = Linear(4096, [6144], dtype=torch.bfloat16, device="cuda", quant_method=Fp8Method(w8a8=True))
    layer.load(0, "weight", (torch.randn(6144, 4096, device="cuda") / 64).to(torch.bfloat16))
    layer.finish_loading()
    for m in (65, 300):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        assert _rel(layer(x), w8a8_ref(x, layer.qweight, layer.scale)) < 1e-2
    for m in (17, 64):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        assert _rel(layer(x), w8_gemm_ref(x, layer.qweight, layer.scale, fp8=True)) < 1e-2


@pytest.mark.parametrize("fmt", list(METHODS))
@pytest.mark.parametrize("head", [False, True], ids=["", "quantized-lm-head"])
def test_gpu_engine_graphs_equal_eager_in_every_format(quant_tiny_dir, fmt, head):
    from floorline.api import LLM
    from floorline.sampling_params import SamplingParams

    prompts = [[5, 17, 3, 99, 140, 7], [61, 8, 200, 1], list(range(3, 40))]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    kw = dict(quantization=fmt, lm_head_quantization=fmt if head else None, num_kv_blocks=64, max_num_seqs=8)
    eager = LLM(quant_tiny_dir, enforce_eager=True, **kw)
    graphs = LLM(quant_tiny_dir, **kw)
    want = [o.outputs[0].token_ids for o in eager.generate(prompts, params)]
    assert [o.outputs[0].token_ids for o in graphs.generate(prompts, params)] == want



@pytest.mark.parametrize("fmt", list(METHODS))
def test_gpu_engine_decode_steps_past_16_rows_equal_eager(quant_tiny_dir, fmt):
    """20 sequences decoding together: 17..64-row steps on the dot paths, captured in a graph bucket (24), give
    the eager engine's tokens."""
    from floorline.api import LLM
    from floorline.sampling_params import SamplingParams

    prompts = [[(7 * i + 3 * j) % 200 + 3 for j in range(3 + i % 6)] for i in range(20)]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    kw = dict(quantization=fmt, num_kv_blocks=128, max_num_seqs=32)
    want = [o.outputs[0].token_ids for o in LLM(quant_tiny_dir, enforce_eager=True, **kw).generate(prompts, params)]
    assert [o.outputs[0].token_ids for o in LLM(quant_tiny_dir, **kw).generate(prompts, params)] == want
