"""Mixed prefill+decode steps: decode rows through the decode kernel, chunks through the prefill
kernel, in one `paged_attention_triton` call (Triton interpreter on CPU, fp32/fp16)."""

from __future__ import annotations

import pytest
import torch

from floorline.kernels.paged_attention import paged_attention_ref, paged_attention_triton
from tests.kernels.test_paged_attention import assert_close, make_batch, poisoned_out

# Decode rows (q_len 1) first, as the runner orders them; then chunks with and without a prefix.
MIXED = [(1, 60), (1, 2), (1, 17), (1, 1), (24, 24), (9, 41), (0, 9), (5, 37)]


def _alone(b, i: int, dtype: torch.dtype) -> torch.Tensor:
    """Sequence i run by itself through the same entry point."""
    (q_len, ctx) = MIXED[i]
    start = int(b.query_start_loc[i])
    q = b.q[start : start + q_len]
    starts = torch.tensor([0, q_len], dtype=torch.int32)
    return paged_attention_triton(
        q, b.key_cache, b.value_cache, starts, b.seq_lens[i : i + 1], b.block_tables[i : i + 1], b.scale,
        q_len, ctx, num_decodes=1 if q_len == 1 else 0,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4])
def test_mixed_batch_matches_reference_and_each_sequence_alone(group: int, dtype: torch.dtype) -> None:
    b = make_batch(MIXED, 2 * group, 2, 32, 16, dtype)
    num_decodes = sum(1 for q_len, _ in MIXED if q_len == 1)
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    out = paged_attention_triton(
        *b.args(), b.scale, b.max_query_len, b.max_seq_len, out=poisoned_out(b.q), num_decodes=num_decodes
    )
    assert_close(out, expected, dtype)
    starts = b.query_start_loc.tolist()
    for i, (q_len, _) in enumerate(MIXED):
        if q_len:
            assert_close(out[starts[i] : starts[i + 1]], _alone(b, i, dtype), dtype)


def test_mixed_batch_rows_are_disjoint() -> None:
    """Each kernel writes only its own rows: the decode kernel rows 0..num_decodes-1, prefill the rest."""
    from floorline.kernels.decode_attention import decode_attention
    from floorline.kernels.prefill_attention import prefill_attention

    b = make_batch(MIXED, 4, 2, 32, 16, torch.float32)
    n = sum(1 for q_len, _ in MIXED if q_len == 1)
    out = poisoned_out(b.q)
    decode_attention(b.q[:n], b.key_cache, b.value_cache, b.seq_lens[:n], b.block_tables[:n], b.scale,
                     b.max_seq_len, out=out[:n])
    assert not out[:n].isnan().any() and out[n:].isnan().all()
    out = poisoned_out(b.q)
    prefill_attention(*b.args(), b.scale, b.max_query_len, out=out, first_seq=n)
    assert out[:n].isnan().all() and not out[n:].isnan().any()


@pytest.mark.parametrize("block_m,block_n,num_warps,num_stages", [(16, 16, 4, 2), (64, 32, 4, 3), (128, 64, 8, 3)])
def test_prefill_launch_parameters(block_m: int, block_n: int, num_warps: int, num_stages: int) -> None:
    """Every config the sweep tries computes the same attention (heaviest-tile-first order included)."""
    from floorline.kernels.prefill_attention import prefill_attention

    b = make_batch([(70, 200), (1, 130), (33, 33), (0, 5)], 8, 2, 64, 16, torch.float16)
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    out = prefill_attention(*b.args(), b.scale, b.max_query_len, out=poisoned_out(b.q), block_m=block_m,
                            block_n=block_n, num_warps=num_warps, num_stages=num_stages)
    assert_close(out, expected, torch.float16)


@pytest.mark.gpu
def test_gpu_mixed_bf16_llama8b_serving_step() -> None:
    """A steady-state serving step: 255 decode rows of assorted lengths and one 600-token prompt."""
    from floorline.kernels.paged_attention import paged_attention

    seqs = [(1, 200 + (i * 7919) % 1100) for i in range(255)] + [(600, 600)]
    b = make_batch(seqs, 32, 8, 128, 16, torch.bfloat16, device="cuda")
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    out = paged_attention(*b.args(), b.scale, b.max_query_len, b.max_seq_len, out=poisoned_out(b.q), num_decodes=255)
    assert_close(out, expected, torch.bfloat16)
