"""quant_x_pairs: x as the int4 K loop's fp16x2 pairs (Triton interpreter, fp16) against its reference."""

from __future__ import annotations

import pytest
import torch

from floorline.kernels.quant_x_pairs import int4_x_pairs, int4_x_pairs_ref


@pytest.mark.parametrize("k,group", [(256, 128), (320, 64), (96, 32)])  # 320 / 96: zero-padded last group
@pytest.mark.parametrize("silu", [False, True])
def test_int4_x_pairs_match_reference(k, group, silu):
    torch.manual_seed(k + silu)
    kp = -(-k // group) * group
    x = (torch.randn(1, 2 * k if silu else k) * torch.logspace(-3, 2, 2 * k if silu else k)).half()  # mixed scales
    pairs, meta = int4_x_pairs(x, kp, group, silu)
    want_pairs, want_meta = int4_x_pairs_ref(x, kp, group, silu)
    assert pairs.shape == (4, kp // 32, 4) and meta.shape == (2, kp // 32)
    assert torch.equal(pairs, want_pairs)
    assert torch.equal(meta[0], want_meta[0])  # powers of two
    torch.testing.assert_close(meta[1], want_meta[1], rtol=1e-6, atol=1e-4)


def test_int4_x_pairs_of_zeros_are_zero():
    """An all-zero position keeps a finite scale and zero pairs (the loop multiplies them, no NaN)."""
    pairs, meta = int4_x_pairs(torch.zeros(1, 128, dtype=torch.float16), 128, 128, False)
    assert not pairs.any() and torch.isfinite(meta).all() and not meta[1].any()


@pytest.mark.parametrize("shape,dtype", [((2, 128), torch.float16), ((1, 128), torch.float32)])
def test_int4_x_pairs_refuses_what_the_k_loop_does_not_take(shape, dtype):
    with pytest.raises(ValueError, match="one float16/bfloat16 row"):
        int4_x_pairs(torch.zeros(shape, dtype=dtype), 128, 128, False)
