"""RMSNorm: Triton (interpreter on CPU) vs reference, reference vs an HF-style formula."""

import pytest
import torch

from floorline.kernels.rms_norm import rms_norm, rms_norm_ref, rms_norm_triton

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}
BF16_TOL = dict(rtol=1.6e-2, atol=1.6e-2)


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (inputs differ between runs); reported when a comparison fails."""
    return torch.seed()


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Independent formula, written the way HF's LlamaRMSNorm computes it."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _assert_close(actual, expected, tol, seed):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{m}\n(seed {seed})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("hidden", [64, 576, 1000])
@pytest.mark.parametrize("with_residual", [False, True])
def test_triton_matches_reference_2d(dtype, n, hidden, with_residual, seed):
    x = torch.randn(n, hidden, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    residual = torch.randn(n, hidden, dtype=dtype) if with_residual else None
    got = rms_norm_triton(x, weight, 1e-6, residual)
    want = rms_norm_ref(x, weight, 1e-6, residual)
    if with_residual:
        _assert_close(got[1], want[1], TOL[dtype], seed)
        got, want = got[0], want[0]
    _assert_close(got, want, TOL[dtype], seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("heads,head_dim", [(4, 64), (3, 128), (2, 80)])
def test_triton_matches_reference_per_head_strided(dtype, n, heads, head_dim, seed):
    # Qwen3's q-norm reads q as a strided view into a merged qkv output.
    qkv = torch.randn(n, (heads + 2) * head_dim, dtype=dtype)
    q = qkv[:, : heads * head_dim].view(n, heads, head_dim)
    weight = torch.randn(head_dim).to(dtype)
    got = rms_norm_triton(q, weight, 1e-5)
    assert got.shape == (n, heads, head_dim)
    _assert_close(got, rms_norm_ref(q, weight, 1e-5), TOL[dtype], seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (5, 576), (3, 4, 128)])
def test_reference_matches_hf_formula(dtype, shape, seed):
    x = torch.randn(shape, dtype=dtype)
    weight = torch.randn(shape[-1]).to(dtype)
    exact = dict(rtol=0, atol=0) if dtype != torch.float32 else TOL[dtype]
    _assert_close(rms_norm_ref(x, weight, 1e-6), _hf_rms_norm(x, weight, 1e-6), exact, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_residual_is_unfused_add_then_norm(dtype, seed):
    x = torch.randn(7, 576, dtype=dtype)
    residual = torch.randn(7, 576, dtype=dtype)
    weight = torch.randn(576).to(dtype)
    out, s = rms_norm_ref(x, weight, 1e-6, residual)
    assert torch.equal(s, x + residual)  # rounded to x.dtype, as the unfused model has it
    _assert_close(out, _hf_rms_norm(x + residual, weight, 1e-6), TOL[torch.float32], seed)


def test_public_entry_runs_reference_on_cpu():
    x, weight = torch.randn(2, 64), torch.randn(64)
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6))


@pytest.mark.parametrize(
    "x_shape,w_shape,res_shape",
    [((4, 64), (32,), None), ((4,), (4,), None), ((4, 64), (64,), (4, 32)), ((2, 2, 2, 8), (8,), None)],
)
def test_bad_shapes_raise(x_shape, w_shape, res_shape):
    res = torch.randn(res_shape) if res_shape else None
    for fn in (rms_norm_ref, rms_norm_triton):
        with pytest.raises(ValueError, match="rms_norm"):
            fn(torch.randn(x_shape), torch.randn(w_shape), 1e-6, res)


def test_launcher_rejects_strided_last_dim_and_dtype_mix():
    with pytest.raises(ValueError, match="last dim"):
        rms_norm_triton(torch.randn(64, 4).t(), torch.randn(64), 1e-6)
    with pytest.raises(ValueError, match="residual dtype"):
        rms_norm_triton(torch.randn(4, 64), torch.randn(64), 1e-6, torch.randn(4, 64, dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_gpu_bf16_matches_reference(n, with_residual, seed):
    x = torch.randn(n, 4096, dtype=torch.bfloat16, device="cuda")
    weight = torch.randn(4096, dtype=torch.bfloat16, device="cuda")
    residual = torch.randn_like(x) if with_residual else None
    got = rms_norm(x, weight, 1e-5, residual)
    want = rms_norm_ref(x, weight, 1e-5, residual)
    if with_residual:
        _assert_close(got[1], want[1], dict(rtol=0, atol=0), seed)
        got, want = got[0], want[0]
    _assert_close(got, want, BF16_TOL, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 16])
def test_gpu_bf16_per_head(n, seed):
    qkv = torch.randn(n, 48 * 128, dtype=torch.bfloat16, device="cuda")
    q = qkv[:, : 32 * 128].view(n, 32, 128)
    weight = torch.randn(128, dtype=torch.bfloat16, device="cuda")
    _assert_close(rms_norm(q, weight, 1e-6), rms_norm_ref(q, weight, 1e-6), BF16_TOL, seed)
