"""KV cache write (plain and fused with rotary): Triton (interpreter on CPU) vs reference vs a per-token loop."""

import pytest
import torch

from floorline.kernels.kv_write import (
    cache_write,
    cache_write_ref,
    cache_write_triton,
    rotary_and_cache_write,
    rotary_and_cache_write_ref,
    rotary_and_cache_write_triton,
)
from floorline.kernels.rotary import apply_rotary_ref, rotary_cos_sin_cache

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (inputs differ between runs); reported when a comparison fails."""
    return torch.seed()


def _assert_close(actual, expected, tol, seed):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{m}\n(seed {seed})")


def _slots(n: int, num_blocks: int, block_size: int, num_padding: int = 0, device: str = "cpu") -> torch.Tensor:
    """n distinct random slots; the last `num_padding` are -1 (CUDA-graph padding tokens)."""
    slots = torch.randperm(num_blocks * block_size)[:n]
    if num_padding:
        slots[-num_padding:] = -1
    return slots.to(device)


def _inputs(n, hq, hk, d, dtype, num_blocks=6, block_size=16, device="cpu"):
    """Strided q, k, v views of one qkv buffer, and random (not zero) caches so stray writes show."""
    qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=dtype, device=device)
    q = qkv[:, : hq * d].view(n, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(n, hk, d)
    v = qkv[:, (hq + hk) * d :].view(n, hk, d)
    key_cache = torch.randn(num_blocks, block_size, hk, d, dtype=dtype, device=device)
    value_cache = torch.randn_like(key_cache)
    return qkv, q, k, v, key_cache, value_cache


def _loop_write(k, v, key_cache, value_cache, slot_mapping):
    """Independent formula: one token at a time, block and offset from the slot."""
    block_size = key_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            key_cache[slot // block_size, slot % block_size] = k[t]
            value_cache[slot // block_size, slot % block_size] = v[t]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,num_padding", [(1, 0), (3, 1), (17, 0), (17, 5)])
@pytest.mark.parametrize("hk,d", [(2, 64), (1, 128), (8, 128), (3, 80)])
def test_cache_write_triton_matches_reference(dtype, n, num_padding, hk, d, seed):
    _, _, k, v, kc, vc = _inputs(n, 1, hk, d, dtype)
    slots = _slots(n, 6, 16, num_padding)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    cache_write_triton(k, v, kc, vc, slots)
    cache_write_ref(k, v, kc_ref, vc_ref, slots)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref), f"seed {seed}"


def test_cache_write_reference_matches_loop(seed):
    _, _, k, v, kc, vc = _inputs(9, 1, 2, 64, torch.float32)
    slots = _slots(9, 6, 16, num_padding=2)
    kc_loop, vc_loop = kc.clone(), vc.clone()
    cache_write_ref(k, v, kc, vc, slots)
    _loop_write(k, v, kc_loop, vc_loop, slots)
    assert torch.equal(kc, kc_loop) and torch.equal(vc, vc_loop), f"seed {seed}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,num_padding", [(1, 0), (3, 0), (17, 4)])
@pytest.mark.parametrize("hq,hk,d", [(4, 2, 64), (8, 8, 128), (6, 1, 128), (3, 3, 80)])
def test_fused_triton_matches_reference(dtype, n, num_padding, hq, hk, d, seed):
    qkv, q, k, v, kc, vc = _inputs(n, hq, hk, d, dtype)
    qkv_ref, kc_ref, vc_ref = qkv.clone(), kc.clone(), vc.clone()
    q_ref = qkv_ref[:, : hq * d].view(n, hq, d)
    k_ref = qkv_ref[:, hq * d : (hq + hk) * d].view(n, hk, d)
    v_ref = qkv_ref[:, (hq + hk) * d :].view(n, hk, d)
    cos_sin = rotary_cos_sin_cache(d, 1024, 10000.0)
    positions = torch.randint(0, 1024, (n,))
    slots = _slots(n, 6, 16, num_padding)
    rotary_and_cache_write_triton(q, k, v, positions, cos_sin, kc, vc, slots)
    rotary_and_cache_write_ref(q_ref, k_ref, v_ref, positions, cos_sin, kc_ref, vc_ref, slots)
    _assert_close(qkv, qkv_ref, TOL[dtype], seed)  # q, k rotated alike; v untouched
    _assert_close(kc, kc_ref, TOL[dtype], seed)
    assert torch.equal(vc, vc_ref), f"seed {seed}"


def test_fused_reference_is_rotary_then_loop_write(seed):
    _, q, k, v, kc, vc = _inputs(7, 4, 2, 64, torch.float32)
    q2, k2, kc2, vc2 = q.clone(), k.clone(), kc.clone(), vc.clone()
    cos_sin = rotary_cos_sin_cache(64, 256, 10000.0)
    positions, slots = torch.randint(0, 256, (7,)), _slots(7, 6, 16, num_padding=1)
    rotary_and_cache_write_ref(q, k, v, positions, cos_sin, kc, vc, slots)
    apply_rotary_ref(q2, k2, positions, cos_sin)
    _loop_write(k2, v, kc2, vc2, slots)
    assert torch.equal(q, q2) and torch.equal(k, k2), f"seed {seed}"
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2), f"seed {seed}"


def test_padding_slots_write_nothing():
    _, q, k, v, kc, vc = _inputs(4, 2, 2, 64, torch.float32)
    kc0, vc0 = kc.clone(), vc.clone()
    slots = torch.full((4,), -1, dtype=torch.int64)
    cos_sin = rotary_cos_sin_cache(64, 16, 10000.0)
    rotary_and_cache_write_triton(q, k, v, torch.arange(4), cos_sin, kc, vc, slots)
    cache_write_triton(k, v, kc, vc, slots)
    assert torch.equal(kc, kc0) and torch.equal(vc, vc0)


def test_triton_writes_into_strided_cache(seed):
    # One allocation holding K and V per block: each cache is a non-contiguous view of it.
    _, q, k, v, _, _ = _inputs(5, 2, 2, 64, torch.float32)
    kv = torch.randn(6, 2, 16, 2, 64)
    kv_ref = kv.clone()
    cos_sin = rotary_cos_sin_cache(64, 64, 10000.0)
    positions, slots = torch.randint(0, 64, (5,)), _slots(5, 6, 16)
    q_ref, k_ref, v_ref = q.clone(), k.clone(), v.clone()
    rotary_and_cache_write_triton(q, k, v, positions, cos_sin, kv[:, 0], kv[:, 1], slots)
    rotary_and_cache_write_ref(q_ref, k_ref, v_ref, positions, cos_sin, kv_ref[:, 0], kv_ref[:, 1], slots)
    _assert_close(kv, kv_ref, TOL[torch.float32], seed)


def test_public_entries_run_reference_on_cpu():
    _, q, k, v, kc, vc = _inputs(3, 2, 1, 64, torch.float32)
    cos_sin, positions, slots = rotary_cos_sin_cache(64, 8, 1e4), torch.arange(3), _slots(3, 6, 16)
    kc2, vc2, q2, k2 = kc.clone(), vc.clone(), q.clone(), k.clone()
    rotary_and_cache_write(q, k, v, positions, cos_sin, kc, vc, slots)
    rotary_and_cache_write_ref(q2, k2, v, positions, cos_sin, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(q, q2)
    cache_write(k, v, kc, vc, slots)
    cache_write_ref(k2, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2)


def test_bad_args_raise():
    _, _, k, v, kc, vc = _inputs(3, 1, 2, 64, torch.float32)
    slots = _slots(3, 6, 16)
    for fn in (cache_write_ref, cache_write_triton):
        with pytest.raises(ValueError, match="int64"):
            fn(k, v, kc, vc, slots.int())
        with pytest.raises(ValueError, match="key_cache"):
            fn(k, v, kc[..., :32], vc[..., :32], slots)
        with pytest.raises(ValueError, match="dtype"):
            fn(k, v, kc.half(), vc.half(), slots)
        with pytest.raises(ValueError, match="k and v"):
            fn(k, v[:, :1], kc, vc, slots)
    with pytest.raises(ValueError, match="last dim"):
        cache_write_triton(k, v, kc.transpose(2, 3).contiguous().transpose(2, 3), vc, slots)


@pytest.mark.gpu
@pytest.mark.parametrize("n,num_padding", [(1, 0), (2, 1), (7, 0), (16, 3)])
@pytest.mark.parametrize("hq,hk", [(32, 8), (32, 32)])
def test_gpu_bf16_matches_reference(n, num_padding, hq, hk, seed):
    qkv, q, k, v, kc, vc = _inputs(n, hq, hk, 128, torch.bfloat16, num_blocks=64, block_size=16, device="cuda")
    qkv_ref, kc_ref, vc_ref = qkv.clone(), kc.clone(), vc.clone()
    q_ref = qkv_ref[:, : hq * 128].view(n, hq, 128)
    k_ref = qkv_ref[:, hq * 128 : (hq + hk) * 128].view(n, hk, 128)
    v_ref = qkv_ref[:, (hq + hk) * 128 :].view(n, hk, 128)
    cos_sin = rotary_cos_sin_cache(128, 8192, 500000.0, device="cuda")
    positions = torch.randint(0, 8192, (n,), device="cuda")
    slots = _slots(n, 64, 16, num_padding, device="cuda")
    rotary_and_cache_write(q, k, v, positions, cos_sin, kc, vc, slots)
    rotary_and_cache_write_ref(q_ref, k_ref, v_ref, positions, cos_sin, kc_ref, vc_ref, slots)
    tol = dict(rtol=1.6e-2, atol=1.6e-2)
    _assert_close(qkv, qkv_ref, tol, seed)
    _assert_close(kc, kc_ref, tol, seed)
    assert torch.equal(vc, vc_ref), f"seed {seed}"
    kc2, vc2 = kc.clone(), vc.clone()
    cache_write(k_ref, v_ref, kc, vc, slots)
    cache_write_ref(k_ref, v_ref, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2), f"seed {seed}"
