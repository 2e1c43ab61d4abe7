"""The prefill-attention sweep's pieces on CPU: shapes, FLOP count, and that its paged case and its
SDPA yardstick compute the same attention as the kernel (so the GPU sweep compares like with like)."""

from __future__ import annotations

import pytest
import torch

from floorline.bench.kernels import rel_error as rel_err
from floorline.bench.prefill_attention import Shape, build_case, causal_flops, parse_shapes, sdpa


def test_parse_shapes_and_flops() -> None:
    assert parse_shapes("16x512, 2x64+100") == [Shape(16, 512), Shape(2, 64, 100)]
    with pytest.raises(ValueError, match="NxL"):
        parse_shapes("16by512")
    # One chunk of 2 tokens after 3 cached: the tokens see 4 and 5 keys.
    assert causal_flops(Shape(1, 2, 3), num_heads=1, head_dim=1) == 4 * (4 + 5)


@pytest.mark.parametrize("shape", [Shape(2, 40), Shape(2, 24, 37)])
def test_case_kernel_and_sdpa_agree(shape: Shape) -> None:
    from floorline.kernels.paged_attention import paged_attention_ref
    from floorline.kernels.prefill_attention import prefill_attention

    torch.manual_seed(0)
    case = build_case(shape, num_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype=torch.float32,
                      device=torch.device("cpu"))
    yardstick = sdpa(case)
    ref = paged_attention_ref(*case.paged, case.scale, case.max_query_len, shape.prefix_len + shape.chunk_len)
    assert rel_err(ref, yardstick) < 1e-5
    out = prefill_attention(*case.paged, case.scale, case.max_query_len, block_m=32, block_n=16)
    assert rel_err(out, yardstick) < 1e-4
