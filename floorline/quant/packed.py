"""PackedMethod: the common half of every quantized weight format.

A merged Linear (q|k|v, gate|up) loads one checkpoint shard at a time. A shard of a pre-quantized
checkpoint arrives as several tensors (AWQ: qweight, qzeros, scales) in any order, so the method
holds a shard's parts until it has them all, then converts them into its own layout in one go.
Quantize-on-load methods take the single part "weight".

`apply` picks the path by row count: the Triton GEMV for 1..DOT_MAX_M (64) rows on CUDA (decode; past
16 rows its dot paths), else the weight dequantized (Triton into a shared buffer on CUDA, the
PyTorch reference on CPU) and a regular matmul (prefill).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.errors import WeightMismatchError
from floorline.kernels import skinny_gemm
from floorline.kernels.quant_common import dequant_buffer
from floorline.kernels.quant_configs import DOT_MAX_M
from floorline.quant.base import QuantMethod


def gemv_wanted(x: torch.Tensor) -> bool:
    """Whether `apply` takes the Triton GEMV for x: 1..DOT_MAX_M rows on CUDA, in every packed format (FP8
    W8A8 too: its weight-only dot path beat `_scaled_mm` at 32 rows). Tests patch this to run the kernels
    in the interpreter."""
    return x.is_cuda and 1 <= x.shape[0] <= DOT_MAX_M


def check_shape(t: torch.Tensor, want: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != tuple(want):
        raise WeightMismatchError(f"{what} has shape {tuple(t.shape)}, expected {tuple(want)}")


def copy_part(dst: torch.Tensor, src: torch.Tensor, axis: int, start: int, size: int, what: str) -> None:
    """Copies `src` into rows [start, start + size) of `dst` along `axis`, checking its shape."""
    want = list(dst.shape)
    want[axis] = size
    check_shape(src, tuple(want), what)
    dst.narrow(axis, start, size).copy_(src)


def add_param(layer: torch.nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device) -> None:
    """A frozen parameter (what the checkpoint fills; dummy loading randomizes it)."""
    setattr(layer, name, torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device=device), requires_grad=False))


class PackedMethod(QuantMethod):
    """Base of the quantized methods: per-shard parts, and the decode / prefill dispatch."""

    name = "packed"

    def __init__(self) -> None:
        self._pending: dict[int, dict[str, torch.Tensor]] = {}  # shard -> parts received so far

    # ---- what the checkpoint holds -------------------------------------------------------------

    def parts(self) -> tuple[str, ...]:
        """Tensor names every shard needs (suffixes after the projection name)."""
        return ("weight",)

    def optional_parts(self) -> tuple[str, ...]:
        return ()

    def checkpoint_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        return self.parts()

    def optional_checkpoint_names(self, layer: torch.nn.Module) -> tuple[str, ...]:
        return self.optional_parts()

    # ---- loading -------------------------------------------------------------------------------

    def load_shard(self, layer: torch.nn.Module, shard: int, tensor: torch.Tensor) -> None:
        self.load_tensor(layer, shard, "weight", tensor)

    def load_tensor(self, layer: torch.nn.Module, shard: int, name: str, tensor: torch.Tensor) -> None:
        if name in self.optional_parts():
            self.load_optional(layer, shard, name, tensor)
            return
        parts = self.parts()
        if name not in parts:
            raise WeightMismatchError(f"{layer.prefix}: unexpected tensor {name!r} for {self.name} weights; "
                                      f"expected {', '.join(parts)}")
        pending = self._pending.setdefault(shard, {})
        if name in pending:
            raise WeightMismatchError(f"{layer.prefix}: shard {shard} has tensor {name!r} twice")
        pending[name] = tensor
        if len(pending) == len(parts):
            del self._pending[shard]
            start, size = layer.shard_range(shard)
            self.load_parts(layer, shard, start, size, pending)

    def load_parts(self, layer: torch.nn.Module, shard: int, start: int, size: int,
                   parts: dict[str, torch.Tensor]) -> None:
        """Stores output rows [start, start + size) from a shard's complete set of parts."""
        raise NotImplementedError

    def load_optional(self, layer: torch.nn.Module, shard: int, name: str, tensor: torch.Tensor) -> None:
        raise NotImplementedError

    def finish_loading(self, layer: torch.nn.Module) -> None:
        if self._pending:
            shard, got = next(iter(self._pending.items()))
            missing = sorted(set(self.parts()) - set(got))
            raise WeightMismatchError(f"{layer.prefix}: shard {shard} lacks {', '.join(missing)}")

    def export_shard(self, layer: torch.nn.Module, shard: int) -> dict[str, torch.Tensor]:
        """The tensors (by suffix) that a pre-quantized checkpoint stores for this shard."""
        raise NotImplementedError

    # ---- compute -------------------------------------------------------------------------------

    def apply(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._forward(layer, x, silu_mul=False)

    def apply_silu_mul(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._forward(layer, x, silu_mul=True)

    def _forward(self, layer: torch.nn.Module, x: torch.Tensor, silu_mul: bool) -> torch.Tensor:
        if x.dim() == 2 and gemv_wanted(x):
            return self.gemv(layer, x, silu_mul)
        if silu_mul:
            from floorline.kernels.activation import silu_and_mul

            x = silu_and_mul(x)
        return self.matmul(layer, x)

    def gemv(self, layer: torch.nn.Module, x: torch.Tensor, silu_mul: bool, **fusions):
        """The Triton GEMV: x [M <= DOT_MAX_M, K] (or [M, 2K] gate | up) -> [M, N]. `fusions`: the
        launcher's neighbour keywords (eps, norm_ss, residual, out_norm_weight), where `fusion_wanted`
        said yes; they change what it returns (`fusion_args.fused_result`)."""
        raise NotImplementedError

    def apply_fused(self, layer, x, *, norm=None, residual=None, silu_mul=False, next_norm_weight=None):
        """One decode row: the residual add (and the next norm's weight) in the GEMV's epilogue, 1/rms after
        its K loop, so no add + norm kernel runs between sublayers. The norm's weight is applied by the
        producer: multiplied into the consumer's x loads it cost as much as the norm kernel (H200, 8-bit
        formats, quant_h200_notes thirteenth session)."""
        if not skinny_gemm.FUSE_NEIGHBOURS or layer.bias is not None or not gemv_wanted(x) or x.shape[0] != 1:
            return None
        fusions = {}
        if residual is not None:
            fusions["residual"] = residual
            if next_norm_weight is not None:
                fusions["out_norm_weight"] = next_norm_weight
        if norm is not None:
            if norm.scaled is None:  # the producer did not apply the weight: the norm kernel does
                return None
            x = norm.scaled
            fusions["norm_ss"] = norm.ss
        gate = x[:, : layer.in_features] if silu_mul else x  # the operand's layout, before the activation
        if not self.fusion_wanted(layer, gate, fusions):
            return None
        return self.gemv(layer, x, silu_mul, eps=norm.eps if norm is not None else 0.0, **fusions)

    def fusion_wanted(self, layer: torch.nn.Module, operand: torch.Tensor, fusions: dict) -> bool:
        """Whether the format's GEMV runs `fusions` (the keywords norm_ss, residual, out_norm_weight of its
        launcher) for this operand (the gate half with the SiLU) with its default config."""
        return False

    def matmul(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Prefill / CPU: the dequantized weight times x."""
        return F.linear(x, self.dequantize(layer, x.dtype, x.device))

    def dequantize(self, layer: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[N, K] weight in `dtype`: Triton into the shared buffer on CUDA, the reference elsewhere."""
        if device.type == "cuda":
            n, k = layer.out_features, layer.in_features
            out = dequant_buffer(device, dtype, n * k)[: n * k].view(n, k)
            return self.dequantize_triton(layer, out)
        return self.dequantize_ref(layer).to(dtype)

    def dequantize_ref(self, layer: torch.nn.Module) -> torch.Tensor:
        """[N, K] fp32 weight, plain PyTorch."""
        raise NotImplementedError

    def dequantize_triton(self, layer: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
