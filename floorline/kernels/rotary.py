"""Rotary position embedding (NeoX / HF `rotate_half` style) and its cos/sin cache.

The cache is `[max_positions, head_dim]`: row `p` holds `cos(p * inv_freq)` in its first half and
`sin(p * inv_freq)` in its second. A head vector `x = [x1, x2]` (halves) at position p becomes
`[x1 * cos - x2 * sin, x2 * cos + x1 * sin]`, computed in float32 and rounded once to x.dtype.
"""

from __future__ import annotations

import math

import torch
from floorline.kernels.triton_compat import tl, triton

from floorline.config import RopeScaling

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK_ELEMENTS = 2048  # elements of one half-head tile a program handles: bounds registers


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """Inverse frequencies `[head_dim // 2]` float32, with `linear` or `llama3` scaling as HF computes them."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"rotary: head_dim must be a positive even number, got {head_dim}")
    # Same op order as HF (int arange -> float32 -> divide; base ** in float32) so values match bit for bit.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    rope_type = "default" if scaling is None else scaling.rope_type
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling.factor
    if rope_type == "llama3":
        return _llama3_scale(inv_freq, scaling)
    raise ValueError(f"rotary: unsupported rope_type {rope_type!r}; supported: default, linear, llama3")


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1 banded scaling: long wavelengths slowed by `factor`, short kept, a linear blend between."""
    old_len = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    long_band = wavelen > old_len / s.low_freq_factor
    short_band = wavelen < old_len / s.high_freq_factor
    scaled = torch.where(long_band, inv_freq / s.factor, inv_freq)
    # Blend weight goes 0 -> 1 from the long-wavelength edge to the short one.
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    return torch.where(~long_band & ~short_band, blended, scaled)


