"""Zeroed int32 counters for "the last program to finish does the reduction" kernels.

A kernel takes a ticket per output tile with an atomic add; the program that draws the last
ticket reduces the partials and resets the counter to zero, so the buffer is ready for the next
launch or CUDA-graph replay. Buffers are allocated outside graph capture and then reused.
"""

from __future__ import annotations

import torch

_BUFFERS: dict[tuple[str, torch.device], torch.Tensor] = {}


def tickets(device: torch.device, count: int, owner: str) -> torch.Tensor:
    """`owner`'s zeroed counters on `device`, at least `count` of them."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _BUFFERS.get((owner, device))
    if buf is None or buf.numel() < count:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{owner}: counters must be allocated before CUDA-graph capture; run the model once "
                "eagerly first (DecodeGraphs.capture warms up)"
            )
        buf = torch.zeros(max(count, 1 << 14), dtype=torch.int32, device=device)
        _BUFFERS[(owner, device)] = buf
    return buf
