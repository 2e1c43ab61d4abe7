"""Each QuantMethod's stored weight against the float weight, within its format's error; packing round trips."""

from __future__ import annotations

import pytest
import torch

from floorline.kernels.quant_packing import bytes_to_codes, codes_to_bytes, pack_int4, pack_nf4, unpack_int4, unpack_nf4
from floorline.layers.linear import Linear
from floorline.quant.fp8 import Fp8Method, quantize_fp8
from floorline.quant.int4 import Int4Method, quantize_int4
from floorline.quant.int8 import Int8Method
from floorline.quant.nf4 import Nf4Method, double_quantize, dynamic_map, quantize_nf4
from tests.quant.conftest import NF4_TABLE as NF4


def _layer(method, in_features: int, sizes: list[int], shards: list[torch.Tensor]) -> Linear:
    layer = Linear(in_features, sizes, quant_method=method, prefix="test")
    for i in reversed(range(len(shards))):  # out of order on purpose: shards arrive in any order
        layer.load(i, "weight", shards[i])
    layer.finish_loading()
    return layer


def _shards(sizes: list[int], k: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g) * (1 + i) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("k", [64, 192])
def test_int8_error_is_at_most_half_a_step(k):
    sizes = [48, 16, 16]
    shards = _shards(sizes, k, 0)
    layer = _layer(Int8Method(), k, sizes, shards)
    w = torch.cat(shards)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    err = (layer.quant_method.dequantize_ref(layer) - w).abs()
    assert bool((err <= step / 2 + 1e-6).all())
    q = layer.quant_method.export_shard(layer, 0)["qweight"]
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127


def test_fp8_error_is_within_e4m3_rounding():
    sizes = [32, 32]
    shards = _shards(sizes, 96, 1)
    layer = _layer(Fp8Method(), 96, sizes, shards)
    w = torch.cat(shards)
    deq = layer.quant_method.dequantize_ref(layer)
    # e4m3 keeps 3 mantissa bits: relative rounding <= 2**-4 for normals; subnormals: abs <= 2**-10 * scale
    scale = w.abs().amax(dim=1, keepdim=True) / 448
    assert bool(((deq - w).abs() <= torch.maximum(w.abs() * 2**-4, scale * 2**-10) + 1e-7).all())
    q, _ = quantize_fp8(w)
    assert q.dtype == torch.uint8 and not bool(((q & 0x7F) == 0x7F).any())


