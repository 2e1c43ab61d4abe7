"""NF4 block scales in the Triton kernels: absmax per 64-weight block, plain or double-quantized
(`quant_nf4`'s docstring has the layout). Shared by the NF4 kernels of `quant_nf4` and `quant_pairs`."""

from __future__ import annotations

from floorline.kernels.quant_common import _nc_load
from floorline.kernels.triton_compat import tl, triton


@triton.jit
def _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED: tl.constexpr,
                  MASKED: tl.constexpr, ASM: tl.constexpr = False):
    """absmax of blocks kb [NB] of rows rn_w [BN] -> [BN, NB] fp32; ASM: unmasked loads as inline PTX
    (`_nc_load`: in the layout their consumer wants, with no shared-memory conversion)."""
    offs = rn_w.to(tl.int64)[:, None] * KB + kb[None, :]
    if MASKED:
        a = tl.load(a_ptr + offs, mask=kb_mask[None, :], other=0)
        if NESTED:
            nested = tl.load(nabs_ptr + (base[:, None] + kb[None, :]) // 256, mask=kb_mask[None, :], other=0.0)
    else:
        a = _nc_load(a_ptr + offs, ASM)
        if NESTED:
            nested = _nc_load(nabs_ptr + (base[:, None] + kb[None, :]) // 256, ASM)
    if NESTED:
        a = _nc_load(nmap_ptr + mbase[:, None] + a.to(tl.int32), ASM) * nested + offset[:, None]
    return a


@triton.jit
def _row_state(base_ptr, off_ptr, map_ptr, rn_w, NESTED: tl.constexpr, ASM: tl.constexpr = False):
    """Per-row nested state (row_base, row_offset, row_map) of rows rn_w (ASM: `_nc_load`'s PTX loads)."""
    base = rn_w
    mbase = rn_w
    offset = rn_w.to(tl.float32)
    if NESTED:
        base = _nc_load(base_ptr + rn_w, ASM)
        mbase = _nc_load(map_ptr + rn_w, ASM)
        offset = _nc_load(off_ptr + rn_w, ASM)
    return base, offset, mbase
