"""Linear layers whose output may merge several checkpoint tensors (q|k|v, gate|up)."""

from __future__ import annotations

import torch

from floorline.errors import WeightMismatchError
from floorline.layers.norm import NormedInput, Stream
from floorline.quant.base import QuantMethod, UnquantizedMethod
from floorline.quant.context import method_for_linear


class Linear(torch.nn.Module):
    """y = x W^T (+ b), with W stored by a QuantMethod.

    `output_sizes` lists the row blocks of W in order: [out] for a plain projection,
    [q, k, v] for a merged QKV projection. Each block loads from its own checkpoint tensor.
    """

    def __init__(
        self,
        in_features: int,
        output_sizes: list[int],
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        quant_method: QuantMethod | None = None,
        prefix: str = "",
    ):
        super().__init__()
        self.in_features = in_features
        self.output_sizes = list(output_sizes)
        self.out_features = sum(output_sizes)
        self.prefix = prefix
        # without an explicit method, the quantization the loader installed decides (quant/context.py)
        self.quant_method = quant_method or method_for_linear(prefix) or UnquantizedMethod()
        self.quant_method.create_weights(self, dtype, torch.device(device))
        if bias:
            b = torch.empty(self.out_features, dtype=dtype, device=device)
            self.bias = torch.nn.Parameter(b, requires_grad=False)  # [out]
        else:
            self.bias = None

    def shard_range(self, shard: int) -> tuple[int, int]:
        return sum(self.output_sizes[:shard]), self.output_sizes[shard]

    def load(self, shard: int, kind: str, tensor: torch.Tensor) -> None:
        """Loads one checkpoint tensor: `kind` is "bias", or one of `weight_names()` (e.g. "weight")."""
        if kind != "bias":
            self.quant_method.load_tensor(self, shard, kind, tensor)
            return
        if self.bias is None:
            raise WeightMismatchError(f"{self.prefix}: checkpoint has a bias this model does not expect")
        start, size = self.shard_range(shard)
        if tuple(tensor.shape) != (size,):
            raise WeightMismatchError(
                f"{self.prefix}: bias shard {shard} has shape {tuple(tensor.shape)}, expected {(size,)}"
            )
        self.bias.data[start : start + size].copy_(tensor)

    def weight_names(self) -> tuple[str, ...]:
        """Checkpoint tensor names (after the projection name) each shard needs: ("weight",) unquantized."""
        return self.quant_method.checkpoint_names(self)

    def optional_weight_names(self) -> tuple[str, ...]:
        return self.quant_method.optional_checkpoint_names(self)

    def finish_loading(self) -> None:
        """Called by the loader once all weights are in."""
        self.quant_method.finish_loading(self)

    def forward(self, x: torch.Tensor | NormedInput) -> torch.Tensor:
        if isinstance(x, NormedInput):  # normalize in the GEMV's operand loads where the method can
            fused = self.quant_method.apply_fused(self, x.stream, norm=x)
            if fused is not None:
                return fused
            x = x.materialize()
        y = self.quant_method.apply(self, x)  # [num_tokens, out]
        if self.bias is not None:
            y = y + self.bias
        return y

    def forward_silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """The layer applied to `silu(gate) * up` of x [num_tokens, 2 * in] (fused where possible)."""
        y = self.quant_method.apply_silu_mul(self, x)
        if self.bias is not None:
            y = y + self.bias
        return y

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor, silu_mul: bool = False,
                    next_norm_weight: torch.Tensor | None = None) -> Stream:
        """The residual stream after this sublayer: `residual + layer(x)` (x as in `forward_silu_mul`
        when `silu_mul`). Summed in the GEMV's epilogue where the method can, else left pending for
        the next norm's fused add+norm kernel. `next_norm_weight`: the RMSNorm that reads the stream next,
        whose weight a method may apply in the same epilogue (`Stream.scaled`)."""
        fused = self.quant_method.apply_fused(self, x, residual=residual, silu_mul=silu_mul,
                                              next_norm_weight=next_norm_weight)
        if fused is not None:
            value, ss, *scaled = fused
            if scaled:
                return Stream(value=value, ss=ss, scaled=scaled[0], scaled_by=next_norm_weight)
            return Stream(value=value, ss=ss)
        y = self.forward_silu_mul(x) if silu_mul else self.forward(x)
        return Stream(delta=y, residual=residual)
