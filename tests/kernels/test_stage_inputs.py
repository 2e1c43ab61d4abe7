"""The one-launch staging of a decode step's inputs into graph buffers, against plain copies."""

from __future__ import annotations

import pytest
import torch

from floorline.kernels.stage_inputs import BLOCK_W, stage_decode_inputs


def _static(max_batch: int, max_blocks: int) -> tuple[torch.Tensor, ...]:
    """Static buffers holding stale values, as after earlier steps."""
    return (torch.full((max_batch,), 77, dtype=torch.int64), torch.full((max_batch,), 66, dtype=torch.int64),
            torch.full((max_batch,), 55, dtype=torch.int64), torch.full((max_batch,), 44, dtype=torch.int32),
            torch.full((max_batch, max_blocks), 33, dtype=torch.int32))


@pytest.mark.parametrize("n,bucket,width", [(3, 4, 5), (4, 4, BLOCK_W + 3), (1, 8, 1)])
@pytest.mark.parametrize("fill", [False, True])
def test_staged_buffers_equal_the_copies(n, bucket, width, fill):
    g = torch.Generator().manual_seed(n + width)
    ids = torch.randint(0, 1000, (n,), generator=g)
    positions = torch.randint(0, 4000, (n,), generator=g)
    slots = torch.randint(0, 9000, (n,), generator=g)
    lens = torch.randint(1, 4000, (n,), generator=g, dtype=torch.int32)
    table = torch.randint(0, 500, (n, width + 2), generator=g, dtype=torch.int32)[:, :width]  # strided rows
    last = torch.randint(0, 1000, (6,), generator=g)
    fill_from = torch.tensor([5 - i if i % 2 == 0 else -1 for i in range(n)]) if fill else None

    want = _static(8, BLOCK_W + 8)
    want_ids = torch.where(fill_from >= 0, last[fill_from.clamp(min=0)], ids) if fill else ids
    for buf, src in zip(want[:4], (want_ids, positions, slots, lens)):
        buf[:n] = src
    want[4][:n, :width] = table
    want[2][n:bucket], want[3][n:bucket], want[4][n:bucket, 0] = -1, 1, 0

    got = _static(8, BLOCK_W + 8)
    stage_decode_inputs(got, ids, positions, slots, lens, table, bucket, fill_from, last if fill else None)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_staging_refuses_what_does_not_fit():
    static = _static(4, 8)
    one = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="do not fit a bucket of 2 in static buffers of 4 x 8"):
        stage_decode_inputs(static, one, one, one, one.int(), torch.zeros(1, 9, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="go together"):
        stage_decode_inputs(static, one, one, one, one.int(), torch.zeros(1, 2, dtype=torch.int32), 2, one)
