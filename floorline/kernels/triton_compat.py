"""`triton` and `tl` for the kernel modules, or stand-ins when Triton is not installed.

The CPU engine runs every kernel's PyTorch reference and never launches a Triton kernel, so a
CPU-only install (or a platform with no Triton wheels) must still import the kernel modules:
without Triton, `@triton.jit` leaves the function as it is and anything else says what to install.
"""

from __future__ import annotations

from typing import Any

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only install: the references run, the kernels never launch
    HAS_TRITON = False

    class _Missing:
        """Stands in for the `triton` / `triton.language` modules."""

        def __init__(self, name: str):
            self._name = name

        def jit(self, fn: Any = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

        def __getattr__(self, attr: str) -> Any:
            raise RuntimeError(f"{self._name}.{attr} needs Triton: pip install triton (GPU kernels)")

    triton = _Missing("triton")  # type: ignore[assignment]
    tl = _Missing("triton.language")  # type: ignore[assignment]

__all__ = ["HAS_TRITON", "triton", "tl"]
