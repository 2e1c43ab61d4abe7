"""NF4 quantization as bitsandbytes does it (`bnb_4bit_quant_type="nf4"`, block 64, double quantization).

* Each run of 64 weights gets absmax = max |w|; each weight becomes the index of the nearest NF4
  code value to w / absmax (ties go to the lower code), packed two to a byte, high nibble first.
* Double quantization ("nested"): the absmax values, minus their mean (the offset), are quantized to
  8 bits in runs of 256 with bitsandbytes' signed dynamic map and one fp32 absmax per run:
  absmax ~= nested_map[code] * nested_absmax[b // 256] + offset.
"""

from __future__ import annotations

import itertools
import json
import os

import torch

from floorline.errors import (
    CorruptFileError,
    UnsupportedModelError,
    WeightMismatchError,
)
from floorline.kernels.quant_nf4 import (
    BLOCK,
    NESTED_BLOCK,
    nf4_code,
    nf4_dequantize_ref,
    nf4_dequantize_triton,
    nf4_gemv_triton,
)
from floorline.kernels.nf4_lookup import NF4_CODE
from floorline.kernels.quant_common import m1_fusion_wanted
from floorline.kernels.quant_packing import bytes_to_codes, codes_to_bytes, pack_nf4, unpack_nf4
from floorline.quant.packed import PackedMethod, add_param, check_shape, copy_part

_NF4_MIDPOINTS = [(a + b) / 2 for a, b in itertools.pairwise(NF4_CODE)]


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (256 sorted fp32 values in [-1, 1]).

    For exponents e = 0..6: 2**e values, the midpoints of a uniform grid of 2**e + 1 points on
    [0.1, 1], scaled by 10**(e - 6), with both signs; then 0 and 1.
    """
    values = [0.0, 1.0]
    for e in range(7):
        grid = torch.linspace(0.1, 1.0, 2**e + 1)
        mids = (grid[:-1] + grid[1:]) / 2
        mags = (10.0 ** (e - 6)) * mids
        values += mags.tolist() + (-mags).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def _nearest(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted `table` for each value (ties to the lower entry)."""
    mids = (table[:-1] + table[1:]) / 2
    return torch.bucketize(values, mids, right=False)


