"""Bytes per weight of weight formats and bytes per element of KV-cache formats, scales included.

A weight matrix here is [rows = output features, cols = input features]. Per-channel scales
cost bytes per row; group/block scales cost bytes per group and are folded into `bits`.
"""

from __future__ import annotations

from dataclasses import dataclass

from floorline.errors import FloorlineError


@dataclass(frozen=True)
class WeightFormat:
    """How a linear layer's weights are stored, and which tensor-core rate its matmul runs at."""

    name: str
    bits: float  # bits per weight: payload plus block/group scales
    row_bytes: float = 0.0  # per output channel (per-channel scales)
    matrix_bytes_extra: float = 0.0  # per tensor (e.g. NF4's fp32 offset)
    compute: str = "bf16"  # "bf16" | "fp8" | "int8": the peak rate its matmul gets
    gguf: bool = False
    description: str = ""

    def matrix_bytes(self, rows: int, cols: int) -> float:
        return rows * cols * self.bits / 8 + rows * self.row_bytes + self.matrix_bytes_extra

    def bits_per_weight(self, cols: int = 4096) -> float:
        """Effective bits per weight for a matrix with `cols` input features."""
        return self.bits + 8 * self.row_bytes / cols


@dataclass(frozen=True)
class KVFormat:
    """How the KV cache stores an element, and what its scales cost."""

    name: str
    element_bytes: float
    scale_bytes_per_group: float = 0.0  # per token, per head (group) of K or V
    description: str = ""

    def bytes_per_token_layer(self, num_elements: int, num_scale_groups: int) -> float:
        return num_elements * self.element_bytes + num_scale_groups * self.scale_bytes_per_group


# NF4 with double quantization (the bitsandbytes layout): 4-bit codes; per 64-weight block an
# absmax, itself quantized to 8 bits; per 256 such blocks one fp32 second-level absmax; one
# fp32 offset per tensor (the 16-entry code table is shared, so not counted).
_NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)

_WEIGHT_FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("bf16", 16, description="bfloat16"),
        WeightFormat("fp16", 16, description="float16"),
        WeightFormat("fp8", 8, row_bytes=4, compute="fp8",
                     description="fp8 e4m3, fp32 scale per output channel"),
        # W8A8: activations are quantized per token too, so the int8 tensor rate applies
        WeightFormat("int8", 8, row_bytes=4, compute="int8",
                     description="int8, fp32 scale per output channel"),
        WeightFormat("int4", 4 + 32 / 128, description="int4, fp16 scale and zero per group of 128 (AWQ/GPTQ)"),
        WeightFormat("nf4", _NF4_BITS, matrix_bytes_extra=4,
                     description="NF4 block-64, double-quantized absmax (bitsandbytes)"),
    )
}
_WEIGHT_ALIASES = {"fp8-w8a8": "fp8", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "fp8_e4m3": "fp8", "e4m3": "fp8",
                   "fp8-e4m3": "fp8", "w8a8": "int8", "int4-g128": "int4", "awq": "int4", "gptq": "int4",
                   "bnb-nf4": "nf4", "bnb_nf4": "nf4"}

# ggml types that are not weight formats (integer tensors, the fp64 type)
_GGUF_SKIP = {"I8", "I16", "I32", "I64", "F64"}


def gguf_bits_per_weight(type_name: str) -> float:
    """True bits per weight of a GGUF tensor type (block scales included), e.g. Q4_0 -> 4.5."""
    from floorline.weights.gguf_quants import bits_per_weight

    return bits_per_weight(type_name)


def gguf_type_names() -> list[str]:
    from floorline.weights.gguf_quants import GGML_TYPES_BY_NAME

    return [n for n in GGML_TYPES_BY_NAME if n not in _GGUF_SKIP]


def weight_format_names() -> list[str]:
    return [*_WEIGHT_FORMATS, *gguf_type_names()]


def weight_format(name: str) -> WeightFormat:
    """Looks up a weight format: bf16, fp16, fp8, int8, int4, nf4, or any GGUF type (q4_k, Q8_0...)."""
    key = name.strip().lower()
    key = _WEIGHT_ALIASES.get(key, key)
    if key in _WEIGHT_FORMATS:
        return _WEIGHT_FORMATS[key]
    upper = key.upper()
    if upper in gguf_type_names():
        return WeightFormat(upper, gguf_bits_per_weight(upper), gguf=True, description=f"GGUF {upper}")
    raise FloorlineError(f"unknown weight format {name!r}; accepted: {', '.join(weight_format_names())}")


_KV_FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in (
        KVFormat("bf16", 2, description="bfloat16"),
        KVFormat("fp16", 2, description="float16"),
        KVFormat("fp32", 4, description="float32 (the CPU path)"),
        # one fp32 scale per layer for K and one for V: nothing per token
        KVFormat("fp8", 1, description="fp8 e4m3, per-layer scales"),
        KVFormat("int8", 1, scale_bytes_per_group=2, description="int8, fp16 scale per token and head"),
    )
}
_KV_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "fp8_e4m3": "fp8",
               "e4m3": "fp8", "auto": "bf16"}


def kv_format(name: str) -> KVFormat:
    key = name.strip().lower()
    key = _KV_ALIASES.get(key, key)
    if key not in _KV_FORMATS:
        raise FloorlineError(f"unknown KV-cache format {name!r}; accepted: {', '.join(_KV_FORMATS)}")
    return _KV_FORMATS[key]


def kv_format_names() -> list[str]:
    return list(_KV_FORMATS)


def sixteen_bit() -> WeightFormat:
    """The format of tensors that quantizers leave alone (norms, routers, usually the LM head)."""
    return _WEIGHT_FORMATS["bf16"]


def engine_formats(model, dtype) -> tuple[str, str]:
    """(weight format, KV format) of a built model: its quantization where it has one, else its dtype."""
    import torch

    from floorline.eval.perplexity import quantization_label

    by_dtype = {torch.bfloat16: ("bf16", "bf16"), torch.float16: ("fp16", "fp16"), torch.float32: ("F32", "fp32")}
    weight, kv = by_dtype[dtype]
    label = quantization_label(model)
    return (weight if label == "none" else label), kv


def engine_head_format(model) -> str | None:
    """The LM head's format for `decode_floor` where it is quantized (`--lm-head-quantization`), else None
    (the floor's default: 16-bit)."""
    proj = getattr(getattr(model, "lm_head", None), "proj", None)
    return None if proj is None else proj.quant_method.name
