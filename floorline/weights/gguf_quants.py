"""GGML tensor types: the table of every type's block layout, and vectorized torch dequantization.

A ggml tensor is a sequence of blocks; each block holds `block_size` weights in `type_size`
bytes (scales and packed integers). Dequantization reshapes the raw bytes to
`[num_blocks, type_size]` and decodes all blocks at once with tensor ops (no Python loop
over blocks), in float32, then casts to the requested dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from floorline.errors import UnsupportedModelError


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: `block_size` weights are stored in `type_size` bytes."""

    type_id: int
    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size


_QK = 256  # super-block size of the k-quants and i-quants

# Every ggml type id in use (ids 4, 5, 31-33, 36-38 were removed from ggml).
GGML_TYPES: dict[int, GGMLType] = {
    t.type_id: t
    for t in (
        GGMLType(0, "F32", 1, 4),
        GGMLType(1, "F16", 1, 2),
        GGMLType(2, "Q4_0", 32, 2 + 16),
        GGMLType(3, "Q4_1", 32, 2 + 2 + 16),
        GGMLType(6, "Q5_0", 32, 2 + 4 + 16),
        GGMLType(7, "Q5_1", 32, 2 + 2 + 4 + 16),
        GGMLType(8, "Q8_0", 32, 2 + 32),
        GGMLType(9, "Q8_1", 32, 4 + 4 + 32),
        GGMLType(10, "Q2_K", _QK, 2 + 2 + _QK // 16 + _QK // 4),
        GGMLType(11, "Q3_K", _QK, 2 + _QK // 4 + _QK // 8 + 12),
        GGMLType(12, "Q4_K", _QK, 2 + 2 + 12 + _QK // 2),
        GGMLType(13, "Q5_K", _QK, 2 + 2 + 12 + _QK // 8 + _QK // 2),
        GGMLType(14, "Q6_K", _QK, 2 + _QK // 2 + _QK // 4 + _QK // 16),
        GGMLType(15, "Q8_K", _QK, 4 + _QK + _QK // 8),
        GGMLType(16, "IQ2_XXS", _QK, 2 + _QK // 4),
        GGMLType(17, "IQ2_XS", _QK, 2 + _QK // 4 + _QK // 32),
        GGMLType(18, "IQ3_XXS", _QK, 2 + _QK // 4 + _QK // 8),
        GGMLType(19, "IQ1_S", _QK, 2 + _QK // 8 + _QK // 16),
        GGMLType(20, "IQ4_NL", 32, 2 + 16),
        GGMLType(21, "IQ3_S", _QK, 2 + _QK // 4 + _QK // 8 + _QK // 32 + 4),
        GGMLType(22, "IQ2_S", _QK, 2 + _QK // 4 + _QK // 16),
        GGMLType(23, "IQ4_XS", _QK, 2 + 2 + _QK // 64 + _QK // 2),
        GGMLType(24, "I8", 1, 1),
        GGMLType(25, "I16", 1, 2),
        GGMLType(26, "I32", 1, 4),
        GGMLType(27, "I64", 1, 8),
        GGMLType(28, "F64", 1, 8),
        GGMLType(29, "IQ1_M", _QK, _QK // 8 + _QK // 16 + _QK // 32),
        GGMLType(30, "BF16", 1, 2),
        GGMLType(34, "TQ1_0", _QK, 2 + 4 * 13),
        GGMLType(35, "TQ2_0", _QK, 2 + _QK // 4),
        GGMLType(39, "MXFP4", 32, 1 + 16),
        GGMLType(40, "NVFP4", 64, 4 + 32),
        GGMLType(41, "Q1_0", 128, 2 + 16),
    )
}
GGML_TYPES_BY_NAME: dict[str, GGMLType] = {t.name: t for t in GGML_TYPES.values()}


def bits_per_weight(type_name: str) -> float:
    """Storage bits per weight of a ggml type (scales included), e.g. Q4_0 -> 4.5."""
    t = GGML_TYPES_BY_NAME.get(type_name.upper())
    if t is None:
        raise UnsupportedModelError(
            f"unknown ggml type {type_name!r}; known: {', '.join(GGML_TYPES_BY_NAME)}"
        )
    return t.bits_per_weight


# ---- block decoders: uint8 [num_blocks, type_size] -> float32 [num_blocks, block_size] ----


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 scalar at byte `start` of each block, as float32 [num_blocks, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[..., n] packed bytes -> [..., 2n]: all low nibbles, then all high nibbles (ggml order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """[nb, n] bytes of a little-endian bit field -> [nb, 8n] bits, bit i at position i."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 1).reshape(packed.shape[0], -1)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:18]).float() - 8.0
    return q * _f16(b, 0)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(_f16(b, 2), _nibbles(b[:, 4:20]).float(), _f16(b, 0))


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 6:22]) | (_bits(b[:, 2:6]) << 4)
    return (q.float() - 16.0) * _f16(b, 0)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 8:24]) | (_bits(b[:, 4:8]) << 4)
    return torch.addcmul(_f16(b, 2), q.float(), _f16(b, 0))


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:34].contiguous().view(torch.int8).float() * _f16(b, 0)


def _k_scales_mins(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins, each [nb, 8]."""
    lo_sc = s[:, 0:4] & 63
    lo_m = s[:, 4:8] & 63
    hi_sc = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    hi_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([lo_sc, hi_sc], 1).float(), torch.cat([lo_m, hi_m], 1).float()


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    sc, m = _k_scales_mins(b[:, 4:16])
    # 4 chunks of 32 bytes; low nibbles form sub-block 2i, high nibbles sub-block 2i+1.
    q = _nibbles(b[:, 16:144].reshape(nb, 4, 32)).reshape(nb, 8, 32).float()
    scale = (_f16(b, 0) * sc).unsqueeze(-1)
    offset = (_f16(b, 2) * m).unsqueeze(-1)
    return (q * scale - offset).reshape(nb, _QK)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    sc, m = _k_scales_mins(b[:, 4:16])
    low = _nibbles(b[:, 48:176].reshape(nb, 4, 32)).reshape(nb, 8, 32)
    # Bit k of qh[l] is the fifth bit of element l of sub-block k.
    shifts = torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
    high = (b[:, 16:48].unsqueeze(1) >> shifts) & 1
    q = (low | (high << 4)).float()
    scale = (_f16(b, 0) * sc).unsqueeze(-1)
    offset = (_f16(b, 2) * m).unsqueeze(-1)
    return (q * scale - offset).reshape(nb, _QK)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 1, 2, 32)  # [half, -, 32-byte run, l]
    # Per half of 128 weights: runs k=0,1 are the low nibbles of the two 32-byte runs, k=2,3
    # the high nibbles; their top two bits are bits 2k..2k+1 of qh[l].
    low = torch.cat([ql & 0x0F, ql >> 4], dim=2).reshape(nb, 2, 4, 32)
    shifts = (2 * torch.arange(4, dtype=torch.uint8)).view(1, 1, 4, 1)
    high = (b[:, 128:192].reshape(nb, 2, 1, 32) >> shifts) & 3
    q = (low | (high << 4)).float().reshape(nb, 16, 16) - 32.0
    scales = b[:, 192:208].contiguous().view(torch.int8).float() * _f16(b, 208)  # [nb, 16]
    return (q * scales.unsqueeze(-1)).reshape(nb, _QK)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    sc = b[:, 0:16]
    shifts = (2 * torch.arange(4, dtype=torch.uint8)).view(1, 1, 4, 1)
    q = ((b[:, 16:80].reshape(nb, 2, 1, 32) >> shifts) & 3).float().reshape(nb, 16, 16)
    scale = (_f16(b, 80) * (sc & 0x0F).float()).unsqueeze(-1)
    offset = (_f16(b, 82) * (sc >> 4).float()).unsqueeze(-1)
    return (q * scale - offset).reshape(nb, _QK)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    shifts = (2 * torch.arange(4, dtype=torch.uint8)).view(1, 1, 4, 1)
    q = (b[:, 32:96].reshape(nb, 2, 1, 32) >> shifts) & 3  # [nb, half, j, l]
    # Bit (4*half + j) of hmask[l] set means "no -4 offset".
    hbit = _bits(b[:, 0:32]).reshape(nb, 32, 8).transpose(1, 2).reshape(nb, 2, 4, 32)
    q = (q.float() + 4.0 * hbit.float() - 4.0).reshape(nb, 16, 16)
    s = b[:, 96:108]
    low = torch.cat([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], dim=1)  # [nb, 16]
    high = (s[:, 8:12].unsqueeze(1) >> shifts.view(1, 4, 1)) & 3  # [nb, 4, 4]
    sc = (low | (high.reshape(nb, 16) << 4)).float() - 32.0
    return (q * (_f16(b, 108) * sc).unsqueeze(-1)).reshape(nb, _QK)


_BLOCK_DECODERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

DEQUANTIZABLE_TYPES: tuple[str, ...] = (*_FLOAT_TYPES, *_BLOCK_DECODERS)


def dequantize(raw: torch.Tensor, type_name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decodes raw ggml bytes (uint8 [nbytes]) to a flat [numel] tensor of `dtype`.

    The result never shares memory with `raw` (which may be a view of a memory map).
    """
    if type_name in _FLOAT_TYPES:
        src = _FLOAT_TYPES[type_name]
        if raw.data_ptr() % src.itemsize:
            raw = raw.clone()  # reinterpreting needs an aligned start
        values = raw.view(src)
        return values.to(dtype, copy=True)
    decode = _BLOCK_DECODERS.get(type_name)
    if decode is None:
        raise UnsupportedModelError(
            f"ggml tensor type {type_name} cannot be dequantized; "
            f"supported: {', '.join(DEQUANTIZABLE_TYPES)}"
        )
    t = GGML_TYPES_BY_NAME[type_name]
    blocks = raw.reshape(-1, t.type_size)
    return decode(blocks).reshape(-1).to(dtype)
