"""silu_and_mul: Triton (interpreter on CPU) vs reference, reference vs the unfused HF MLP formula."""

import pytest
import torch
import torch.nn.functional as F

from floorline.kernels.activation import silu_and_mul, silu_and_mul_ref, silu_and_mul_triton

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (inputs differ between runs); reported when a comparison fails."""
    return torch.seed()


def _assert_close(actual, expected, tol, seed):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{m}\n(seed {seed})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("inter", [64, 576, 1000, 1536])
def test_triton_matches_reference(dtype, n, inter, seed):
    x = 3 * torch.randn(n, 2 * inter, dtype=dtype)
    got = silu_and_mul_triton(x)
    assert got.shape == (n, inter) and got.dtype == dtype
    _assert_close(got, silu_and_mul_ref(x), TOL[dtype], seed)


def test_triton_accepts_strided_rows(seed):
    buf = torch.randn(5, 2 * 96 + 8)
    x = buf[:, : 2 * 96]  # row stride larger than the row
    _assert_close(silu_and_mul_triton(x), silu_and_mul_ref(x), TOL[torch.float32], seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_matches_unfused_formula(dtype, seed):
    x = 3 * torch.randn(9, 2 * 576, dtype=dtype)
    gate, up = x[:, :576], x[:, 576:]  # gate first, as a merged gate_up projection lays it out
    want = F.silu(gate) * up  # what HF's LlamaMLP computes in the activation dtype
    exact = dict(rtol=0, atol=0) if dtype != torch.float32 else TOL[dtype]
    _assert_close(silu_and_mul_ref(x), want, exact, seed)


def test_public_entry_runs_reference_on_cpu():
    x = torch.randn(2, 128)
    assert torch.equal(silu_and_mul(x), silu_and_mul_ref(x))


@pytest.mark.parametrize("shape", [(4, 7), (8,), (2, 3, 8)])
def test_bad_shapes_raise(shape):
    for fn in (silu_and_mul_ref, silu_and_mul_triton):
        with pytest.raises(ValueError, match="silu_and_mul"):
            fn(torch.randn(shape))


def test_launcher_rejects_strided_last_dim():
    with pytest.raises(ValueError, match="last dim"):
        silu_and_mul_triton(torch.randn(8, 4).t())


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("inter", [11008, 14336])
def test_gpu_bf16_matches_reference(n, inter, seed):
    x = torch.randn(n, 2 * inter, dtype=torch.bfloat16, device="cuda")
    _assert_close(silu_and_mul(x), silu_and_mul_ref(x), dict(rtol=1.6e-2, atol=1.6e-2), seed)
