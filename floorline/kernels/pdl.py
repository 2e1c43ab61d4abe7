"""Programmatic dependent launch (Hopper and later): a kernel launches while its predecessor drains.

A decode step is ~350 small kernels; each one's launch latency and CTA ramp-up otherwise sits
between two memory-bound kernels. Kernels launched with `launch_pdl` start early and block in
`gdc_wait()` until the previous kernel has finished and its writes are visible; nothing an earlier
kernel wrote is read before it (the GEMV loads only weights first), so the overlap is safe for any
data dependency. Set FLOORLINE_PDL=0 to turn it off.
Kernels that also trigger early launch (`early_launch_args`) let their successor's programs become
resident while they still run; FLOORLINE_PDL_EARLY=0 turns that part off.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    from triton.language.extra.cuda import gdc_wait
except ImportError:  # an old Triton: kernels keep USE_PDL=False and never reach the call
    gdc_wait = None
try:  # lets the next kernel launch before this one ends (kernels that prefetch before gdc_wait use it)
    from triton.language.extra.cuda import gdc_launch_dependents
except ImportError:
    gdc_launch_dependents = None

__all__ = ["gdc_launch_dependents", "gdc_wait", "pdl_enabled", "pdl_args", "early_launch_args", "early_launch_enabled"]


@functools.lru_cache(maxsize=None)
def _supports_pdl(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    if device.type != "cuda" or gdc_wait is None or os.environ.get("FLOORLINE_PDL", "1") == "0":
        return False
    return _supports_pdl(device.index if device.index is not None else torch.cuda.current_device())


def pdl_args(device: torch.device) -> dict:
    """Keyword arguments for a kernel launch: the USE_PDL constexpr and, where on, `launch_pdl`."""
    if pdl_enabled(device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


def early_launch_args(device: torch.device) -> dict:
    """`pdl_args` plus the EARLY_LAUNCH constexpr: the kernel calls `gdc_launch_dependents` first, so
    the next kernel launches once all of this one's programs have started (FLOORLINE_PDL_EARLY=0: off).
    Safe because every kernel launched with PDL reads earlier kernels' results only after its own
    `gdc_wait`, which returns once its predecessor (and so, transitively, every earlier kernel) is done."""
    return dict(pdl_args(device), EARLY_LAUNCH=early_launch_enabled(device))


def early_launch_enabled(device: torch.device) -> bool:
    return (pdl_enabled(device) and gdc_launch_dependents is not None
            and os.environ.get("FLOORLINE_PDL_EARLY", "1") != "0")
