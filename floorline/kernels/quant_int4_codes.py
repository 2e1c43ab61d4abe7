"""int4 codes and group parameters in Triton registers, shared by `quant_int4`'s kernels.

* `_int4_slot` turns one of a word's eight 4-bit slots into an exact fp32 (1 + q / 16 or 16 + q / 16),
  `_int4_slot_weights` into the exact weight (q - z) * s;
* scales and zero points come either from the [groups, N] fp16 tensors (`_load_group_params`, which the
  dot paths' row tiles read coalesced) or from `int4_row_params`' row-major copy (`_row_param_words`,
  `_unpack_row_params`), which the persistent M = 1 kernels read.
"""

from __future__ import annotations

import torch

from floorline.kernels.quant_common import _nc_load
from floorline.kernels.triton_compat import tl, triton

MAGIC = (0x3F800000, 0x41800000)  # bits of 1.0f and 16.0f (`_int4_slot`)


@triton.jit
def _int4_slot(w, S: tl.constexpr, one, sixteen):
    """Slot S of uint32 words -> fp32 1 + q / 16 (even S) or 16 + q / 16 (odd S), exactly.

    `one` / `sixteen` are the bits of 1.0f / 16.0f, passed at run time: as registers they let the
    mask-and-or compile to one LOP3 (an instruction has a single immediate slot).
    """
    if S // 2 == 0:
        v = w
    elif S // 2 == 1:
        v = w << 8
    elif S // 2 == 2:
        v = w >> 8
    else:
        v = (w << 16) | (w >> 16)  # a rotate: one funnel shift
    if S % 2 == 0:
        bits = (v & 0x00780000) | one
    else:
        bits = (v & 0x00078000) | sixteen
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _load_group_params(s_ptr, z_ptr, offs, group_ok, MASKED: tl.constexpr):
    """fp32 scales and zeros at offs = g * N + row, in the caller's layout ([BN, NB] or [NB, BN]).

    MASKED: entries where `group_ok` (broadcast to offs) is false read as 0. Callers derive it from the
    1-D groups, as they do their word load's mask, so both are one compare per group.
    """
    if MASKED:
        s = tl.load(s_ptr + offs, mask=group_ok, other=0.0)
        z = tl.load(z_ptr + offs, mask=group_ok, other=0.0)
    else:
        s = tl.load(s_ptr + offs)
        z = tl.load(z_ptr + offs)
    return s.to(tl.float32), z.to(tl.float32)


@triton.jit
def _row_param_words(sz_ptr, rows, g, num_groups, group_ok, MASKED: tl.constexpr, EMULATE: tl.constexpr):
    """Words [NB, BN] of the row-major copy of scales and zeros (`int4_row_params`) for groups g [NB] of rows
    [BN]; on the GPU unmasked ones come as inline PTX (`_nc_load`), in the layout of the tile's sums."""
    offs = rows[None, :] * num_groups + g[:, None]
    if MASKED:
        return tl.load(sz_ptr + offs, mask=group_ok, other=0)
    return _nc_load(sz_ptr + offs, not EMULATE)


@triton.jit
def _unpack_row_params(w):
    """`_row_param_words`' words -> fp32 (scales, zeros): the fp16 scale in the low half, the zero in the high."""
    w = w.to(tl.uint32, bitcast=True)
    s = (w & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
    z = (w >> 16).to(tl.uint16).to(tl.float16, bitcast=True)
    return s.to(tl.float32), z.to(tl.float32)


@triton.jit
def _int4_slot_weights(w, s, z, S: tl.constexpr, one, sixteen):
    """Slot S of words [BN, NB, GW] with the groups' scales / zeros [BN, NB] -> exact (q - z) * s, fp32.

    16 s f - (16 + z) s (or - (256 + z) s for odd slots) is exact in fp32: both terms are short products.
    """
    f = _int4_slot(w, S, one, sixteen)
    if S % 2 == 0:
        b = -(16.0 + z) * s
    else:
        b = -(256.0 + z) * s
    return f * (16.0 * s)[:, :, None] + b[:, :, None]


def int4_row_params(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The persistent M = 1 kernels' copy of scales and zeros [Kp / G, N] fp16: int32 [N, Kp / G], one word a row and
    group with the scale's bits in its low half and the zero's in its high half. Row-major, so a warp's
    lanes (spread along K) read consecutive words; the [Kp / G, N] layout, which the dot paths' row tiles
    read coalesced, cost these kernels a 32-byte sector per 2-byte load."""
    lo = scales.t().contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return lo | (zeros.t().contiguous().view(torch.int16).to(torch.int32) << 16)


def _check_row_params(row_params: torch.Tensor | None, scales: torch.Tensor) -> None:
    want = (scales.shape[1], scales.shape[0])
    if row_params is not None and (row_params.dtype != torch.int32 or tuple(row_params.shape) != want
                                   or not row_params.is_contiguous()):
        raise ValueError(f"quant_int4: row_params must be contiguous int32 {list(want)} (int4_row_params), got "
                         f"{tuple(row_params.shape)} {row_params.dtype}")
