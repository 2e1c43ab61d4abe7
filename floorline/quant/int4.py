"""Group-wise int4 weights (group 128 by default): round-to-nearest on load, or AWQ / GPTQ checkpoints.

Every source ends in floorline's layout (kernels/quant_int4.py): int32 words of eight codes [N, Kp / 8]
in the kernels' slot order, and fp16 scales and zero points [Kp / G, N]. floorline's own checkpoints
store the codes as plain bytes [N, Kp / 2] (even column in the high nibble), so they do not depend on
the kernels' order. RTN is asymmetric per group, as AWQ stores it:
s = (max - min) / 15, z = round(-min / s) clamped to 0..15, q = clamp(round(w / s) + z, 0, 15).
"""

from __future__ import annotations

import torch

from floorline.errors import UnsupportedModelError
from floorline.kernels.quant_int4 import (
    int4_dequantize_ref,
    int4_dequantize_triton,
    int4_gemv_triton,
)
from floorline.kernels.quant_common import m1_fusion_wanted
from floorline.kernels.quant_int4_codes import int4_row_params
from floorline.kernels.quant_packing import bytes_to_codes, codes_to_bytes, pack_int4, unpack_int4
from floorline.quant.awq_gptq import awq_unpack, check_trivial_g_idx, gptq_unpack
from floorline.quant.packed import PackedMethod, add_param, check_shape, copy_part

SOURCES = ("rtn", "floorline", "awq", "gptq")


