"""NF4 block scales in the Triton kernels: absmax per 64-weight block, plain or double-quantized
(`quant_nf4`'s docstring has the layout). Shared by the NF4 kernels of `quant_nf4` and `quant_pairs`."""

from __future__ import annotations

from floorline.kernels.triton_compat import tl, triton


@triton.jit
def _block_absmax(a_ptr, nabs_ptr, nmap_ptr, base, offset, mbase, rn_w, kb, KB, kb_mask, NESTED: tl.constexpr,
                  MASKED: tl.constexpr):
    """absmax of blocks kb [NB] of rows rn_w [BN] -> [BN, NB] fp32."""
    offs = rn_w.to(tl.int64)[:, None] * KB + kb[None, :]
    if MASKED:
        a = tl.load(a_ptr + offs, mask=kb_mask[None, :], other=0)
    else:
        a = tl.load(a_ptr + offs)
    if NESTED:
        nested = tl.load(nabs_ptr + (base[:, None] + kb[None, :]) // 256, mask=kb_mask[None, :], other=0.0)
        a = tl.load(nmap_ptr + mbase[:, None] + a.to(tl.int32)) * nested + offset[:, None]
    return a


@triton.jit
def _row_state(base_ptr, off_ptr, map_ptr, rn_w, NESTED: tl.constexpr):
    """Per-row nested state (row_base, row_offset, row_map), loaded once per program."""
    base = rn_w
    mbase = rn_w
    offset = rn_w.to(tl.float32)
    if NESTED:
        base = tl.load(base_ptr + rn_w)
        mbase = tl.load(map_ptr + rn_w)
        offset = tl.load(off_ptr + rn_w)
    return base, offset, mbase
