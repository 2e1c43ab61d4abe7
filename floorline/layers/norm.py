"""RMSNorm, and the residual stream between the sublayers of a pre-norm block.

On the decode path the residual add and the norm live inside the GEMVs: a projection that ends a
sublayer adds the residual in its epilogue (and writes partial sums of squares), and the projection
that starts the next sublayer normalizes its operand as it loads it. `Stream` and `NormedInput`
carry the values between them; wherever a GEMV cannot fuse, the fused add+norm kernel runs instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floorline.kernels.rms_norm import rms_norm


@dataclass
class Stream:
    """The residual stream after a sublayer: residual + that sublayer's output.

    Either already summed (`value`, with `ss` [n, parts] the fp32 partial sums of value^2 that the
    producing GEMV wrote), or still pending as `delta` + `residual` (None after the embedding).
    """

    value: torch.Tensor | None = None  # [n, hidden]
    ss: torch.Tensor | None = None  # [n, parts] fp32
    delta: torch.Tensor | None = None  # [n, hidden]
    residual: torch.Tensor | None = None  # [n, hidden]
    scaled: torch.Tensor | None = None  # [n, hidden] value * scaled_by, where the producer also wrote it
    scaled_by: torch.Tensor | None = None  # the norm weight `scaled` carries


@dataclass
class NormedInput:
    """`rms_norm(stream) * weight`, not yet computed: the consuming Linear may fuse it into its loads."""

    stream: torch.Tensor  # [n, hidden]
    ss: torch.Tensor  # [n, parts] fp32 partial sums of stream^2
    weight: torch.Tensor  # [hidden]
    eps: float
    scaled: torch.Tensor | None = None  # stream * weight, where the producer wrote it: only 1/rms is left

    @property
    def shape(self) -> torch.Size:
        return self.stream.shape

    def materialize(self) -> torch.Tensor:
        return rms_norm(self.stream, self.weight, self.eps)


class RMSNorm(torch.nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without residual: norm(x). With it: (norm(x + residual), x + residual)."""
        return rms_norm(x, self.weight, self.eps, residual)

    def norm_stream(self, stream: Stream) -> tuple[torch.Tensor | NormedInput, torch.Tensor]:
        """(the normed stream, the stream itself: the next sublayer's residual).

        A stream summed by a GEMV comes back as a `NormedInput` for the next GEMV to fuse.
        """
        if stream.value is not None:
            scaled = stream.scaled if stream.scaled_by is self.weight else None
            return NormedInput(stream.value, stream.ss, self.weight, self.eps, scaled), stream.value
        if stream.residual is None:
            return self.forward(stream.delta), stream.delta
        return self.forward(stream.delta, stream.residual)