def quantize_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] float -> (codes uint8 [N, Kp], zeros fp16 [Kp / G, N], scales fp16 [Kp / G, N]).

    Kp is K rounded up to the group; padding columns are zeros (they only widen the last group's range).
    """
    n, k = w.shape
    kp = -(-k // group) * group
    wf = torch.zeros(n, kp, dtype=torch.float32, device=w.device)
    wf[:, :k] = w.float()
    g = wf.reshape(n, kp // group, group)
    wmin, wmax = g.amin(dim=2), g.amax(dim=2)
    # the scale is rounded to fp16 first, so codes are chosen for the scale the kernels will use
    scale = ((wmax - wmin) / 15.0).half().float().clamp_(min=2.0**-24)
    zero = torch.round(-wmin / scale).clamp_(0, 15)
    q = torch.round(g / scale[:, :, None]) + zero[:, :, None]
    codes = q.clamp_(0, 15).to(torch.uint8).reshape(n, kp)
    return codes, zero.t().contiguous().half(), scale.t().contiguous().half()


def internal_group(k: int, group_size: int, what: str) -> int:
    """The group the kernels use: the checkpoint's (a power of two >= 32); per-channel (-1) becomes 128
    (or the largest power of two <= 128 dividing K) with the scale repeated, which is exact."""
    if group_size == -1:
        for g in (128, 64, 32):
            if k % g == 0:
                return g
        raise UnsupportedModelError(f"{what}: per-channel int4 needs input features divisible by 32, got {k}")
    if group_size < 32 or group_size & (group_size - 1):
        raise UnsupportedModelError(f"{what}: int4 group size {group_size} is not supported; "
                                    "supported: powers of two >= 32, or -1 (per channel)")
    return group_size


class Int4Method(PackedMethod):
    """Packed int4 codes with a scale and zero point per group of `group_size` input features."""

    name = "int4"

    def __init__(self, source: str = "rtn", group_size: int = 128, zero_offset: int = 0):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"int4 source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.group_size = group_size  # the checkpoint's (-1: per channel)
        self.zero_offset = zero_offset  # GPTQ v1 stores zero - 1
        self.group = 128  # set per layer in create_weights

    def parts(self) -> tuple[str, ...]:
        return {"rtn": ("weight",), "floorline": ("qweight", "scales", "zeros"),
                "awq": ("qweight", "qzeros", "scales"), "gptq": ("qweight", "qzeros", "scales")}[self.source]

    def optional_parts(self) -> tuple[str, ...]:
        return ("g_idx",) if self.source == "gptq" else ()

    def create_weights(self, layer, dtype, device) -> None:
        n, k = layer.out_features, layer.in_features
        self.group = internal_group(k, self.group_size, layer.prefix)
        if self.source in ("awq", "gptq") and k % self.group:
            raise UnsupportedModelError(f"{layer.prefix}: {k} input features are not a multiple of the "
                                        f"{self.source} group size {self.group}")
        kp = -(-k // self.group) * self.group
        add_param(layer, "qweight", (n, kp // 8), torch.int32, device)  # [N, Kp / 8] words
        add_param(layer, "scales", (kp // self.group, n), torch.float16, device)  # [Kp / G, N]
        add_param(layer, "zeros", (kp // self.group, n), torch.float16, device)  # [Kp / G, N]

    def load_parts(self, layer, shard, start, size, parts) -> None:
        what = f"{layer.prefix} shard {shard}"
        k = layer.in_features
        if self.source == "floorline":
            kp = 8 * layer.qweight.shape[1]
            check_shape(parts["qweight"], (size, kp // 2), f"{what} qweight")
            codes = bytes_to_codes(parts["qweight"].to(torch.uint8))
            copy_part(layer.qweight.data, pack_int4(codes, self.group), 0, start, size, f"{what} qweight")
            copy_part(layer.scales.data, parts["scales"], 1, start, size, f"{what} scales")
            copy_part(layer.zeros.data, parts["zeros"], 1, start, size, f"{what} zeros")
            return
        if self.source == "rtn":
            check_shape(parts["weight"], (size, k), what)
            codes, zeros, scales = quantize_int4(parts["weight"], self.group)
        else:
            packed = (parts["qweight"], parts["qzeros"], parts["scales"])
            if self.source == "awq":
                codes, zeros, scales = awq_unpack(*packed, what=what)
            else:
                codes, zeros, scales = gptq_unpack(*packed, zero_offset=self.zero_offset, what=what)
            check_shape(codes, (size, k), f"{what} qweight (unpacked, [N, K])")
            groups = layer.scales.shape[0]
            if zeros.shape[0] != groups:  # per-channel checkpoint: one group, repeated
                zeros, scales = zeros.expand(groups, -1), scales.expand(groups, -1)
        copy_part(layer.qweight.data, pack_int4(codes, self.group), 0, start, size, f"{what} qweight")
        copy_part(layer.scales.data, scales.half(), 1, start, size, f"{what} scales")
        copy_part(layer.zeros.data, zeros.half(), 1, start, size, f"{what} zeros")

    def load_optional(self, layer, shard, name, tensor) -> None:
        what = f"{layer.prefix} shard {shard}"
        check_shape(tensor.reshape(-1), (layer.in_features,), f"{what} g_idx")
        check_trivial_g_idx(tensor, layer.in_features if self.group_size == -1 else self.group_size, what)

    def finish_loading(self, layer) -> None:
        super().finish_loading(layer)
        # the persistent M = 1 kernels' row-major copy of scales and zeros (int4_row_params): 4 bytes a group and row
        # more memory (1/16 of the codes' at group 128), rebuilt on every load and never saved
        layer.register_buffer("row_params", int4_row_params(layer.scales.data, layer.zeros.data), persistent=False)

    def export_shard(self, layer, shard) -> dict[str, torch.Tensor]:
        start, size = layer.shard_range(shard)
        codes = unpack_int4(layer.qweight.data[start:start + size], self.group)
        return {"qweight": codes_to_bytes(codes),
                "scales": layer.scales.data[:, start:start + size].contiguous(),
                "zeros": layer.zeros.data[:, start:start + size].contiguous()}

    def gemv(self, layer, x, silu_mul, **fusions):
        return int4_gemv_triton(x, layer.qweight, layer.scales, layer.zeros, layer.in_features, self.group,
                                silu_mul=silu_mul, row_params=getattr(layer, "row_params", None), **fusions)

    def fusion_wanted(self, layer, operand, fusions) -> bool:
        return m1_fusion_wanted("int4", operand, layer.qweight, layer.in_features, self.group, **fusions)

    def dequantize_ref(self, layer) -> torch.Tensor:
        return int4_dequantize_ref(layer.qweight, layer.scales, layer.zeros, layer.in_features, self.group)

    def dequantize_triton(self, layer, out) -> torch.Tensor:
        return int4_dequantize_triton(layer.qweight, layer.scales, layer.zeros, layer.in_features, self.group, out)
