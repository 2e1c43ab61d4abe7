"""Unpacking AWQ and GPTQ 4-bit checkpoints into plain codes, zeros and scales.

Both pack eight 4-bit values into an int32, nibble i at bits 4i..4i+3:

* AWQ (GEMM kernels): `qweight` int32 [K, N / 8] packs along N in the order (0, 2, 4, 6, 1, 3, 5, 7):
  nibble i holds column 8j + AWQ_ORDER[i]. `qzeros` int32 [K / G, N / 8] is packed the same way;
  `scales` fp16 [K / G, N]. W[n, k] = (q - z) * s.
* GPTQ: `qweight` int32 [K / 8, N] packs along K in order (nibble i = row 8r + i); `qzeros` int32
  [K / G, N / 8] along N in order; `scales` fp16 [K / G, N]; `g_idx` int32 [K] maps rows to groups.
  The original ("gptq", v1) format stores zero - 1, so the zero point is the stored value + 1;
  "gptq_v2" stores the zero itself.
"""

from __future__ import annotations

import torch

from floorline.errors import UnsupportedModelError, WeightMismatchError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SEQUENTIAL = tuple(range(8))


def unpack_int32_columns(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """int32 [R, C / 8] -> int32 [R, C] codes, nibble i of word j landing in column 8j + order[i]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise WeightMismatchError(f"expected a 2-D int32 packed tensor, got {tuple(packed.shape)} {packed.dtype}")
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed[:, :, None] >> shifts) & 15  # [R, C / 8, 8]: nibble i
    out = torch.empty_like(nibbles)
    out[:, :, list(order)] = nibbles  # column order[i] <- nibble i
    return out.reshape(packed.shape[0], -1)


def unpack_int32_rows(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R / 8, C] (GPTQ qweight) -> int32 [R, C], nibble i of word r landing in row 8r + i."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise WeightMismatchError(f"expected a 2-D int32 packed tensor, got {tuple(packed.shape)} {packed.dtype}")
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed[:, None, :] >> shifts[None, :, None]) & 15  # [R / 8, 8, C]
    return nibbles.reshape(-1, packed.shape[1])


def _check(qweight_kn: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, what: str) -> None:
    k, n = qweight_kn.shape
    if zeros.shape != scales.shape or scales.shape[1] != n or k % scales.shape[0]:
        raise WeightMismatchError(f"{what}: qweight [{k}, {n}] (unpacked), qzeros {tuple(zeros.shape)} and "
                                  f"scales {tuple(scales.shape)} do not describe one group-wise weight")


def awq_unpack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
               what: str = "awq") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (codes uint8 [N, K], zeros fp32 [K / G, N], scales fp32 [K / G, N])."""
    q = unpack_int32_columns(qweight, AWQ_ORDER)  # [K, N]
    z = unpack_int32_columns(qzeros, AWQ_ORDER)  # [K / G, N]
    _check(q, z, scales, what)
    return q.t().to(torch.uint8), z.float(), scales.float()


def gptq_unpack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, zero_offset: int,
                what: str = "gptq") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (codes uint8 [N, K], zeros fp32 [K / G, N], scales fp32 [K / G, N])."""
    q = unpack_int32_rows(qweight)  # [K, N]
    z = unpack_int32_columns(qzeros, SEQUENTIAL) + zero_offset
    _check(q, z, scales, what)
    return q.t().to(torch.uint8), z.float(), scales.float()


def check_trivial_g_idx(g_idx: torch.Tensor, group_size: int, what: str) -> None:
    """desc_act=False checkpoints map row k to group k // G; anything else is act-order."""
    k = g_idx.numel()
    want = torch.arange(k, device=g_idx.device) // group_size
    if not torch.equal(g_idx.reshape(-1).long(), want):
        raise UnsupportedModelError(
            f"{what}: GPTQ with act-order (desc_act=true, a permuted g_idx) is not supported; "
            "supported: GPTQ 4-bit with desc_act=false")


def dequantize_unpacked(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N, K] fp32 weight from unpacked codes [N, K] and per-group zeros/scales [K / G, N]."""
    group = codes.shape[1] // scales.shape[0]
    z = zeros.t().repeat_interleave(group, dim=1)
    s = scales.t().repeat_interleave(group, dim=1)
    return (codes.float() - z) * s
