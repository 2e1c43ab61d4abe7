"""RMSNorm, optionally fused with the residual add of a pre-norm block.

Rounding follows an unfused Hugging Face model step by step, so the fused kernel and the model it
replaces agree to the last bit wherever the hardware allows:
`s = (x + residual)` rounded to x.dtype; `y = (s * rsqrt(mean(s^2) + eps))` in float32, rounded to
x.dtype, then `y * weight` in float32 rounded to x.dtype (HF's `weight * hidden.to(input_dtype)`).
"""

from __future__ import annotations

import torch
from floorline.kernels.triton_compat import tl, triton

from floorline.kernels.pdl import early_launch_args, gdc_launch_dependents, gdc_wait

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [n, m, d] with last-dim stride 1
    res_ptr,  # same shape as x, or a dummy when HAS_RESIDUAL is False
    w_ptr,  # [d]
    out_ptr,  # [n, m, d] contiguous
    sum_ptr,  # [n, m, d] contiguous, x + residual (only when HAS_RESIDUAL)
    m,
    d,
    x_stride0,
    x_stride1,
    res_stride0,
    res_stride1,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr = False,
    EARLY_LAUNCH: tl.constexpr = False,
):
    if EARLY_LAUNCH:
        # the next GEMV's programs become resident and fetch their first weights while this one runs
        # (H200, 8B decode at 2k: int4 2.382 -> 2.354 ms, NF4 2.954 -> 2.922, int8 / fp8 -0.01 / -0.02)
        gdc_launch_dependents()
    if USE_PDL:
        gdc_wait()  # wait for the previous kernel's writes (launched early with PDL)
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2**31 on big batches
    i = row // m
    j = row % m
    cols = tl.arange(0, BLOCK)
    mask = cols < d
    x = tl.load(x_ptr + i * x_stride0 + j * x_stride1 + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + i * res_stride0 + j * res_stride1 + cols, mask=mask, other=0.0)
        # Round the sum to the activation dtype first: the unfused model keeps it in that dtype.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * d + cols, x, mask=mask)
    xf = x.to(tl.float32)
    mean_sq = tl.sum(xf * xf, axis=0) / d
    normed = (xf * tl.rsqrt(mean_sq + eps)).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * d + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    """Shape and dtype rules shared by the kernel and the reference."""
    if x.dim() not in (2, 3):
        raise ValueError(f"rms_norm: x must be [n, hidden] or [n, heads, head_dim], got shape {tuple(x.shape)}")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm: weight must be [{x.shape[-1]}] (x's last dim), got shape {tuple(weight.shape)}"
        )
    if x.dtype not in _FLOAT_DTYPES or weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"rms_norm: x and weight must be float16/bfloat16/float32, got {x.dtype}, {weight.dtype}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(
                f"rms_norm: residual shape {tuple(residual.shape)} must equal x shape {tuple(x.shape)}"
            )
        if residual.dtype != x.dtype:
            raise ValueError(f"rms_norm: residual dtype {residual.dtype} must equal x dtype {x.dtype}")


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch RMSNorm over the last dim; with `residual`, returns `(norm(x + residual), x + residual)`."""
    _check(x, weight, residual)
    s = x if residual is None else x + residual  # rounded to x.dtype, as the unfused model does
    sf = s.float()
    normed = (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    out = (normed.float() * weight.float()).to(x.dtype)
    return out if residual is None else (out, s)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton RMSNorm (one program per row); same contract as `rms_norm_ref`. Outputs are contiguous."""
    _check(x, weight, residual)
    tensors = [x, weight] + ([residual] if residual is not None else [])
    if any(t.device != x.device for t in tensors):
        raise ValueError(f"rms_norm: tensors on different devices: {[str(t.device) for t in tensors]}")
    if x.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("rms_norm: x and residual need a contiguous last dim (stride 1)")
    if not weight.is_contiguous():
        raise ValueError("rms_norm: weight must be contiguous")
    x3 = x if x.dim() == 3 else x.unsqueeze(1)
    n, m, d = x3.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n * m == 0:
        return out if residual is None else (out, torch.empty_like(out))
    if residual is not None:
        r3 = residual if residual.dim() == 3 else residual.unsqueeze(1)
        s = torch.empty_like(out)
        res_strides = (r3.stride(0), r3.stride(1))
    else:
        r3, s, res_strides = x3, out, (0, 0)  # dummies: HAS_RESIDUAL=False never touches them
    block = triton.next_power_of_2(d)
    num_warps = min(max(block // 512, 1), 8)
    _rms_norm_kernel[(n * m,)](
        x3, r3, weight, out, s, m, d, x3.stride(0), x3.stride(1), *res_strides, float(eps),
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps, **early_launch_args(x.device),
    )
    return out if residual is None else (out, s)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x (`[n, hidden]` or `[n, heads, head_dim]`, over the last dim) times `weight`.

    Without `residual` returns the normed tensor; with it, `s = x + residual` is computed first and
    `(norm(s) * weight, s)` is returned (the fused add + norm of a pre-norm block).
    Runs the Triton kernel on CUDA and the reference elsewhere.
    """
    if x.is_cuda:
        return rms_norm_triton(x, weight, eps, residual)
    return rms_norm_ref(x, weight, eps, residual)
