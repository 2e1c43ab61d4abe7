"""bitsandbytes NF4 beside floorline's in `python -m floorline.bench.quant` (the `bnb-nf4` rows).

The weights are the same bf16 tensors the other formats quantize, quantized by bitsandbytes itself
(`quantize_4bit(..., quant_type="nf4", compress_statistics=True, blocksize=64)`), and each call is
`bitsandbytes.matmul_4bit(x, packed.t(), quant_state)`, what its `Linear4bit` runs. Timing uses
the same CUDA-graph replays as floorline's rows when bitsandbytes' kernels capture, else plain
launches between CUDA events (`timing_method` says which). Absent bitsandbytes (CI), `available()`
is False and the rows are skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from floorline.bench.timing import median_event_ms


def available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure (missing, no CUDA library) means "skip"
        return False
    return True


def version() -> str:
    import bitsandbytes

    return getattr(bitsandbytes, "__version__", "?")


class BnbLayer:
    """One bitsandbytes NF4 weight: packed bytes and its QuantState."""

    def __init__(self, w: torch.Tensor):
        import bitsandbytes.functional as bF

        self.packed, self.state = bF.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        self.out_features, self.in_features = w.shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes

        return bitsandbytes.matmul_4bit(x, self.packed.t(), quant_state=self.state)

    def dequantize(self) -> torch.Tensor:
        import bitsandbytes.functional as bF

        return bF.dequantize_4bit(self.packed, self.state).float()

    def nbytes(self) -> int:
        """What a call reads: codes, 8-bit absmax, nested absmax and both code tables."""
        st = self.state
        parts = [self.packed, st.absmax, st.code]
        if st.nested:
            parts += [st.state2.absmax, st.state2.code]
        return sum(t.numel() * t.element_size() for t in parts)


def time_calls(calls: list[Callable[[], object]], graph_timer: Callable) -> tuple[float, str]:
    """Seconds per call: `graph_timer` (CUDA-graph replays) if the calls capture, else events around launches."""
    try:
        return graph_timer(calls), "graph"
    except Exception:  # noqa: BLE001 - a kernel that does not capture: fall back to plain launches
        torch.cuda.synchronize()
    for c in calls * 3:
        c()
    torch.cuda.synchronize()

    def launch_all() -> None:
        for c in calls:
            c()

    return median_event_ms(launch_all, 15) / 1e3 / len(calls), "events"
