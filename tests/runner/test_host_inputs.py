"""Host-side step inputs: block-table rows, the packed copy, and a mixed step's tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from floorline.engine.outputs import NewRequestData, SchedulerOutput
from floorline.runner.host_inputs import BlockTables, to_device_packed
from floorline.runner.model_runner import ModelRunner
from floorline.sampling_params import SamplingParams


def test_block_tables_grow_reuse_rows_and_pad_with_block_zero():
    bt = BlockTables(rows=2, width=2)
    bt.add("a", [5, 6, 7])  # wider than the array: it grows
    bt.add("b", [9])
    bt.add("c", [])  # more requests than rows: it grows
    bt.extend("c", [3, 4])
    assert bt.gather(["c", "a", "b"]).tolist() == [[3, 4, 0], [5, 6, 7], [9, 0, 0]]
    bt.remove("a")
    bt.add("d", [8])  # reuses a's row: no stale ids past its own
    assert bt.gather(["d"]).tolist() == [[8]] and bt.gather(["d", "c"]).tolist() == [[8, 0], [3, 4]]
    with pytest.raises(ValueError):
        bt.add("d", [1])


def test_packed_copy_round_trips_dtypes_and_shapes():
    arrays = [np.arange(3, dtype=np.int32), np.array([2**40, -1], dtype=np.int64), np.zeros(0, dtype=np.int64),
              np.arange(6, dtype=np.int32).reshape(2, 3), np.array([7], dtype=np.int64)]
    out = to_device_packed(arrays, torch.device("cpu"))
    for a, t in zip(arrays, out):
        assert t.dtype == (torch.int64 if a.dtype == np.int64 else torch.int32)
        assert t.tolist() == a.tolist()
    with pytest.raises(TypeError):
        to_device_packed([np.zeros(2, dtype=np.float32)], torch.device("cpu"))


def test_packed_slices_start_on_16_bytes():
    """Triton specializes kernels on 16-byte pointer alignment: an odd slice would compile new variants."""
    arrays = [np.arange(3, dtype=np.int32), np.arange(5, dtype=np.int64), np.arange(1, dtype=np.int32),
              np.arange(7, dtype=np.int32).reshape(7, 1)]
    out = to_device_packed(arrays, torch.device("cpu"))
    base = out[0].data_ptr()
    assert all((t.data_ptr() - base) % 16 == 0 for t in out)
    assert [t.tolist() for t in out] == [a.tolist() for a in arrays]


def test_mixed_step_inputs_put_decodes_first_with_their_positions_and_slots():
    bs = 4
    runner = ModelRunner(None, None, bs, torch.device("cpu"))
    greedy = SamplingParams(temperature=0)
    new = [  # (id, tokens, blocks, computed): a chunk of 6 after 2 cached, a decode at 9, a fresh chunk of 3
        ("chunk", list(range(100, 110)), [7, 3, 5], 2),
        ("dec", list(range(200, 210)), [2, 9, 4], 9),
        ("fresh", [300, 301, 302], [6], 0),
    ]
    runner._update_states(SchedulerOutput(new_requests=[
        NewRequestData(rid, toks, len(toks), greedy, blocks, done) for rid, toks, blocks, done in new]))
    step = runner._prepare_inputs(SchedulerOutput(num_scheduled_tokens={"chunk": 6, "dec": 1, "fresh": 3}))
    meta = step.meta
    assert meta.num_decodes == 1 and meta.query_start_loc.tolist() == [0, 1, 7, 10]
    assert meta.seq_lens.tolist() == [10, 8, 3] and meta.max_query_len == 6 and meta.max_seq_len == 10
    assert step.input_ids.tolist() == [209] + list(range(102, 108)) + [300, 301, 302]
    positions = [9] + list(range(2, 8)) + [0, 1, 2]
    assert step.positions.tolist() == positions
    blocks = [[2, 9, 4]] + [[7, 3, 5]] * 6 + [[6]] * 3
    assert step.meta.slot_mapping.tolist() == [b[p // bs] * bs + p % bs for b, p in zip(blocks, positions)]
    assert meta.block_tables.tolist() == [[2, 9, 4], [7, 3, 5], [6, 0, 0]]
    # "chunk" stops short of its known tokens: no sample; "dec" and "fresh" reach their ends.
    assert step.sampled_request_ids == ["dec", "fresh"] and step.logits_indices.tolist() == [0, 9]
