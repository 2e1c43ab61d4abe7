"""floorline.quant: weight quantization methods (int8, int4 incl. AWQ/GPTQ, NF4, FP8) for `Linear`."""

from floorline.quant.config import ON_LOAD, QuantConfig, resolve_quantization
from floorline.quant.context import quantization_context

__all__ = ["ON_LOAD", "QuantConfig", "quantization_context", "resolve_quantization"]