@pytest.mark.parametrize("k,group", [(128, 128), (192, 128), (64, 128), (256, 64)])
def test_int4_rtn_error_and_codes(k, group):
    sizes = [40, 24]
    shards = _shards(sizes, k, 2)
    layer = _layer(Int4Method(group_size=group), k, sizes, shards)
    w = torch.cat(shards)
    deq = layer.quant_method.dequantize_ref(layer)
    assert deq.shape == w.shape
    kp = -(-k // group) * group
    padded = torch.zeros(w.shape[0], kp)
    padded[:, :k] = w
    g = padded.reshape(w.shape[0], -1, group)
    step = ((g.amax(2) - g.amin(2)) / 15).repeat_interleave(group, 1)[:, :k]
    assert bool(((deq - w).abs() <= step * 1.01 + 1e-6).all())  # clipping at the range ends: <= one step
    assert float(((deq - w).abs() / step).mean()) < 0.3  # rounding: ~1/4 step on average
    assert layer.qweight.shape == (64, kp // 8) and layer.scales.shape == (kp // group, 64)


def test_nf4_codes_are_the_nearest_code_and_error_is_bounded():
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(4))
    codes, absmax = quantize_nf4(w)
    blocks = w.reshape(8, 2, 64)
    want_absmax = blocks.abs().amax(dim=2)
    torch.testing.assert_close(absmax, want_absmax, rtol=0, atol=0)
    normed = (blocks / want_absmax[:, :, None]).reshape(8, 128)
    nearest = (normed[:, :, None] - NF4).abs().argmin(dim=2)  # brute force
    assert torch.equal(codes.long(), nearest)
    # the largest gap between NF4 codes is 0.3038 (between -1 and -0.696): error <= half of it
    deq = NF4[codes.long()] * want_absmax.repeat_interleave(64, 1)
    assert float(((deq - w).abs() / want_absmax.repeat_interleave(64, 1)).max()) <= 0.152


def test_dynamic_map_and_double_quantization():
    m = dynamic_map()
    assert m.shape == (256,) and bool((m[1:] >= m[:-1]).all())
    assert float(m[0]) == pytest.approx(-0.9922, abs=1e-3) and float(m[-1]) == 1.0 and 0.0 in m.tolist()
    absmax = torch.rand(700, generator=torch.Generator().manual_seed(5)) * 3
    codes, nested, offset, qmap = double_quantize(absmax)
    assert nested.shape == (3,) and codes.shape == (700,)
    assert offset == pytest.approx(float(absmax.mean()), rel=1e-6)
    decoded = qmap[codes.long()] * nested[torch.arange(700) // 256] + offset
    # 8-bit dynamic map near 1.0 has steps of ~1/64 of the group's absmax
    assert float((decoded - absmax).abs().max()) < float(nested.max()) / 50


def test_nf4_method_matches_its_codec_per_shard():
    sizes = [64, 32, 32]  # q | k | v
    shards = _shards(sizes, 128, 6)
    layer = _layer(Nf4Method(), 128, sizes, shards)
    deq = layer.quant_method.dequantize_ref(layer)
    start = 0
    for shard in shards:  # each shard quantized on its own, as bitsandbytes quantizes each tensor
        codes, absmax = quantize_nf4(shard)
        acodes, nested, offset, qmap = double_quantize(absmax)
        b = torch.arange(acodes.numel())
        a = (qmap[acodes.long()] * nested[b // 256] + offset).reshape(absmax.shape)
        want = NF4[codes.long()] * a.repeat_interleave(64, 1)
        torch.testing.assert_close(deq[start:start + shard.shape[0]], want, rtol=1e-6, atol=1e-7)
        start += shard.shape[0]
    rel = (deq - torch.cat(shards)).norm() / torch.cat(shards).norm()
    assert 0.05 < float(rel) < 0.12  # NF4 on Gaussian weights: ~0.09


def test_nf4_without_double_quantization():
    shards = _shards([32], 64, 7)
    layer = _layer(Nf4Method(nested=False), 64, [32], shards)
    codes, absmax = quantize_nf4(shards[0])
    torch.testing.assert_close(layer.quant_method.dequantize_ref(layer),
                               NF4[codes.long()] * absmax.repeat_interleave(64, 1))


def test_packing_round_trips():
    codes = torch.randint(0, 16, (5, 256), dtype=torch.uint8)
    for group in (32, 64, 128):
        packed = pack_int4(codes, group)
        assert packed.shape == (5, 32) and packed.dtype == torch.int32
        assert torch.equal(unpack_int4(packed, group), codes)
    # slot-major: word j of a group holds columns j, j + G/8, ..., j + 7 G/8; slot 0 at bits 19..22
    one = torch.zeros(1, 128, dtype=torch.uint8)
    one[0, 16 * 0 + 3] = 5
    assert int(pack_int4(one, 128)[0, 3]) == 5 << 19
    one[0, 3], one[0, 16 * 7 + 3] = 0, 0b1011  # slot 7 wraps: bit 0 at bit 31, bits 1..3 at bits 0..2
    assert int(pack_int4(one, 128)[0, 3]) & 0xFFFFFFFF == (1 << 31) | 0b101
    assert torch.equal(unpack_nf4(pack_nf4(codes)), codes)
    assert torch.equal(bytes_to_codes(codes_to_bytes(codes)), codes)
    assert int(codes_to_bytes(codes)[0, 0]) == int(codes[0, 0]) * 16 + int(codes[0, 1])  # even column high
    w = torch.randn(4, 200)
    c, z, s = quantize_int4(w, 128)
    assert c.shape == (4, 256) and z.shape == (2, 4) and s.dtype == torch.float16


def test_export_then_prequantized_load_is_exact():
    sizes = [48, 16]
    shards = _shards(sizes, 192, 8)
    for make, pre in ((lambda: Int8Method(), lambda: Int8Method(prequantized=True)),
                      (lambda: Fp8Method(), lambda: Fp8Method(prequantized=True)),
                      (lambda: Int4Method(), lambda: Int4Method(source="floorline")),
                      (lambda: Nf4Method(), lambda: Nf4Method(prequantized=True))):
        src = _layer(make(), 192, sizes, shards)
        dst = Linear(192, sizes, quant_method=pre(), prefix="test")
        for shard in (1, 0):
            for name, t in src.quant_method.export_shard(src, shard).items():
                dst.load(shard, name, t.clone())
        dst.finish_loading()
        assert torch.equal(dst.quant_method.dequantize_ref(dst), src.quant_method.dequantize_ref(src))


def test_missing_part_and_bad_shape_are_reported():
    from floorline.errors import WeightMismatchError

    layer = Linear(128, [32], quant_method=Int4Method(source="floorline"), prefix="p")
    layer.load(0, "qweight", torch.zeros(32, 64, dtype=torch.uint8))
    with pytest.raises(WeightMismatchError, match="lacks scales, zeros"):
        layer.finish_loading()
    with pytest.raises(WeightMismatchError, match="shape"):
        _layer(Int8Method(), 64, [32], [torch.randn(31, 64)])
    with pytest.raises(WeightMismatchError, match="unexpected tensor 'qzeros'"):
        layer.load(0, "qzeros", torch.zeros(1))


def test_decode_rows_up_to_dot_max_m_take_the_gemv():
    """1..DOT_MAX_M rows on CUDA go to the Triton GEMV (its dot paths past 16), more to the dequantize +
    matmul path; CPU tensors always take the reference path."""
    from types import SimpleNamespace

    from floorline.kernels.quant_configs import DOT_MAX_M
    from floorline.quant.packed import gemv_wanted

    def on_cuda(m):
        return SimpleNamespace(is_cuda=True, shape=(m, 128))

    assert gemv_wanted(on_cuda(1)) and gemv_wanted(on_cuda(17)) and gemv_wanted(on_cuda(DOT_MAX_M))
    assert not gemv_wanted(on_cuda(DOT_MAX_M + 1)) and not gemv_wanted(on_cuda(0))
    assert not gemv_wanted(torch.zeros(1, 128))
