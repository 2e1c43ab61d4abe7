"""The one-launch row argmax against torch.argmax: first maximum, ties across and inside chunks, NaN, -inf."""

from __future__ import annotations

import pytest
import torch

from floorline.kernels.argmax import BLOCK, argmax_rows


def _hard_rows(cols: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    x = torch.randn(7, cols, device=device).to(dtype)
    last = cols - 1
    x[1, [3, last]] = 9.0  # tie across chunks: the first wins
    x[2, [last - 1, last]] = 9.0  # tie inside the last chunk
    x[3, last] = float("nan")  # NaN is the maximum, as in torch.argmax ...
    x[3, 0] = float("inf")  # ... even against +inf
    x[4] = 0.0  # all equal: index 0
    x[5] = float("-inf")  # all -inf: index 0
    x[6, [1, last]] = float("nan")  # the first NaN
    return x


@pytest.mark.parametrize("cols", [1, 5, BLOCK, BLOCK + 1, 3 * BLOCK - 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_argmax_rows_is_torch_argmax(cols, dtype):
    x = _hard_rows(cols, dtype) if cols > 1 else torch.randn(3, 1).to(dtype)
    assert torch.equal(argmax_rows(x), x.float().argmax(dim=-1))


def test_argmax_rows_strided_rows_and_repeated_calls():
    """Rows of a wider buffer (the sampler's logits view); the tickets reset between launches."""
    buf = torch.randn(4, BLOCK + 100)
    x = buf[:, : BLOCK + 50]
    for _ in range(2):
        assert torch.equal(argmax_rows(x), x.argmax(dim=-1))


def test_argmax_rows_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="argmax_rows takes a \\[rows, cols\\] float tensor"):
        argmax_rows(torch.zeros(4, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous in cols"):
        argmax_rows(torch.zeros(8, 4).t())
    with pytest.raises(ValueError, match="no columns"):
        argmax_rows(torch.zeros(2, 0))
    assert argmax_rows(torch.zeros(0, 5)).shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_argmax_rows_llama3_vocab(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = _hard_rows(128256, dtype, "cuda")
    assert torch.equal(argmax_rows(x), x.float().argmax(dim=-1))
    big = torch.randn(64, 128256, device="cuda", dtype=dtype)
    assert torch.equal(argmax_rows(big), big.float().argmax(dim=-1))
