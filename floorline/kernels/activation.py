"""SwiGLU activation of a merged gate_up projection: `silu(gate) * up`.

Rounding follows the unfused model (`act_fn(gate_proj(x)) * up_proj(x)` in the activation dtype):
silu is computed in float32 and rounded to x.dtype, the product in float32 and rounded again.
"""

from __future__ import annotations

import torch
from floorline.kernels.triton_compat import tl, triton

from floorline.kernels.pdl import gdc_wait, pdl_args

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [n, 2 * i], last-dim stride 1; gate is the first half
    out_ptr,  # [n, i] contiguous
    i,
    x_stride0,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_wait()  # wait for the previous kernel's writes (launched early with PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < i
    gate = tl.load(x_ptr + row * x_stride0 + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride0 + i + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate * tl.sigmoid(gate)).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * i + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] % 2 != 0:
        raise ValueError(f"silu_and_mul: x must be [n, 2 * intermediate], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"silu_and_mul: x must be float16/bfloat16/float32, got {x.dtype}")


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch `silu(x[:, :i]) * x[:, i:]`; [n, 2i] -> [n, i]."""
    _check(x)
    gate, up = x.float().chunk(2, dim=-1)
    act = torch.nn.functional.silu(gate).to(x.dtype).float()
    return (act * up).to(x.dtype)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """Triton `silu(gate) * up`; [n, 2i] -> [n, i] (contiguous)."""
    _check(x)
    if x.stride(-1) != 1:
        raise ValueError("silu_and_mul: x needs a contiguous last dim (stride 1)")
    n, i = x.shape[0], x.shape[1] // 2
    out = torch.empty((n, i), dtype=x.dtype, device=x.device)
    if n * i == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(i))
    _silu_and_mul_kernel[(n, triton.cdiv(i, block))](x, out, i, x.stride(0), BLOCK=block, num_warps=4, **pdl_args(x.device))
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """`silu(x[:, :i]) * x[:, i:]` for x [n, 2i] (gate first); Triton on CUDA, reference elsewhere."""
    if x.is_cuda:
        return silu_and_mul_triton(x)
    return silu_and_mul_ref(x)
