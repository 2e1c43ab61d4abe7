"""int8 weight-only quantization, symmetric, one fp32 scale per output channel.

Quantize-on-load: s = max|w_row| / 127, q = round(w / s) in [-127, 127] (error <= s / 2 per weight).
floorline's pre-quantized checkpoints store `qweight` (int8 [N, K]) and `scale` (fp32 [N]) per shard;
on the device the codes are uint8 q + 128 (kernels/quant_w8.py says why).
"""

from __future__ import annotations

import torch

from floorline.kernels.quant_w8 import (
    int8_to_stored,
    stored_to_int8,
    w8_dequantize_ref,
    w8_dequantize_triton,
    w8_fusion_wanted,
    w8_gemv_triton,
)
from floorline.quant.packed import PackedMethod, add_param, check_shape, copy_part


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (int8 codes [N, K], fp32 scales [N])."""
    w = w.float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale works
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Method(PackedMethod):
    """Per-channel int8 weights, dequantized in the GEMV's registers."""

    name = "int8"
    fp8 = False

    def __init__(self, prequantized: bool = False):
        super().__init__()
        self.prequantized = prequantized

    def parts(self) -> tuple[str, ...]:
        return ("qweight", "scale") if self.prequantized else ("weight",)

    def create_weights(self, layer: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        n, k = layer.out_features, layer.in_features
        add_param(layer, "qweight", (n, k), torch.uint8, device)  # [N, K]: fp8 bits, or int8 + 128
        add_param(layer, "scale", (n,), torch.float32, device)  # [N]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_int8(w)

    def load_parts(self, layer, shard, start, size, parts) -> None:
        what = f"{layer.prefix} shard {shard}"
        if self.prequantized:
            q, s = parts["qweight"], parts["scale"].reshape(-1)
            if self.fp8 and q.dtype == torch.float8_e4m3fn:
                q = q.view(torch.uint8)
            elif not self.fp8:
                check_shape(q, (size, layer.in_features), f"{what} qweight")
                q = int8_to_stored(q)
        else:
            w = parts["weight"]
            check_shape(w, (size, layer.in_features), what)
            q, s = self.quantize(w)
            if not self.fp8:
                q = int8_to_stored(q)
        copy_part(layer.qweight.data, q, 0, start, size, f"{what} qweight")
        copy_part(layer.scale.data, s.float(), 0, start, size, f"{what} scale")

    def export_shard(self, layer, shard) -> dict[str, torch.Tensor]:
        start, size = layer.shard_range(shard)
        q = layer.qweight.data[start:start + size]
        return {"qweight": q if self.fp8 else stored_to_int8(q), "scale": layer.scale.data[start:start + size]}

    def gemv(self, layer, x, silu_mul, **fusions):
        return w8_gemv_triton(x, layer.qweight, layer.scale, self.fp8, silu_mul=silu_mul, **fusions)

    def fusion_wanted(self, layer, operand, fusions) -> bool:
        return w8_fusion_wanted(operand, layer.qweight, self.fp8, **fusions)

    def dequantize_ref(self, layer) -> torch.Tensor:
        return w8_dequantize_ref(layer.qweight, layer.scale, self.fp8)

    def dequantize_triton(self, layer, out) -> torch.Tensor:
        return w8_dequantize_triton(layer.qweight, layer.scale, self.fp8, out)

