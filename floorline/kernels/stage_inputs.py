"""A decode step's inputs into a CUDA graph's static buffers, in one launch.

A graph replay reads fixed buffers, so each step copied its token ids, positions, slots, lengths and
block table into them (five copies), filled the padding rows (three fills) and, before that, put the
previous step's sampled tokens into the token ids (a gather and a scatter): up to ten small
operations, ~2 us of a step's timeline each. Program `row` of this kernel does all of it for its row.

Rows `n..b-1` of a bucket of `b` are padding: slot -1 (nothing written to the cache), length 1 and
block 0 (they attend to one reserved position). Columns of the static block table past this step's
width keep what earlier steps left there; the attention reads only the blocks its lengths cover.
"""

from __future__ import annotations

import torch

from floorline.kernels.triton_compat import tl, triton

BLOCK_W = 256  # block-table entries a loop iteration


@triton.jit
def _stage_kernel(ids_ptr, pos_ptr, slot_ptr, len_ptr, table_ptr, fill_ptr, last_ptr,
                  s_ids_ptr, s_pos_ptr, s_slot_ptr, s_len_ptr, s_table_ptr,
                  n, width, stride_table, stride_s_table, HAS_FILL: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0)
    if row < n:
        tok = tl.load(ids_ptr + row)
        if HAS_FILL:  # the previous step's token, still only on the device
            src = tl.load(fill_ptr + row)
            if src >= 0:
                tok = tl.load(last_ptr + src)
        tl.store(s_ids_ptr + row, tok)
        tl.store(s_pos_ptr + row, tl.load(pos_ptr + row))
        tl.store(s_slot_ptr + row, tl.load(slot_ptr + row))
        tl.store(s_len_ptr + row, tl.load(len_ptr + row))
        for w0 in range(0, width, BLOCK_W):
            w = w0 + tl.arange(0, BLOCK_W)
            blocks = tl.load(table_ptr + row * stride_table + w, mask=w < width)
            tl.store(s_table_ptr + row * stride_s_table + w, blocks, mask=w < width)
    else:
        tl.store(s_slot_ptr + row, -1)
        tl.store(s_len_ptr + row, 1)
        tl.store(s_table_ptr + row * stride_s_table, 0)


def stage_decode_inputs(
    dst: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    input_ids: torch.Tensor,  # [n] int64
    positions: torch.Tensor,  # [n] int64
    slot_mapping: torch.Tensor,  # [n] int64
    seq_lens: torch.Tensor,  # [n] int32
    block_tables: torch.Tensor,  # [n, width] int32
    bucket: int,
    fill_from: torch.Tensor | None = None,  # [n] int64: row of `last_sampled` for row i's token, or -1
    last_sampled: torch.Tensor | None = None,
) -> None:
    """Writes rows 0..bucket-1 of the static (input_ids, positions, slot_mapping, seq_lens,
    block_tables) `dst`: this step's n rows, then padding rows. One launch (Triton)."""
    n, width = block_tables.shape
    s_ids, s_pos, s_slot, s_len, s_table = dst
    if not n <= bucket <= s_ids.shape[0] or width > s_table.shape[1]:
        raise ValueError(f"stage_decode_inputs: {n} rows of width {width} do not fit a bucket of {bucket} "
                         f"in static buffers of {s_ids.shape[0]} x {s_table.shape[1]}")
    if (fill_from is None) != (last_sampled is None):
        raise ValueError("stage_decode_inputs: fill_from and last_sampled go together")
    if bucket == 0:
        return
    has_fill = fill_from is not None
    _stage_kernel[(bucket,)](
        input_ids, positions, slot_mapping, seq_lens, block_tables,
        fill_from if has_fill else input_ids, last_sampled if has_fill else input_ids,
        s_ids, s_pos, s_slot, s_len, s_table,
        n, width, block_tables.stride(0), s_table.stride(0), HAS_FILL=has_fill, BLOCK_W=BLOCK_W, num_warps=1,
    )  # fmt: skip
