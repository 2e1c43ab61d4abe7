"""Rotary: cos/sin cache vs transformers, Triton (interpreter on CPU) vs reference, reference vs rotate_half."""

import pytest
import torch

from floorline.config import RopeScaling
from floorline.kernels.rotary import (
    apply_rotary,
    apply_rotary_ref,
    apply_rotary_triton,
    rope_inv_freq,
    rotary_cos_sin_cache,
)

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}
LLAMA31 = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192)


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (inputs differ between runs); reported when a comparison fails."""
    return torch.seed()


def _assert_close(actual, expected, tol, seed):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{m}\n(seed {seed})")


def _hf_config(head_dim: int, theta: float, scaling: RopeScaling | None):
    from transformers import LlamaConfig

    params = {"rope_type": "default", "rope_theta": theta}
    if scaling is not None:
        params.update(rope_type=scaling.rope_type, factor=scaling.factor)
        if scaling.rope_type == "llama3":
            params.update(
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_position_embeddings,
            )
    return LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                       max_position_embeddings=131072, rope_parameters=params)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(
    "theta,scaling",
    [
        (10000.0, None),
        (500000.0, LLAMA31),
        (500000.0, RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)),  # Llama 3.2
        (10000.0, RopeScaling("linear", factor=4.0)),
    ],
)
def test_inv_freq_matches_transformers(head_dim, theta, scaling):
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = _hf_config(head_dim, theta, scaling)
    if scaling is None:
        want, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        want, _ = ROPE_INIT_FUNCTIONS[scaling.rope_type](config)
    assert torch.equal(rope_inv_freq(head_dim, theta, scaling), want)


@pytest.mark.parametrize("scaling", [None, LLAMA31])
def test_cache_matches_transformers_rotary_embedding(scaling):
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = _hf_config(128, 500000.0, scaling)
    emb = LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 2, 17, 1000, 4095]])
    cos, sin = emb(torch.zeros(1, dtype=torch.float32), positions)
    cache = rotary_cos_sin_cache(128, 4096, 500000.0, scaling)
    assert cache.shape == (4096, 128) and cache.dtype == torch.float32
    rows = cache[positions[0]]
    torch.testing.assert_close(rows[:, :64], cos[0, :, :64], rtol=0, atol=1e-6)
    torch.testing.assert_close(rows[:, 64:], sin[0, :, :64], rtol=0, atol=1e-6)
    # HF repeats the half: its second half equals its first.
    assert torch.equal(cos[0, :, :64], cos[0, :, 64:])


def test_cache_args_rejected():
    with pytest.raises(ValueError, match="head_dim"):
        rotary_cos_sin_cache(63, 16, 10000.0)
    with pytest.raises(ValueError, match="rope_type"):
        rotary_cos_sin_cache(64, 16, 10000.0, RopeScaling("yarn", 2.0))
    assert rotary_cos_sin_cache(64, 8, 1e4, dtype=torch.float16).dtype == torch.float16


def _rotate_half_formula(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent rotary: HF's `x * cos + rotate_half(x) * sin`, cos/sin straight from positions."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [n, 1, d]
    xf = x.float()
    rotated_half = torch.cat((-xf[..., d // 2 :], xf[..., : d // 2]), dim=-1)
    return (xf * emb.cos() + rotated_half * emb.sin()).to(x.dtype)


def _qk_views(n: int, hq: int, hk: int, d: int, dtype: torch.dtype):
    """q and k as strided views into a merged qkv projection output, as the attention layer has them."""
    qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=dtype)
    q = qkv[:, : hq * d].view(n, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(n, hk, d)
    return qkv, q, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("hq,hk,d", [(4, 2, 64), (8, 8, 128), (5, 1, 128), (3, 1, 80), (40, 8, 128)])
def test_triton_matches_reference(dtype, n, hq, hk, d, seed):
    cache = rotary_cos_sin_cache(d, 2048, 10000.0)
    positions = torch.randint(0, 2048, (n,))
    qkv, q, k = _qk_views(n, hq, hk, d, dtype)
    qkv_ref = qkv.clone()
    q_ref = qkv_ref[:, : hq * d].view(n, hq, d)
    k_ref = qkv_ref[:, hq * d : (hq + hk) * d].view(n, hk, d)
    apply_rotary_triton(q, k, positions, cache)
    apply_rotary_ref(q_ref, k_ref, positions, cache)
    _assert_close(q, q_ref, TOL[dtype], seed)
    _assert_close(k, k_ref, TOL[dtype], seed)
    assert torch.equal(qkv[:, (hq + hk) * d :], qkv_ref[:, (hq + hk) * d :])  # v untouched


@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64])
def test_triton_positions_int32_and_int64(pos_dtype, seed):
    cache = rotary_cos_sin_cache(64, 512, 10000.0)
    positions = torch.randint(0, 512, (6,), dtype=pos_dtype)
    _, q, k = _qk_views(6, 4, 2, 64, torch.float32)
    q_ref, k_ref = q.clone(), k.clone()
    apply_rotary_triton(q, k, positions, cache)
    apply_rotary_ref(q_ref, k_ref, positions, cache)
    _assert_close(q, q_ref, TOL[torch.float32], seed)
    _assert_close(k, k_ref, TOL[torch.float32], seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
def test_reference_matches_rotate_half_formula(dtype, d, seed):
    theta = 10000.0
    positions = torch.tensor([0, 1, 5, 300, 2047])
    q, k = torch.randn(5, 4, d, dtype=dtype), torch.randn(5, 2, d, dtype=dtype)
    want_q, want_k = _rotate_half_formula(q, positions, theta), _rotate_half_formula(k, positions, theta)
    apply_rotary_ref(q, k, positions, rotary_cos_sin_cache(d, 2048, theta))
    tol = {torch.float32: TOL[torch.float32], torch.float16: dict(rtol=1e-3, atol=1e-3),
           torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}[dtype]
    _assert_close(q, want_q, tol, seed)
    _assert_close(k, want_k, tol, seed)


def test_position_zero_is_identity():
    q, k = torch.randn(1, 2, 64), torch.randn(1, 1, 64)
    q0, k0 = q.clone(), k.clone()
    apply_rotary(q, k, torch.zeros(1, dtype=torch.int64), rotary_cos_sin_cache(64, 4, 1e4))
    assert torch.equal(q, q0) and torch.equal(k, k0)


def test_bad_args_raise():
    cache = rotary_cos_sin_cache(64, 16, 1e4)
    q, k, pos = torch.randn(3, 4, 64), torch.randn(3, 2, 64), torch.zeros(3, dtype=torch.int64)
    for fn in (apply_rotary_ref, apply_rotary_triton):
        with pytest.raises(ValueError, match="positions"):
            fn(q, k, pos.float(), cache)
        with pytest.raises(ValueError, match="k shape"):
            fn(q, torch.randn(3, 2, 32), pos, cache)
        with pytest.raises(ValueError, match="cos_sin_cache"):
            fn(q, k, pos, rotary_cos_sin_cache(128, 16, 1e4))
        with pytest.raises(ValueError, match="dtype"):
            fn(q, k.half(), pos, cache)
    with pytest.raises(ValueError, match="last dim"):
        apply_rotary_triton(torch.randn(3, 64, 4).transpose(1, 2), k, pos, cache)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("hq,hk", [(32, 8), (32, 32)])
def test_gpu_bf16_matches_reference(n, hq, hk, seed):
    cache = rotary_cos_sin_cache(128, 8192, 500000.0, LLAMA31, device="cuda")
    positions = torch.randint(0, 8192, (n,), device="cuda")
    qkv = torch.randn(n, (hq + 2 * hk) * 128, dtype=torch.bfloat16, device="cuda")
    q, k = qkv[:, : hq * 128].view(n, hq, 128), qkv[:, hq * 128 : (hq + hk) * 128].view(n, hk, 128)
    q_ref, k_ref = q.clone(), k.clone()
    apply_rotary(q, k, positions, cache)
    apply_rotary_ref(q_ref, k_ref, positions, cache)
    _assert_close(q, q_ref, dict(rtol=1.6e-2, atol=1.6e-2), seed)
    _assert_close(k, k_ref, dict(rtol=1.6e-2, atol=1.6e-2), seed)
