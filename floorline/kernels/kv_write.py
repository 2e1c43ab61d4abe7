"""Writes the new tokens' K and V into the paged cache, optionally fused with rotary on q and k.

Cache layout (see runner/forward_context.py): `[num_blocks, block_size, num_kv_heads, head_dim]`;
token t goes to slot `slot_mapping[t]` = block * block_size + offset. Slot -1 means "skip": padding
tokens of a CUDA graph batch carry it, and must not overwrite real cache entries.
"""

from __future__ import annotations

import torch
from floorline.kernels.triton_compat import tl, triton

from floorline.kernels.pdl import early_launch_args, gdc_launch_dependents, gdc_wait

from floorline.kernels.rotary import (
    load_cos_sin,
    rotate_heads,
    check_rotary_args,
    check_launch_layout,
    cos_sin_ref,
    rotary_grid_block,
    rotate_ref_,
)


@triton.jit
def _kv_write_kernel(
    q_ptr,  # [n, hq, d] (only when ROTARY)
    k_ptr,  # [n, hk, d], last-dim stride 1
    v_ptr,  # [n, hk, d], last-dim stride 1
    pos_ptr,  # [n] (only when ROTARY)
    cache_ptr,  # [max_positions, d] (only when ROTARY)
    kc_ptr,  # [num_blocks, block_size, hk, d], last-dim stride 1
    vc_ptr,  # same shape as kc
    slot_ptr,  # [n] int64
    num_q_heads,
    num_k_heads,
    half,
    block_size,
    q_stride0,
    q_stride1,
    k_stride0,
    k_stride1,
    v_stride0,
    v_stride1,
    kc_stride0,
    kc_stride1,
    kc_stride2,
    vc_stride0,
    vc_stride1,
    vc_stride2,
    ROTARY: tl.constexpr,
    BH: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    USE_PDL: tl.constexpr = False,
    EARLY_LAUNCH: tl.constexpr = False,
):
    if EARLY_LAUNCH:
        gdc_launch_dependents()  # the next kernel may launch; it waits for this grid's writes
    if USE_PDL:
        gdc_wait()  # wait for the previous kernel's writes (launched early with PDL)
    tok = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    cols = tl.arange(0, BLOCK_HALF)
    if ROTARY:
        cos, sin = load_cos_sin(pos_ptr, cache_ptr, tok, 2 * half, cols, half)
        rotate_heads(q_ptr, tok, q_stride0, q_stride1, heads, num_q_heads, cols, half, cos, sin)
        k1, k2, mask = rotate_heads(k_ptr, tok, k_stride0, k_stride1, heads, num_k_heads, cols, half, cos, sin)
    else:
        k_offs = tok * k_stride0 + heads[:, None] * k_stride1 + cols[None, :]
        mask = (heads[:, None] < num_k_heads) & (cols[None, :] < half)
        k1 = tl.load(k_ptr + k_offs, mask=mask, other=0.0)
        k2 = tl.load(k_ptr + k_offs + half, mask=mask, other=0.0)
    slot = tl.load(slot_ptr + tok)
    if slot >= 0:
        block = slot // block_size
        offset = slot % block_size
        v_offs = tok * v_stride0 + heads[:, None] * v_stride1 + cols[None, :]
        v1 = tl.load(v_ptr + v_offs, mask=mask, other=0.0)
        v2 = tl.load(v_ptr + v_offs + half, mask=mask, other=0.0)
        kc_offs = block * kc_stride0 + offset * kc_stride1 + heads[:, None] * kc_stride2 + cols[None, :]
        vc_offs = block * vc_stride0 + offset * vc_stride1 + heads[:, None] * vc_stride2 + cols[None, :]
        kc_ty = kc_ptr.dtype.element_ty
        tl.store(kc_ptr + kc_offs, k1.to(kc_ty), mask=mask)
        tl.store(kc_ptr + kc_offs + half, k2.to(kc_ty), mask=mask)
        tl.store(vc_ptr + vc_offs, v1.to(vc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + vc_offs + half, v2.to(vc_ptr.dtype.element_ty), mask=mask)


def _check_cache_args(
    k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Shape/dtype rules shared by the kernel and the reference."""
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"kv_write: k and v must both be [n, kv_heads, head_dim], got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    n, hk, d = k.shape
    if key_cache.dim() != 4 or key_cache.shape[2:] != (hk, d) or value_cache.shape != key_cache.shape:
        raise ValueError(
            f"kv_write: key_cache and value_cache must both be [num_blocks, block_size, {hk}, {d}], "
            f"got {tuple(key_cache.shape)}, {tuple(value_cache.shape)}"
        )
    if slot_mapping.shape != (n,) or slot_mapping.dtype != torch.int64:
        raise ValueError(
            f"kv_write: slot_mapping must be [{n}] int64, got {tuple(slot_mapping.shape)} {slot_mapping.dtype}"
        )
    if v.dtype != k.dtype or key_cache.dtype != k.dtype or value_cache.dtype != k.dtype:
        raise ValueError(
            f"kv_write: k, v and both caches must share one dtype, got {k.dtype}, {v.dtype}, "
            f"{key_cache.dtype}, {value_cache.dtype}"
        )
    if d % 2:
        raise ValueError(f"kv_write: head_dim must be even, got {d}")


def _write_ref(
    k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_size = key_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = k[keep]
    value_cache[blocks, offsets] = v[keep]


def cache_write_ref(
    k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Plain-PyTorch: `key_cache[slot] = k`, `value_cache[slot] = v` for every slot >= 0."""
    _check_cache_args(k, v, key_cache, value_cache, slot_mapping)
    _write_ref(k, v, key_cache, value_cache, slot_mapping)


def rotary_and_cache_write_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Plain-PyTorch: rotary on q, k in place, then the cache write of the rotated k and v."""
    check_rotary_args(q, k, positions, cos_sin_cache)
    _check_cache_args(k, v, key_cache, value_cache, slot_mapping)
    cos, sin = cos_sin_ref(positions, cos_sin_cache)
    rotate_ref_(q, cos, sin)
    rotate_ref_(k, cos, sin)
    _write_ref(k, v, key_cache, value_cache, slot_mapping)


def _launch(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None,
    cos_sin_cache: torch.Tensor | None,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    tensors = {"k": k, "v": v, "key_cache": key_cache, "value_cache": value_cache, "slot_mapping": slot_mapping}
    rotary = q is not None
    if rotary:
        tensors.update(q=q, positions=positions, cos_sin_cache=cos_sin_cache)
    check_launch_layout("kv_write", tensors, contiguous=("cos_sin_cache",))
    n, hk, d = k.shape
    if n == 0:
        return
    num_q_heads = q.shape[1] if rotary else 0
    bh, block_half, num_head_blocks = rotary_grid_block(max(num_q_heads, hk), d)
    # Unused pointer arguments get k: the kernel never reads them when ROTARY is False.
    q_, pos_, cache_ = (q, positions, cos_sin_cache) if rotary else (k, k, k)
    _kv_write_kernel[(n, num_head_blocks)](
        q_, k, v, pos_, cache_, key_cache, value_cache, slot_mapping,
        num_q_heads, hk, d // 2, key_cache.shape[1],
        q_.stride(0) if rotary else 0, q_.stride(1) if rotary else 0,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        ROTARY=rotary, BH=bh, BLOCK_HALF=block_half, num_warps=4, **early_launch_args(k.device),
    )


def cache_write_triton(
    k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Triton cache write (one launch); same contract as `cache_write_ref`."""
    _check_cache_args(k, v, key_cache, value_cache, slot_mapping)
    _launch(None, k, v, None, None, key_cache, value_cache, slot_mapping)


def rotary_and_cache_write_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Triton rotary on q, k (in place) and cache write of k, v, in one launch."""
    check_rotary_args(q, k, positions, cos_sin_cache)
    _check_cache_args(k, v, key_cache, value_cache, slot_mapping)
    _launch(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping)


def cache_write(
    k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Writes k, v [n, kv_heads, d] to their slots (slot -1: skipped). Triton on CUDA, reference elsewhere."""
    if k.is_cuda:
        cache_write_triton(k, v, key_cache, value_cache, slot_mapping)
    else:
        cache_write_ref(k, v, key_cache, value_cache, slot_mapping)


def rotary_and_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Rotary on q [n, hq, d] and k [n, hk, d] in place, then rotated k and v [n, hk, d] to their slots.

    One launch on CUDA, the reference elsewhere. Slot -1 skips the write (rotary still applies).
    """
    if q.is_cuda:
        rotary_and_cache_write_triton(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping)
    else:
        rotary_and_cache_write_ref(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping)