def rotary_cos_sin_cache(
    head_dim: int,
    max_positions: int,
    theta: float,
    scaling: RopeScaling | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`[max_positions, head_dim]`: cos(p * inv_freq) then sin(p * inv_freq) for each position p.

    Built in float32 on the CPU (so CPU and GPU engines share the same table), then moved/cast.
    """
    if max_positions <= 0:
        raise ValueError(f"rotary: max_positions must be positive, got {max_positions}")
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    return cache.to(device=device, dtype=dtype)


@triton.jit
def rotate_heads(
    x_ptr,
    tok,
    x_stride0,
    x_stride1,
    heads,  # [BH] head indices this program covers
    num_heads,
    cols,  # [BLOCK_HALF] column indices within a half
    half,
    cos,  # [1, BLOCK_HALF] float32
    sin,
):
    """Rotates `x[tok, heads, :]` in place; returns the rotated halves (float32) and their mask."""
    offs = tok * x_stride0 + heads[:, None] * x_stride1 + cols[None, :]
    mask = (heads[:, None] < num_heads) & (cols[None, :] < half)
    x1 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + offs + half, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    tl.store(x_ptr + offs, o1.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(x_ptr + offs + half, o2.to(x_ptr.dtype.element_ty), mask=mask)
    return o1, o2, mask


@triton.jit
def load_cos_sin(pos_ptr, cache_ptr, tok, cache_stride0, cols, half):
    """cos and sin rows `[1, BLOCK_HALF]` (float32) for the position of token `tok`."""
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    row = cache_ptr + pos * cache_stride0
    cmask = cols < half
    cos = tl.load(row + cols, mask=cmask, other=0.0).to(tl.float32)
    sin = tl.load(row + half + cols, mask=cmask, other=0.0).to(tl.float32)
    return cos[None, :], sin[None, :]


@triton.jit
def _apply_rotary_kernel(
    q_ptr,  # [n, hq, d], last-dim stride 1
    k_ptr,  # [n, hk, d], last-dim stride 1
    pos_ptr,  # [n]
    cache_ptr,  # [max_positions, d] contiguous
    num_q_heads,
    num_k_heads,
    half,
    q_stride0,
    q_stride1,
    k_stride0,
    k_stride1,
    BH: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    cols = tl.arange(0, BLOCK_HALF)
    cos, sin = load_cos_sin(pos_ptr, cache_ptr, tok, 2 * half, cols, half)
    rotate_heads(q_ptr, tok, q_stride0, q_stride1, heads, num_q_heads, cols, half, cos, sin)
    rotate_heads(k_ptr, tok, k_stride0, k_stride1, heads, num_k_heads, cols, half, cos, sin)


def check_rotary_args(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Shape/dtype rules shared by the rotary kernels and references."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"rotary: q and k must be [n, heads, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}")
    n, d = q.shape[0], q.shape[2]
    if k.shape[0] != n or k.shape[2] != d:
        raise ValueError(f"rotary: k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} in n/head_dim")
    if positions.shape != (n,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"rotary: positions must be [{n}] int32/int64, got {tuple(positions.shape)} {positions.dtype}"
        )
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != d or d % 2:
        raise ValueError(
            f"rotary: cos_sin_cache must be [max_positions, {d}] with an even head_dim, "
            f"got {tuple(cos_sin_cache.shape)}"
        )
    if q.dtype not in _FLOAT_DTYPES or k.dtype != q.dtype or cos_sin_cache.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"rotary: q, k must share a float dtype and the cache be float, got {q.dtype}, {k.dtype}, "
            f"{cos_sin_cache.dtype}"
        )


def check_launch_layout(op: str, tensors: dict[str, torch.Tensor], contiguous: tuple[str, ...] = ()) -> None:
    """Launcher-only rules: one device, unit last-dim strides, the named tensors fully contiguous."""
    devices = {name: str(t.device) for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"{op}: tensors on different devices: {devices}")
    for name, t in tensors.items():
        if t.stride(-1) != 1:
            raise ValueError(f"{op}: {name} needs a contiguous last dim (stride 1)")
        if name in contiguous and not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")


def rotary_grid_block(num_heads: int, head_dim: int) -> tuple[int, int, int]:
    """(heads per program, padded half width, programs along the head axis)."""
    block_half = triton.next_power_of_2(head_dim // 2)
    bh = max(1, min(triton.next_power_of_2(num_heads), _BLOCK_ELEMENTS // block_half))
    return bh, block_half, triton.cdiv(num_heads, bh)


def rotate_ref_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotates x [n, heads, d] in place; cos, sin: [n, 1, d/2] float32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    x.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))


def cos_sin_ref(positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin `[n, 1, d/2]` float32 for each token's position."""
    cos, sin = cos_sin_cache.index_select(0, positions.long()).float().chunk(2, dim=-1)
    return cos[:, None, :], sin[:, None, :]


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Plain-PyTorch rotary on q [n, hq, d] and k [n, hk, d], in place."""
    check_rotary_args(q, k, positions, cos_sin_cache)
    cos, sin = cos_sin_ref(positions, cos_sin_cache)
    rotate_ref_(q, cos, sin)
    rotate_ref_(k, cos, sin)


def apply_rotary_triton(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    """Triton rotary on q and k in place (one launch); q, k may be strided views of a qkv buffer."""
    check_rotary_args(q, k, positions, cos_sin_cache)
    tensors = {"q": q, "k": k, "positions": positions, "cos_sin_cache": cos_sin_cache}
    check_launch_layout("rotary", tensors, contiguous=("cos_sin_cache",))
    n, d = q.shape[0], q.shape[2]
    if n == 0:
        return
    bh, block_half, num_head_blocks = rotary_grid_block(max(q.shape[1], k.shape[1]), d)
    _apply_rotary_kernel[(n, num_head_blocks)](
        q, k, positions, cos_sin_cache, q.shape[1], k.shape[1], d // 2,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        BH=bh, BLOCK_HALF=block_half, num_warps=4,
    )


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Rotates q [n, hq, d] and k [n, hk, d] in place by `positions` [n] (rotate_half style).

    Triton on CUDA, reference elsewhere. Positions must be < cos_sin_cache.shape[0] (not checked on GPU).
    """
    if q.is_cuda:
        apply_rotary_triton(q, k, positions, cos_sin_cache)
    else:
        apply_rotary_ref(q, k, positions, cos_sin_cache)
