"""GPU table lookup and bytes per weight of every format."""

import pytest

from floorline.analysis.formats import kv_format, weight_format, weight_format_names
from floorline.analysis.gpus import GPUS, known_gpu_names, lookup_gpu
from floorline.errors import FloorlineError


@pytest.mark.parametrize("name,expected", [
    ("h100", "H100 SXM"), ("H100-SXM", "H100 SXM"), ("nvidia h100 80gb hbm3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("a100", "A100 80GB"),
    ("a10", "A10"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("rtx5090", "RTX 5090"), ("Orin", "Jetson AGX Orin 64GB"),
    ("NVIDIA H200", "H200"), ("b200", "B200"), ("L40S", "L40S"), ("l4", "L4"), ("RTX 3090", "RTX 3090"),
])
def test_lookup_forgiving(name, expected):
    assert lookup_gpu(name).name == expected


@pytest.mark.parametrize("name", ["h100 nvl", "a1000", "tpu-v5"])
def test_unknown_gpu_lists_known(name):
    with pytest.raises(FloorlineError) as e:
        lookup_gpu(name)
    assert "H100 SXM" in str(e.value) and "Jetson AGX Orin 64GB" in str(e.value)


def test_table_is_complete_and_sane():
    names = set(known_gpu_names())
    for required in ("L4", "L40S", "A10", "A100 40GB", "A100 80GB", "H100 PCIe", "H100 SXM", "H200", "B200",
                     "RTX 3090", "RTX 4090", "RTX 5090", "Jetson AGX Orin 64GB"):
        assert required in names
    for g in GPUS:
        assert 1e11 < g.bandwidth < 1e13 and g.memory_bytes >= 24e9 and g.bf16_flops > 1e13
    h100 = lookup_gpu("h100")
    assert h100.bandwidth == 3.35e12 and h100.fp8_flops == 1979e12
    assert lookup_gpu("a100").peak_rate("fp8") == 312e12  # no fp8 units: bf16 rate


@pytest.mark.parametrize("name,bits", [("Q4_0", 4.5), ("q8_0", 8.5), ("Q4_K", 4.5), ("Q6_K", 6.5625),
                                       ("Q5_K", 5.5), ("Q4_1", 5.0), ("Q5_0", 5.5), ("Q5_1", 6.0),
                                       ("F16", 16), ("BF16", 16), ("f32", 32)])
def test_gguf_bits_per_weight(name, bits):
    fmt = weight_format(name)
    assert fmt.gguf or name.lower() == "bf16"
    assert fmt.bits_per_weight() == pytest.approx(bits)


def test_weight_format_bytes():
    assert weight_format("bf16").matrix_bytes(4096, 4096) == 4096 * 4096 * 2
    # fp8/int8: one byte per weight + one fp32 scale per output channel
    assert weight_format("fp8").matrix_bytes(1024, 4096) == 1024 * 4096 + 1024 * 4
    assert weight_format("int8").bits_per_weight(4096) == pytest.approx(8 + 32 / 4096)
    # int4 group 128: 4 bits + fp16 scale and zero per 128 weights
    assert weight_format("int4").bits_per_weight() == pytest.approx(4.25)
    # NF4: 4 bits + 8-bit absmax per 64 + fp32 absmax per 256 blocks of 64, + one fp32 offset per tensor
    nf4 = weight_format("nf4")
    assert nf4.bits_per_weight() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert nf4.matrix_bytes(64, 256 * 64) == pytest.approx(64 * 256 * 64 * nf4.bits / 8 + 4)
    assert weight_format("AWQ").name == "int4" and weight_format("e4m3").name == "fp8"


def test_kv_formats():
    assert kv_format("bf16").bytes_per_token_layer(2048, 16) == 4096
    assert kv_format("fp8").bytes_per_token_layer(2048, 16) == 2048
    assert kv_format("int8").bytes_per_token_layer(2048, 16) == 2048 + 16 * 2  # fp16 scale per head


def test_unknown_formats_list_accepted():
    with pytest.raises(FloorlineError) as e:
        weight_format("int3")
    assert "nf4" in str(e.value) and "Q4_K" in str(e.value)
    assert "Q6_K" in weight_format_names() and "I32" not in weight_format_names()
    with pytest.raises(FloorlineError) as e:
        kv_format("int4")
    assert "fp8" in str(e.value)