def quantize_nf4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float (K % 64 == 0) -> (codes uint8 [N, K] in 0..15, absmax fp32 [N, K / 64])."""
    n, k = w.shape
    blocks = w.float().reshape(n, k // BLOCK, BLOCK)
    absmax = blocks.abs().amax(dim=2)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    mids = torch.tensor(_NF4_MIDPOINTS, dtype=torch.float32, device=w.device)
    codes = torch.bucketize(blocks / safe[:, :, None], mids, right=False)
    return codes.to(torch.uint8).reshape(n, k), absmax


def double_quantize(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Flat fp32 absmax [B] -> (codes uint8 [B], nested_absmax fp32 [ceil(B / 256)], offset, map [256])."""
    flat = absmax.reshape(-1).float()
    offset = float(flat.mean())
    centered = flat - offset
    groups = -(-flat.numel() // NESTED_BLOCK)
    padded = torch.zeros(groups * NESTED_BLOCK, dtype=torch.float32, device=flat.device)
    padded[: flat.numel()] = centered
    g = padded.reshape(groups, NESTED_BLOCK)
    nested = g.abs().amax(dim=1)
    safe = torch.where(nested > 0, nested, torch.ones_like(nested))
    qmap = dynamic_map().to(flat.device)
    codes = _nearest(g / safe[:, None], qmap).reshape(-1)[: flat.numel()]
    return codes.to(torch.uint8), nested, offset, qmap


# ---- the method ---------------------------------------------------------------------------------

QUANT_STATE = "weight.quant_state.bitsandbytes__nf4"  # bitsandbytes' JSON of the non-tensor state
BNB_PARTS = ("weight", "weight.absmax", "weight.quant_map", QUANT_STATE)
BNB_NESTED_PARTS = ("weight.nested_absmax", "weight.nested_quant_map")


def _shard_groups(sizes: list[int], k: int) -> list[int]:
    """Nested groups of each shard: bitsandbytes quantizes every checkpoint tensor on its own."""
    return [-(-size * (k // BLOCK) // NESTED_BLOCK) for size in sizes]


class Nf4Method(PackedMethod):
    """NF4 weights in the bitsandbytes layout; quantized on load or read from a `bnb-4bit` checkpoint.

    floorline writes NF4 checkpoints in the bitsandbytes format too, so `parts` are bitsandbytes'
    tensor names in both pre-quantized cases. On the device the codes are int32 words in the kernels'
    slot order (kernels/quant_packing.py), converted from and back to bitsandbytes' bytes.
    """

    name = "nf4"
    lookup = os.environ.get("FLOORLINE_NF4_LOOKUP") or None  # None: the kernels' default (nf4_lookup.py)

    def __init__(self, prequantized: bool = False, nested: bool = True):
        super().__init__()
        self.prequantized = prequantized
        self.nested = nested
        self.dtype_name = "bfloat16"

    def parts(self) -> tuple[str, ...]:
        if not self.prequantized:
            return ("weight",)
        return BNB_PARTS + (BNB_NESTED_PARTS if self.nested else ())

    def create_weights(self, layer, dtype, device) -> None:
        n, k = layer.out_features, layer.in_features
        if k % BLOCK:
            raise UnsupportedModelError(f"{layer.prefix}: NF4 needs input features divisible by {BLOCK}, got {k}")
        self.dtype_name = str(dtype).removeprefix("torch.")
        add_param(layer, "qweight", (n, k // 8), torch.int32, device)  # [N, K / 8] words
        layer.register_buffer("code", nf4_code(device), persistent=False)  # [16] fp32
        if not self.nested:
            add_param(layer, "absmax", (n, k // BLOCK), torch.float32, device)  # [N, K / 64]
            return
        add_param(layer, "absmax", (n, k // BLOCK), torch.uint8, device)  # [N, K / 64] codes
        groups = _shard_groups(layer.output_sizes, k)
        add_param(layer, "nested_absmax", (sum(groups),), torch.float32, device)
        add_param(layer, "nested_map", (len(groups), 256), torch.float32, device)  # one map per shard
        add_param(layer, "row_offset", (n,), torch.float32, device)  # [N]: the row's shard offset
        base = torch.empty(n, dtype=torch.int32)
        first_group = 0
        for shard, size in enumerate(layer.output_sizes):
            start, _ = layer.shard_range(shard)
            base[start:start + size] = first_group * NESTED_BLOCK + torch.arange(size, dtype=torch.int32) * (k // BLOCK)
            first_group += groups[shard]
        shard_of_row = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(layer.output_sizes))
        # structural, never loaded: where row n's nested groups and nested map start
        layer.register_buffer("row_base", base.to(device), persistent=False)  # [N] int32
        layer.register_buffer("row_map", (shard_of_row * 256).to(torch.int32).to(device), persistent=False)

    def _group_range(self, layer, shard: int) -> tuple[int, int]:
        groups = _shard_groups(layer.output_sizes, layer.in_features)
        return sum(groups[:shard]), groups[shard]

    def load_parts(self, layer, shard, start, size, parts) -> None:
        what = f"{layer.prefix} shard {shard}"
        k = layer.in_features
        if not self.prequantized:
            check_shape(parts["weight"], (size, k), what)
            codes, absmax = quantize_nf4(parts["weight"])
            if self.nested:
                acodes, nabs, offset, qmap = double_quantize(absmax)
        else:
            state = _quant_state(parts[QUANT_STATE], what)
            _check_state(state, (size, k), self.nested, what)
            _check_code(parts["weight.quant_map"], what)
            codes = bytes_to_codes(_as_bytes(parts["weight"], size * k // 2, what).reshape(size, k // 2))
            absmax = parts["weight.absmax"]
            if self.nested:
                acodes, nabs, qmap = absmax, parts["weight.nested_absmax"], parts["weight.nested_quant_map"]
                offset = float(state["nested_offset"])
        copy_part(layer.qweight.data, pack_nf4(codes, BLOCK), 0, start, size, f"{what} weight")
        blocks = (size, k // BLOCK)
        if not self.nested:
            check_shape(absmax.reshape(-1), (blocks[0] * blocks[1],), f"{what} absmax")
            copy_part(layer.absmax.data, absmax.reshape(blocks).float(), 0, start, size, f"{what} absmax")
            return
        check_shape(acodes.reshape(-1), (blocks[0] * blocks[1],), f"{what} absmax")
        copy_part(layer.absmax.data, acodes.reshape(blocks), 0, start, size, f"{what} absmax")
        first, count = self._group_range(layer, shard)
        copy_part(layer.nested_absmax.data, nabs.reshape(-1).float(), 0, first, count, f"{what} nested_absmax")
        check_shape(qmap.reshape(-1), (256,), f"{what} nested_quant_map")
        layer.nested_map.data[shard].copy_(qmap.reshape(-1))
        layer.row_offset.data[start:start + size] = offset

    def export_shard(self, layer, shard) -> dict[str, torch.Tensor]:
        """bitsandbytes' tensors for this shard (what `save_pretrained` of a bnb-4bit model writes)."""
        start, size = layer.shard_range(shard)
        k = layer.in_features
        state = {"quant_type": "nf4", "blocksize": BLOCK, "dtype": self.dtype_name, "shape": [size, k]}
        codes = unpack_nf4(layer.qweight.data[start:start + size], BLOCK)
        out = {"weight": codes_to_bytes(codes).reshape(-1, 1),
               "weight.absmax": layer.absmax.data[start:start + size].reshape(-1),
               "weight.quant_map": layer.code.clone()}
        if self.nested:
            first, count = self._group_range(layer, shard)
            out["weight.nested_absmax"] = layer.nested_absmax.data[first:first + count]
            out["weight.nested_quant_map"] = layer.nested_map.data[shard].clone()
            state.update(nested_blocksize=NESTED_BLOCK, nested_dtype="float32",
                         nested_offset=float(layer.row_offset.data[start]))
        out[QUANT_STATE] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
        return out

    def _nested(self, layer) -> tuple | None:
        if not self.nested:
            return None
        return layer.nested_absmax, layer.nested_map, layer.row_base, layer.row_offset, layer.row_map

    def gemv(self, layer, x, silu_mul, **fusions):
        return nf4_gemv_triton(x, layer.qweight, layer.absmax, self._nested(layer), layer.code,
                               silu_mul=silu_mul, lookup=self.lookup, **fusions)

    def fusion_wanted(self, layer, operand, fusions) -> bool:
        return m1_fusion_wanted("nf4", operand, layer.qweight, layer.in_features, BLOCK, **fusions)

    def dequantize_ref(self, layer) -> torch.Tensor:
        return nf4_dequantize_ref(layer.qweight, layer.absmax, self._nested(layer))

    def dequantize_triton(self, layer, out) -> torch.Tensor:
        return nf4_dequantize_triton(layer.qweight, layer.absmax, self._nested(layer), layer.code, out,
                                     lookup=self.lookup)


def _quant_state(t: torch.Tensor, what: str) -> dict:
    try:
        return json.loads(bytes(t.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{what}: unreadable bitsandbytes quant_state ({e})") from None


def _check_state(state: dict, shape: tuple[int, int], nested: bool, what: str) -> None:
    if state.get("quant_type") != "nf4":
        raise UnsupportedModelError(f"{what}: bitsandbytes quant_type {state.get('quant_type')!r} is not "
                                    "supported; supported: nf4")
    if int(state.get("blocksize", -1)) != BLOCK:
        raise UnsupportedModelError(f"{what}: bitsandbytes blocksize {state.get('blocksize')} is not supported; "
                                    f"supported: {BLOCK}")
    if tuple(state.get("shape", ())) != shape:
        raise WeightMismatchError(f"{what}: quant_state shape {state.get('shape')}, expected {list(shape)}")
    if nested != ("nested_offset" in state):
        raise WeightMismatchError(f"{what}: the config says double quantization is "
                                  f"{'on' if nested else 'off'}, the tensor's quant_state disagrees")
    if nested and int(state.get("nested_blocksize", -1)) != NESTED_BLOCK:
        raise UnsupportedModelError(f"{what}: nested blocksize {state.get('nested_blocksize')} is not supported; "
                                    f"supported: {NESTED_BLOCK}")


def _check_code(quant_map: torch.Tensor, what: str) -> None:
    if quant_map.numel() != 16 or not torch.allclose(quant_map.reshape(-1).float().cpu(), torch.tensor(NF4_CODE),
                                                     rtol=0, atol=1e-6):
        raise UnsupportedModelError(f"{what}: the quant_map is not the NF4 code; supported: nf4")


def _as_bytes(t: torch.Tensor, numel: int, what: str) -> torch.Tensor:
    """The packed weight as flat uint8 (bnb_4bit_quant_storage may be another dtype holding the same bytes)."""
    flat = t.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.contiguous().view(torch.uint8)
    check_shape(flat, (numel,), f"{what} weight (bytes)")
    return flat
