"""Decode attention with the split merge done by the last split program (FLOORLINE_DECODE_SPLIT_MERGE=last)
against the two-kernel merge and the PyTorch reference (interpreter, fp32/fp16; bf16 on a GPU)."""

from __future__ import annotations

import pytest
import torch

import floorline.kernels.decode_attention as da
from floorline.kernels.decode_attention import NewKV, decode_attention, split_merge_mode
from floorline.kernels.kv_write import rotary_and_cache_write_ref
from floorline.kernels.paged_attention import paged_attention_ref
from floorline.kernels.tickets import tickets
from tests.kernels.test_decode_new_kv import _case
from tests.kernels.test_paged_attention import TOL, assert_close, make_batch, poisoned_out

# With 6 splits of 16-token tiles: 0 (padding row), 1, 2, 5, 5 and all 6 splits hold KV.
LENS = [0, 1, 17, 70, 200, 96]


def _decode(b, mode: str, num_splits: int, out: torch.Tensor | None = None, seq_lens=None) -> torch.Tensor:
    return decode_attention(
        b.q, b.key_cache, b.value_cache, b.seq_lens if seq_lens is None else seq_lens, b.block_tables, b.scale,
        b.max_seq_len, out=poisoned_out(b.q) if out is None else out, num_splits=num_splits, block_n=16,
        split_merge=mode,
    )  # fmt: skip


def _counters(device: torch.device) -> torch.Tensor:
    return tickets(device, 1, "decode_attention")


@pytest.fixture(autouse=True)
def _zero_counters():
    """A failed test may leave counters mid-count: do not let it break the next one."""
    _counters(torch.device("cpu")).zero_()


def _no_merge_kernel(monkeypatch) -> None:
    """Makes a launch of the merge kernel fail, so `last` provably merges inside the split kernel."""
    monkeypatch.setattr(da, "_decode_merge_kernel", None)


def test_mode_switch(monkeypatch) -> None:
    monkeypatch.delenv("FLOORLINE_DECODE_SPLIT_MERGE", raising=False)
    assert split_merge_mode() == "kernel"
    monkeypatch.setenv("FLOORLINE_DECODE_SPLIT_MERGE", "last")
    assert split_merge_mode() == "last"
    monkeypatch.setenv("FLOORLINE_DECODE_SPLIT_MERGE", "bogus")
    with pytest.raises(ValueError, match="FLOORLINE_DECODE_SPLIT_MERGE"):
        split_merge_mode()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_last_split_merge_matches_kernel_and_reference(monkeypatch, dtype: torch.dtype, group: int) -> None:
    """Several splits, lengths that leave trailing splits empty, a seq_len 0 padding row, GQA groups."""
    b = make_batch([(1, n) for n in LENS], 2 * group, 2, 32, 16, dtype)
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    two_kernels = _decode(b, "kernel", 6)
    _no_merge_kernel(monkeypatch)
    last = _decode(b, "last", 6)
    assert_close(last, expected, dtype)
    torch.testing.assert_close(last, two_kernels, atol=1e-6 if dtype == torch.float32 else 1e-3, rtol=0)
    assert (last[0] == 0).all()  # the padding row
    assert (_counters(b.q.device) == 0).all()


def test_env_var_selects_last(monkeypatch) -> None:
    """Without `split_merge` the launcher follows FLOORLINE_DECODE_SPLIT_MERGE (and one split stays direct)."""
    b = make_batch([(1, n) for n in (40, 0, 3)], 4, 2, 32, 16, torch.float32)
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    monkeypatch.setenv("FLOORLINE_DECODE_SPLIT_MERGE", "last")
    _no_merge_kernel(monkeypatch)
    for num_splits in (1, 4):
        out = decode_attention(b.q, b.key_cache, b.value_cache, b.seq_lens, b.block_tables, b.scale, b.max_seq_len,
                               out=poisoned_out(b.q), num_splits=num_splits, block_n=16)
        assert_close(out, expected, torch.float32)
        assert (out[1] == 0).all()


