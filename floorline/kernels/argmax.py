"""Row argmax in one launch: the greedy sampler's pick from [rows, vocab] logits.

torch reduces a row in one thread block (27 us for a 128256-wide row on an H200), and the two-pass
form the sampler used before (`chunked_argmax`: max over pieces, argmax of the maxima, gather, add)
is five small kernels, ~17 us of a decode step's timeline. Here program (row, chunk) takes its
chunk's first maximum, and the last program of the row to finish (a ticket, `tickets`) compares the
chunks' partials: one launch.

Same answer as `torch.argmax(dim=-1)`: the first index of the maximum; NaN counts as larger than
anything (the first NaN wins), and a row of -inf gives 0.
"""

from __future__ import annotations

import torch

from floorline.kernels.tickets import tickets
from floorline.kernels.triton_compat import tl, triton

BLOCK = 2048  # elements a program (128256-wide rows: 63 programs a row)


@triton.jit
def _first_max(vals, idx, nan, BIG: tl.constexpr):
    """(value, index, has NaN) of the first maximum of `vals`; a NaN's index beats every value."""
    any_nan = tl.max(nan.to(tl.int32), 0) > 0
    first_nan = tl.min(tl.where(nan, idx, BIG), 0)
    key = tl.where(nan, float("-inf"), vals)
    m = tl.max(key, 0)
    first_max = tl.min(tl.where(key == m, idx, BIG), 0)
    return m, tl.where(any_nan, first_nan, first_max), any_nan


@triton.jit
def _argmax_kernel(x_ptr, out_ptr, part_val_ptr, part_idx_ptr, cnt_ptr, n_cols, stride_x, num_chunks,
                   BLOCK: tl.constexpr, CHUNKS_PAD: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_cols
    x = tl.load(x_ptr + row.to(tl.int64) * stride_x + offs, mask=ok, other=float("-inf")).to(tl.float32)
    m, i, nan = _first_max(x, offs, x != x, 2**31 - 1)
    part = row * num_chunks + chunk
    tl.store(part_val_ptr + part, m)
    tl.store(part_idx_ptr + part, tl.where(nan, -1 - i, i))  # a NaN chunk: its index, negated
    tl.debug_barrier()  # the partials issued before the (release) ticket
    ticket = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel", scope="gpu")
    if ticket == num_chunks - 1:
        c = tl.arange(0, CHUNKS_PAD)
        c_ok = c < num_chunks
        vals = tl.load(part_val_ptr + row * num_chunks + c, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        coded = tl.load(part_idx_ptr + row * num_chunks + c, mask=c_ok, other=2**31 - 1, cache_modifier=".cg")
        nan_chunks = coded < 0
        # chunks cover increasing columns, so the smallest index among equal maxima is the first one
        _, best, _ = _first_max(vals, tl.where(nan_chunks, -1 - coded, coded), nan_chunks, 2**31 - 1)
        tl.store(out_ptr + row, best.to(tl.int64))
        tl.store(cnt_ptr + row, 0)  # ready for the next launch


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(dim=-1)` of a [rows, cols] float tensor (last dim contiguous) -> [rows] int64, one launch."""
    if x.dim() != 2 or x.stride(-1) != 1 or not x.is_floating_point():
        raise ValueError(f"argmax_rows takes a [rows, cols] float tensor, contiguous in cols; got "
                         f"{tuple(x.shape)} {x.dtype} with strides {x.stride()}")
    rows, cols = x.shape
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0 or cols == 0:
        if cols == 0 and rows:
            raise ValueError("argmax_rows: a row with no columns has no argmax")
        return out
    chunks = triton.cdiv(cols, BLOCK)
    part_val = torch.empty(rows * chunks, dtype=torch.float32, device=x.device)
    part_idx = torch.empty(rows * chunks, dtype=torch.int32, device=x.device)
    counters = tickets(x.device, rows, "argmax_rows")
    _argmax_kernel[(rows, chunks)](x, out, part_val, part_idx, counters, cols, x.stride(0), chunks,
                                   BLOCK=BLOCK, CHUNKS_PAD=triton.next_power_of_2(chunks), num_warps=8)
    return out
