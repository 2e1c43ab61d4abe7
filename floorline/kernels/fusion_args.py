"""Host-side arguments of the GEMVs' neighbour fusions (`skinny_gemm_triton` documents them): what makes
a fusion's tensors unusable, and the extra buffers a residual epilogue writes. Shared by skinny_gemm and
the quantized launchers (quant_w8, quant_int4, quant_nf4), whose kernels reuse skinny_gemm's epilogue.
"""

from __future__ import annotations

import torch


def vector_problem(name: str, v: torch.Tensor, size: int, x: torch.Tensor) -> str | None:
    """What makes `v` unusable as a contiguous [size] vector beside x, or None."""
    if tuple(v.shape) != (size,) or v.stride(0) != 1 or v.device != x.device:
        return f"{name} must be a contiguous [{size}] tensor on x's device, got {tuple(v.shape)}"
    return None


def ss_problem(norm_ss: torch.Tensor, x: torch.Tensor) -> str | None:
    """What makes `norm_ss` unusable as the [M, parts] fp32 partial sums of x's squares, or None."""
    m = x.shape[0]
    if (norm_ss.dim() != 2 or norm_ss.shape[0] != m or norm_ss.dtype != torch.float32
            or not norm_ss.is_contiguous() or norm_ss.device != x.device):
        return f"norm_ss must be contiguous fp32 [{m}, parts], got {tuple(norm_ss.shape)} {norm_ss.dtype}"
    return None


def layout_problem(x: torch.Tensor, n: int, norm_weight, norm_ss, residual, silu_mul: bool, prescaled: bool = False,
                   out_norm_weight=None) -> str | None:
    """What makes these fusions unusable for operand x [M, K] and N outputs, or None (layouts only)."""
    m, k = x.shape
    if norm_weight is not None or norm_ss is not None or prescaled:
        if silu_mul:
            return "silu_mul and an RMSNorm operand are exclusive"
        if prescaled:
            if norm_weight is not None or norm_ss is None:
                return "a prescaled operand takes norm_ss and no norm_weight (its producer applied the weight)"
        elif norm_weight is None or norm_ss is None:
            return "an RMSNorm operand needs both norm_weight and norm_ss"
        problem = (vector_problem("norm_weight", norm_weight, k, x) if norm_weight is not None else None) \
            or ss_problem(norm_ss, x)
        if problem:
            return problem
    if residual is not None and (tuple(residual.shape) != (m, n) or residual.dtype != x.dtype
                                 or not residual.is_contiguous() or residual.device != x.device):
        return f"residual must be contiguous {x.dtype} [{m}, {n}], got {tuple(residual.shape)} {residual.dtype}"
    if out_norm_weight is not None:
        if residual is None:
            return "out_norm_weight scales the residual sum: it needs residual"
        return vector_problem("out_norm_weight", out_norm_weight, n, x)
    return None


def ptr_or(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """t, or a dummy pointer for a kernel argument its constexprs leave unread."""
    return t if t is not None else dummy


def fused_outputs(out: torch.Tensor, tiles: int, residual, out_norm_weight) -> tuple[torch.Tensor, torch.Tensor]:
    """(ss, scaled) buffers of a launch with the residual fusions ([M, tiles] fp32 and out's shape), else
    `out` as dummies."""
    m = out.shape[0]
    ss = torch.empty((m, tiles), dtype=torch.float32, device=out.device) if residual is not None else out
    return ss, (torch.empty_like(out) if out_norm_weight is not None else out)


def fused_result(out: torch.Tensor, ss: torch.Tensor, scaled: torch.Tensor, residual, out_norm_weight):
    """What a GEMV with the residual fusions returns: out, `(s, ss)`, or `(s, ss, s * out_norm_weight)`."""
    if residual is None:
        return out
    return (out, ss) if out_norm_weight is None else (out, ss, scaled)
