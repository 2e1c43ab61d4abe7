"""FP8 (e4m3) weights with one fp32 scale per output channel.

Quantize-on-load: s = max|w_row| / 448, q = e4m3(w / s) (round to nearest even, 3 mantissa bits).
Prefill on Hopper (compute capability >= 9.0) runs W8A8: each token's activations are quantized to
e4m3 with their own scale and `torch._scaled_mm` multiplies on the fp8 tensor cores. Decode (1..64
rows) reads the weights once in the Triton GEMV either way: it is memory-bound, and keeping the
activations in 16 bits there costs nothing (at 32 rows the GEMV's dot path beat `_scaled_mm` with
its per-token activation scales: H200, a Llama-3.1-8B step 5.55 against 7.72 ms). Elsewhere the
weight is dequantized (weight-only).
The weight is stored as its raw bits in uint8: dummy loading can randomize uint8, not float8.
"""

from __future__ import annotations

import torch

from floorline.errors import UnsupportedModelError
from floorline.quant.int8 import Int8Method

FP8_MAX = 448.0


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (e4m3 bits as uint8 [N, K], fp32 scales [N])."""
    w = w.float()
    scale = w.abs().amax(dim=1) / FP8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (w / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(torch.uint8), scale


def w8a8_supported(device: torch.device) -> bool:
    """FP8 tensor cores and rowwise-scaled `torch._scaled_mm`: CUDA compute capability 9.0 or newer."""
    return (device.type == "cuda" and torch.cuda.is_available() and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= (9, 0))


def require_w8a8(device: torch.device) -> None:
    if w8a8_supported(device):
        return
    where = "the CPU" if device.type != "cuda" else (
        f"{torch.cuda.get_device_name(device)} (compute capability "
        f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))})")
    raise UnsupportedModelError(
        f"fp8-w8a8 needs FP8 tensor cores (CUDA compute capability >= 9.0, e.g. H100); this run is on {where}. "
        "Use --quantization fp8 for FP8 weights with 16-bit activations (weight-only), which runs anywhere")


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quantization: x [M, K] -> (e4m3 [M, K], fp32 scales [M, 1])."""
    xf = x.float()
    scale = (xf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_(min=1e-12)
    return (xf / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def w8a8_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] times the fp8 weight [N, K] (uint8 bits) on FP8 tensor cores -> [M, N] in x.dtype."""
    xq, xs = quantize_per_token_fp8(x)
    w = qweight.view(torch.float8_e4m3fn)
    out = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=scale.view(1, -1), out_dtype=torch.bfloat16)
    return out.to(x.dtype)


def w8a8_ref(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch W8A8: both operands quantized as `w8a8_matmul` does, multiplied in fp32."""
    xq, xs = quantize_per_token_fp8(x)
    w = qweight.view(torch.float8_e4m3fn).float() * scale[:, None]
    return ((xq.float() * xs) @ w.t()).to(x.dtype)


class Fp8Method(Int8Method):
    """FP8 e4m3 weights; `w8a8=True` (Hopper only) multiplies prefill on FP8 tensor cores."""

    name = "fp8"
    fp8 = True

    def __init__(self, prequantized: bool = False, w8a8: bool = False):
        super().__init__(prequantized)
        self.w8a8 = w8a8

    def create_weights(self, layer, dtype, device) -> None:
        if self.w8a8:
            require_w8a8(device)
            if layer.in_features % 16 or layer.out_features % 16:
                self.w8a8 = False  # _scaled_mm wants both dims divisible by 16: this layer stays weight-only
        super().create_weights(layer, dtype, device)

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_fp8(w)

    def finish_loading(self, layer) -> None:
        super().finish_loading(layer)
        # 0x7F / 0xFF are e4m3's NaNs: real weights never hold them, random (dummy) bytes may.
        q = layer.qweight.data
        q.sub_(((q & 0x7F) == 0x7F).to(torch.uint8))  # -> +-448, the largest finite values

    def export_shard(self, layer, shard) -> dict[str, torch.Tensor]:
        parts = super().export_shard(layer, shard)
        parts["qweight"] = parts["qweight"].view(torch.float8_e4m3fn)
        return parts

    def matmul(self, layer, x) -> torch.Tensor:
        if self.w8a8 and x.is_cuda:
            return w8a8_matmul(x, layer.qweight, layer.scale)
        return super().matmul(layer, x)
