"""floorline's on-device 4-bit layouts: codes [N, K] <-> int32 words [N, K / 8] (plain PyTorch).

Both 4-bit formats pack eight codes into an int32 word, "slot-major" within a period P (the int4
group, or the NF4 block of 64): word j (0 <= j < P / 8) of period p holds the codes of columns

    p * P + s * (P / 8) + j        for slots s = 0..7.

So the x elements that meet slot s of consecutive words are consecutive: a thread holding four
words (one 16-byte load) reads, per slot, four contiguous x elements, and the GEMV never does
strided or gathered x loads. Because the period is the group (block), every word lies inside one
group and its scale applies to all eight codes.

Within a word the bit positions are chosen so that the kernels extract each code with one AND/OR:

* int4: the kernel makes four versions of the word, v0 = w, v1 = w << 8, v2 = w >> 8 and
  v3 = rotl(w, 16) (one instruction each), and reads slot 2i at bits 19..22 of v_i and slot 2i + 1
  at bits 15..18. OR-ed into 1.0f (0x3F800000) and 16.0f (0x41800000) those bits make the floats
  1 + q / 16 and 16 + q / 16 exactly, with no int -> float conversion.
* NF4: slot s sits at bits 4s..4s+3 (plain order): the code index for a warp-shuffle lookup is
  `w >> 4s` (the shuffle reads only the low five bits, and the table repeats every 16 lanes).
"""

from __future__ import annotations

import torch

# int4: where slot s's code sits in the word; slot 7 wraps: code bit 0 at bit 31, bits 1..3 at bits 0..2.
INT4_SLOT_SHIFT = (19, 15, 11, 7, 27, 23, 3)  # slots 0..6
NF4_SLOT_SHIFT = tuple(4 * s for s in range(8))


def _slot_major(codes: torch.Tensor, period: int) -> torch.Tensor:
    """[N, K] -> [N, K / P, 8, P / 8] view of the codes by (period, slot, word)."""
    n, k = codes.shape
    if k % period or period % 8:
        raise ValueError(f"4-bit packing: K = {k} must be a multiple of the period {period} (itself of 8)")
    return codes.reshape(n, k // period, 8, period // 8)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_int4(codes: torch.Tensor, group: int) -> torch.Tensor:
    """[N, Kp] codes 0..15 (Kp a multiple of `group`) -> int32 words [N, Kp / 8] (module docstring)."""
    c = _slot_major(codes.to(torch.int64), group)  # [N, G', 8, GW]
    words = torch.zeros(c.shape[0], c.shape[1], c.shape[3], dtype=torch.int64, device=codes.device)
    for s, shift in enumerate(INT4_SLOT_SHIFT):
        words |= c[:, :, s] << shift
    words |= ((c[:, :, 7] & 1) << 31) | (c[:, :, 7] >> 1)
    return _to_int32(words.reshape(codes.shape[0], -1))


def _unpack_slots(qweight: torch.Tensor, period: int, shifts: tuple[int, ...], wrap_last: bool) -> torch.Tensor:
    """int32 words [N, W] -> codes [N, 8 W] (uint8), slot s at bits shifts[s] (module docstring).

    The shifts stay in int32: an arithmetic shift copies the sign bit only above the four bits that the
    mask keeps. `wrap_last`: int4's slot 7, code bit 0 at bit 31 and bits 1..3 at bits 0..2. One output
    buffer, written slot by slot: the CPU unpacks on every call, and the earlier int64 temporaries and
    concatenation took 111 ms for a 4096 x 4096 int4 weight (this: 15)."""
    n, nw = qweight.shape
    w = qweight.reshape(n, nw // (period // 8), 1, period // 8)
    out = torch.empty(n, w.shape[1], 8, period // 8, dtype=torch.uint8, device=qweight.device)
    for s, shift in enumerate(shifts):
        out[:, :, s : s + 1] = (w >> shift) & 15
    if wrap_last:
        out[:, :, 7:8] = ((w >> 31) & 1) | ((w & 7) << 1)
    return out.reshape(n, nw * 8)


def unpack_int4(qweight: torch.Tensor, group: int) -> torch.Tensor:
    """int32 words [N, Kp / 8] -> [N, Kp] codes 0..15 (uint8)."""
    return _unpack_slots(qweight, group, INT4_SLOT_SHIFT, wrap_last=True)


def pack_nf4(codes: torch.Tensor, block: int = 64) -> torch.Tensor:
    """[N, K] codes 0..15 (K a multiple of `block`) -> int32 words [N, K / 8], slot s at bits 4s."""
    c = _slot_major(codes.to(torch.int64), block)
    words = torch.zeros(c.shape[0], c.shape[1], c.shape[3], dtype=torch.int64, device=codes.device)
    for s, shift in enumerate(NF4_SLOT_SHIFT):
        words |= c[:, :, s] << shift
    return _to_int32(words.reshape(codes.shape[0], -1))


def unpack_nf4(qweight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """int32 words [N, K / 8] -> [N, K] codes 0..15 (uint8)."""
    return _unpack_slots(qweight, block, NF4_SLOT_SHIFT, wrap_last=False)


def bytes_to_codes(packed: torch.Tensor) -> torch.Tensor:
    """bitsandbytes / AWQ-style bytes [N, K / 2] (high nibble = even column) -> codes [N, K] (uint8)."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).reshape(packed.shape[0], -1)


def codes_to_bytes(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes -> bytes [N, K / 2], even column in the high nibble (the bitsandbytes order)."""
    c = codes.to(torch.uint8).reshape(codes.shape[0], -1, 2)
    return (c[..., 0] << 4) | c[..., 1]
