"""QuantMethod: how a Linear creates, loads and applies its weights (bf16 is the plain method)."""

from __future__ import annotations

import torch

from floorline.errors import WeightMismatchError
from floorline.kernels.skinny_gemm import fusion_supported, skinny_gemm, skinny_gemm_silu_mul, skinny_gemm_triton


class QuantMethod:
    """Strategy a `Linear` delegates to; the loader never looks at the quantization type."""

    name = "base"

    def create_weights(self, layer: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        raise NotImplementedError

    def load_shard(self, layer: torch.nn.Module, shard: int, tensor: torch.Tensor) -> None:
        """Copies the checkpoint tensor of output shard `shard` (e.g. q, k or v) into the layer."""
        raise NotImplementedError

    # A pre-quantized checkpoint stores several tensors per projection (`q_proj.qweight`,
    # `q_proj.scales`, ...): the method names them, and decides how each shard is stored.

    def checkpoint_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        """Tensor names (after the projection's name) every shard's checkpoint must hold."""
        return ("weight",)

    def optional_checkpoint_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        """Tensor names a checkpoint may hold besides those (e.g. GPTQ's g_idx)."""
        return ()

    def load_tensor(self, layer: torch.nn.Module, shard: int, name: str, tensor: torch.Tensor) -> None:
        """Loads checkpoint tensor `name` of output shard `shard`."""
        if name != "weight":
            raise WeightMismatchError(f"{layer.prefix}: unexpected checkpoint tensor {name!r}")
        self.load_shard(layer, shard, tensor)

    def finish_loading(self, layer: torch.nn.Module) -> None:
        """Called once every tensor is loaded (or dummy-initialized): completes or checks the layer."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_silu_mul(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`apply` to `silu(gate) * up` for x [M, 2K] = gate | up; a method may fuse the activation."""
        from floorline.kernels.activation import silu_and_mul

        return self.apply(layer, silu_and_mul(x))

    def apply_fused(self, layer: torch.nn.Module, x: torch.Tensor, *, norm=None,
                    residual: torch.Tensor | None = None, silu_mul: bool = False,
                    next_norm_weight: torch.Tensor | None = None):
        """The layer (bias included) with its neighbours fused into one kernel, or None where the
        method cannot: `norm` (a `NormedInput` whose stream is x) normalizes the operand as it loads;
        `residual` returns `(residual + y, ss)` (see `Linear.forward_add`), or `(s, ss, s * next_norm_weight)`
        where the method also applies the next norm's weight (ignoring it is allowed)."""
        return None


class UnquantizedMethod(QuantMethod):
    """Weights kept in the model dtype; `apply` is a plain matmul."""

    name = "none"

    def create_weights(self, layer: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        weight = torch.empty(layer.out_features, layer.in_features, dtype=dtype, device=device)
        layer.weight = torch.nn.Parameter(weight, requires_grad=False)  # [out, in]

    def load_shard(self, layer: torch.nn.Module, shard: int, tensor: torch.Tensor) -> None:
        start, size = layer.shard_range(shard)
        expected = (size, layer.in_features)
        if tuple(tensor.shape) != expected:
            raise WeightMismatchError(
                f"{layer.prefix}: shard {shard} has shape {tuple(tensor.shape)}, expected {expected}"
            )
        layer.weight.data[start : start + size].copy_(tensor)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return skinny_gemm(x, layer.weight)  # Triton GEMV for 1..16 rows on CUDA, else F.linear

    def apply_silu_mul(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return skinny_gemm_silu_mul(x, layer.weight)  # the activation computed in the GEMV's loads

    def apply_fused(self, layer: torch.nn.Module, x: torch.Tensor, *, norm=None,
                    residual: torch.Tensor | None = None, silu_mul: bool = False,
                    next_norm_weight: torch.Tensor | None = None):
        nw, ss, eps = (norm.weight, norm.ss, norm.eps) if norm is not None else (None, None, 0.0)
        prescaled = norm is not None and norm.scaled is not None
        if prescaled:  # the producer applied the norm's weight: only 1/rms is left
            x, nw = norm.scaled, None
        fusions = dict(silu_mul=silu_mul, norm_weight=nw, norm_ss=ss, prescaled=prescaled, residual=residual,
                       out_norm_weight=next_norm_weight if residual is not None else None)
        if not fusion_supported(x, layer.weight, layer.bias, **fusions):
            return None
        return skinny_gemm_triton(x, layer.weight, layer.bias, eps=eps, **fusions)
