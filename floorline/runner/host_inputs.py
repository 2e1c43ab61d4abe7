"""Step inputs built cheaply on the host: persistent block-table rows and one packed, pinned copy.

At 256-512 sequences a step's per-request Python work adds up: building each block-table row
from a list (a `torch.tensor` per row) cost ~2 ms a step, and every input went to the device in
its own pageable copy (a pageable copy can make the host wait for the stream, which undoes async
scheduling). Here each request owns a row of one int32 array that only grows when blocks are
added, a step's table is one fancy-index gather, and all of a step's integer inputs travel in
one pinned buffer with one non-blocking copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class BlockTables:
    """Block ids of the runner's requests, one zero-padded row each, in one growing int32 array."""

    def __init__(self, rows: int = 64, width: int = 64):
        self._table = np.zeros((rows, width), dtype=np.int32)
        self._num_blocks = np.zeros(rows, dtype=np.int64)
        self._row: dict[str, int] = {}
        self._free_rows = list(range(rows - 1, -1, -1))

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._row

    def add(self, request_id: str, block_ids: Sequence[int]) -> None:
        if request_id in self._row:
            raise ValueError(f"{request_id} already has a block-table row")
        if not self._free_rows:
            self._grow(rows=2 * self._table.shape[0])
        self._row[request_id] = self._free_rows.pop()
        self.extend(request_id, block_ids)

    def extend(self, request_id: str, block_ids: Sequence[int]) -> None:
        if not block_ids:
            return
        row = self._row[request_id]
        n = int(self._num_blocks[row])
        m = n + len(block_ids)
        if m > self._table.shape[1]:
            self._grow(width=max(m, 2 * self._table.shape[1]))
        self._table[row, n:m] = block_ids
        self._num_blocks[row] = m

    def remove(self, request_id: str) -> None:
        """Frees the request's row (zeroed: padding entries must point at the reserved block 0)."""
        row = self._row.pop(request_id, None)
        if row is not None:
            self._table[row, : self._num_blocks[row]] = 0
            self._num_blocks[row] = 0
            self._free_rows.append(row)

    def gather(self, request_ids: Sequence[str]) -> np.ndarray:
        """[len(request_ids), widest of them] int32, rows in the given order (a copy)."""
        rows = np.fromiter((self._row[r] for r in request_ids), dtype=np.int64, count=len(request_ids))
        width = max(int(self._num_blocks[rows].max(initial=0)), 1)
        return self._table[rows, :width]

    def _grow(self, rows: int | None = None, width: int | None = None) -> None:
        old_rows, old_width = self._table.shape
        rows, width = rows or old_rows, width or old_width
        table = np.zeros((rows, width), dtype=np.int32)
        table[:old_rows, :old_width] = self._table
        self._table = table
        if rows > old_rows:
            self._num_blocks = np.concatenate([self._num_blocks, np.zeros(rows - old_rows, dtype=np.int64)])
            self._free_rows.extend(range(rows - 1, old_rows - 1, -1))


_ALIGN_WORDS = 4  # 16 bytes of int32


def to_device_packed(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Copies int32/int64 arrays to `device` in one transfer -> tensors of the same dtypes and shapes.

    They are packed into one pinned (on CUDA) int32 buffer, each at a 16-byte offset, and the copy
    does not block the host. The alignment matters beyond the int64 views: Triton specializes a
    kernel on whether each pointer is 16-byte aligned, so a slice at an odd offset would compile
    (seconds, mid-run) another variant of every kernel that reads it.
    """
    offsets, words, pos = [], [], 0
    for a in arrays:
        if a.dtype not in (np.int32, np.int64):
            raise TypeError(f"to_device_packed takes int32/int64 arrays, got {a.dtype}")
        size = a.size * (2 if a.dtype == np.int64 else 1)
        pos = -(-pos // _ALIGN_WORDS) * _ALIGN_WORDS
        offsets.append(pos)
        words.append(size)
        pos += size
    host = torch.empty(max(pos, 1), dtype=torch.int32, pin_memory=device.type == "cuda")
    buf = host.numpy()
    for a, off, size in zip(arrays, offsets, words):
        buf[off : off + size].view(a.dtype)[:] = a.ravel()
    packed = host.to(device, non_blocking=True)
    out = []
    for a, off, size in zip(arrays, offsets, words):
        part = packed[off : off + size]
        if a.dtype == np.int64:
            part = part.view(torch.int64)
        out.append(part.view(a.shape))
    return out