def test_counters_reset_between_launches(monkeypatch) -> None:
    """Two launches in a row on one counter buffer (as graph replays do), with other lengths the second
    time: had the first left a counter non-zero, no program of the second would draw the last ticket
    and its rows would stay NaN."""
    b = make_batch([(1, n) for n in (130, 64, 5)], 8, 2, 32, 16, torch.float32)
    _no_merge_kernel(monkeypatch)
    seq_lens = b.seq_lens.clone()
    for lens in ([130, 64, 5], [100, 0, 2]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        expected = paged_attention_ref(b.q, b.key_cache, b.value_cache, b.query_start_loc, seq_lens,
                                       b.block_tables, b.scale, 1, b.max_seq_len)
        assert_close(_decode(b, "last", 5, seq_lens=seq_lens), expected, torch.float32)
        assert (_counters(b.q.device) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_last_split_merge_with_new_kv(monkeypatch, dtype: torch.dtype) -> None:
    """The fused rotary + cache write path: same output and cache as the two-kernel merge."""
    seq_lens = [17, 64, 3, 1]
    q, k, v, kc, vc, tables, lens, pos, slots, cs = _case(dtype, seq_lens)
    results = []
    for mode in ("kernel", "last"):
        if mode == "last":
            _no_merge_kernel(monkeypatch)
        kc2, vc2 = kc.clone(), vc.clone()
        out = decode_attention(q.clone(), kc2, vc2, lens, tables, 32**-0.5, max(seq_lens), out=poisoned_out(q),
                               num_splits=4, block_n=16, new_kv=NewKV(k, v, pos, cs, slots), split_merge=mode)
        results.append((out, kc2, vc2))
    (out_k, kc_k, vc_k), (out_l, kc_l, vc_l) = results
    torch.testing.assert_close(out_l, out_k, atol=1e-6 if dtype == torch.float32 else 1e-3, rtol=0)
    assert torch.equal(kc_l, kc_k) and torch.equal(vc_l, vc_k)
    q_ref, k_ref = q.clone(), k.clone()
    rotary_and_cache_write_ref(q_ref, k_ref, v, pos, cs, kc, vc, slots)
    n = len(seq_lens)
    ref = paged_attention_ref(q_ref, kc, vc, torch.arange(n + 1, dtype=torch.int32), lens, tables, 32**-0.5, 1,
                              max(seq_lens))
    torch.testing.assert_close(out_l.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


# ---------------------------------------------------------------- GPU, bf16, real sizes


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("ctx", [2048, 16384])
def test_gpu_bf16_last_matches_kernel_llama8b(batch: int, ctx: int) -> None:
    lens = [max(1, ctx - 977 * i) for i in range(batch)]
    b = make_batch([(1, n) for n in lens], 32, 8, 128, 16, torch.bfloat16, device="cuda")
    outs = {}
    for mode in ("kernel", "last"):
        for _ in range(2):  # the second launch reuses the counters the first reset
            outs[mode] = decode_attention(b.q, b.key_cache, b.value_cache, b.seq_lens, b.block_tables, b.scale,
                                          b.max_seq_len, out=poisoned_out(b.q), split_merge=mode)
    assert not outs["last"].isnan().any()
    torch.testing.assert_close(outs["last"].float(), outs["kernel"].float(), atol=1e-2, rtol=1e-2)
    assert_close(outs["last"], paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len), torch.bfloat16)


@pytest.mark.gpu
def test_gpu_last_split_merge_cuda_graph_replays() -> None:
    """A graph captured with the worst-case split count replays right for any lengths (counters reset)."""
    from floorline.kernels.decode_attention import decode_num_splits, num_sms_of

    max_len, batch = 8192, 2
    b = make_batch([(1, max_len), (1, max_len)], 32, 8, 128, 16, torch.bfloat16, device="cuda")
    num_splits = decode_num_splits(batch, 8, max_len, num_sms_of(b.q.device))
    seq_lens = b.seq_lens.clone()
    out = torch.empty_like(b.q)

    def step() -> None:
        decode_attention(b.q, b.key_cache, b.value_cache, seq_lens, b.block_tables, b.scale, max_len, out=out,
                         num_splits=num_splits, split_merge="last")

    step()  # compiles and allocates the counters outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for lens in ([1, 8192], [300, 0], [4096, 5000], [4096, 5000]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        expected = paged_attention_ref(
            b.q, b.key_cache, b.value_cache, b.query_start_loc, seq_lens, b.block_tables, b.scale, 1, max_len
        )
        assert_close(out, expected, torch.bfloat16)
    assert (_counters(b.q.device)[: batch * 8] == 0).all()
