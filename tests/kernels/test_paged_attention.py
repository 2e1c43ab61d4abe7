"""Paged attention: reference vs dense SDPA, Triton decode/prefill kernels vs reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from floorline.kernels.paged_attention import paged_attention, paged_attention_ref

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@dataclass
class PagedBatch:
    """A random batch laid out in a paged cache, plus the dense per-sequence K/V it came from."""

    q: torch.Tensor  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    dense_k: list[torch.Tensor]  # per sequence [ctx, num_kv_heads, head_dim]
    dense_v: list[torch.Tensor]
    q_lens: list[int]
    scale: float

    @property
    def max_query_len(self) -> int:
        return max(self.q_lens)

    @property
    def max_seq_len(self) -> int:
        return int(self.seq_lens.max())

    def args(self) -> tuple:
        return (self.q, self.key_cache, self.value_cache, self.query_start_loc, self.seq_lens, self.block_tables)


def make_batch(
    seqs: list[tuple[int, int]],  # (q_len, seq_len) per sequence
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str = "cpu",
) -> PagedBatch:
    """Scatters fresh random K/V into shuffled cache blocks; every other cache slot and the block
    table padding point at NaN, so a kernel that reads outside a context fails loudly."""
    needed = [math.ceil(ctx / block_size) for _, ctx in seqs]
    num_blocks = sum(needed) + 2
    perm = torch.randperm(num_blocks).tolist()
    poisoned_block = perm.pop()  # never owned by a sequence
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    value_cache = key_cache.clone()
    block_tables = torch.full((len(seqs), max(needed) + 1), poisoned_block, dtype=torch.int32)
    dense_k, dense_v = [], []
    for i, (_, ctx) in enumerate(seqs):
        k = torch.randn(ctx, num_kv_heads, head_dim, dtype=dtype, device=device)
        v = torch.randn(ctx, num_kv_heads, head_dim, dtype=dtype, device=device)
        ids = [perm.pop() for _ in range(needed[i])]
        block_tables[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        pos = torch.arange(ctx)
        slots = (torch.tensor(ids, dtype=torch.long)[pos // block_size] * block_size + pos % block_size).to(device)
        key_cache.view(-1, num_kv_heads, head_dim)[slots] = k
        value_cache.view(-1, num_kv_heads, head_dim)[slots] = v
        dense_k.append(k)
        dense_v.append(v)
    q_lens = [q_len for q_len, _ in seqs]
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)
    q = torch.randn(starts[-1], num_heads, head_dim, dtype=dtype, device=device)
    return PagedBatch(
        q=q,
        key_cache=key_cache,
        value_cache=value_cache,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor([ctx for _, ctx in seqs], dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        dense_k=dense_k,
        dense_v=dense_v,
        q_lens=q_lens,
        scale=head_dim**-0.5,
    )


def sdpa_dense(b: PagedBatch) -> torch.Tensor:
    """Independent formulation: dense float64 SDPA per sequence with an explicit causal mask."""
    num_heads = b.q.shape[1]
    outs = []
    starts = b.query_start_loc.tolist()
    for i, (k, v) in enumerate(zip(b.dense_k, b.dense_v)):
        q_len, ctx = b.q_lens[i], k.shape[0]
        group = num_heads // k.shape[1]
        qi = b.q[starts[i] : starts[i + 1]].double().transpose(0, 1)  # [H, q_len, D]
        ki = k.double().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, ctx, D]
        vi = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
        mask = torch.ones(q_len, ctx, dtype=torch.bool, device=k.device).tril(diagonal=ctx - q_len)
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=b.scale).transpose(0, 1))
    return torch.cat(outs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not actual.isnan().any(), "output has NaN (unwritten or read outside the context)"
    torch.testing.assert_close(actual.float(), expected.float(), atol=TOL[dtype], rtol=TOL[dtype])


def poisoned_out(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, float("nan"))


# ---------------------------------------------------------------- reference


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("block_size", [16, 32])
def test_reference_matches_dense_sdpa(group: int, block_size: int) -> None:
    seqs = [(1, 1), (7, 7), (1, 40), (5, 33), (20, 70), (0, 9)]
    b = make_batch(seqs, num_heads=2 * group, num_kv_heads=2, head_dim=32, block_size=block_size, dtype=torch.float32)
    out = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len, out=poisoned_out(b.q))
    torch.testing.assert_close(out, sdpa_dense(b).float(), atol=1e-5, rtol=1e-5)


def test_cpu_entry_runs_reference() -> None:
    b = make_batch([(3, 10), (1, 5)], 4, 2, 16, 16, torch.float32)
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    torch.testing.assert_close(paged_attention(*b.args(), b.scale, b.max_query_len, b.max_seq_len), expected)


def test_bad_inputs_are_rejected() -> None:
    b = make_batch([(2, 4)], 3, 2, 16, 16, torch.float32)  # 3 heads over 2 KV heads
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_attention_ref(*b.args(), b.scale, 2, 4)
    b = make_batch([(2, 4)], 4, 2, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="int32"):
        starts = b.query_start_loc.long()
        paged_attention_ref(b.q, b.key_cache, b.value_cache, starts, b.seq_lens, b.block_tables, 1.0, 2, 4)


# ---------------------------------------------------------------- decode kernel

DECODE_LENS = [1, 2, 15, 16, 17, 100, 300]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_kernel_matches_reference(
    num_splits: int, block_size: int, group: int, head_dim: int, dtype: torch.dtype
) -> None:
    from floorline.kernels.decode_attention import decode_attention

    b = make_batch([(1, n) for n in DECODE_LENS], 2 * group, 2, head_dim, block_size, dtype)
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    out = decode_attention(
        b.q, b.key_cache, b.value_cache, b.seq_lens, b.block_tables, b.scale, b.max_seq_len,
        out=poisoned_out(b.q), num_splits=num_splits, block_n=32,
    )  # fmt: skip
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("num_splits", [None, 2, 16])
def test_decode_split_counts(num_splits: int | None) -> None:
    """Default split count, and far more splits than short sequences can use (empty splits)."""
    from floorline.kernels.decode_attention import decode_attention

    b = make_batch([(1, n) for n in (1, 33, 200)], 4, 1, 64, 16, torch.float32)
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    out = decode_attention(
        b.q, b.key_cache, b.value_cache, b.seq_lens, b.block_tables, b.scale, b.max_seq_len,
        out=poisoned_out(b.q), num_splits=num_splits, block_n=16,
    )  # fmt: skip
    assert_close(out, expected, torch.float32)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_padded_empty_sequence_writes_zeros(num_splits: int) -> None:
    """A graph-padding slot with seq_len 0 gets zeros, not NaN, and leaves its neighbours right."""
    from floorline.kernels.decode_attention import decode_attention

    b = make_batch([(1, 40), (1, 0), (1, 3)], 4, 2, 32, 16, torch.float32)
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    out = decode_attention(
        b.q, b.key_cache, b.value_cache, b.seq_lens, b.block_tables, b.scale, b.max_seq_len,
        out=poisoned_out(b.q), num_splits=num_splits, block_n=16,
    )  # fmt: skip
    assert_close(out, expected, torch.float32)
    assert (out[1] == 0).all()


def test_decode_merge_in_chunks_and_counters_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last split merges its KV head's splits a chunk at a time (here one split a chunk) and resets
    its counter: a second launch on other lengths (a graph replay) is right too."""
    import floorline.kernels.decode_attention as da

    monkeypatch.setattr(da, "MERGE_ELEMENTS", 1)
    for lens in ((70, 1, 17), (3, 64, 65)):
        b = make_batch([(1, n) for n in lens], 8, 2, 32, 16, torch.float32)
        expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
        out = da.decode_attention(b.q, b.key_cache, b.value_cache, b.seq_lens, b.block_tables, b.scale,
                                  b.max_seq_len, out=poisoned_out(b.q), num_splits=8, block_n=16)
        assert_close(out, expected, torch.float32)


def test_decode_strided_q_and_cache() -> None:
    """q as a view of a fused qkv projection and K/V as halves of one cache tensor."""
    from floorline.kernels.decode_attention import decode_attention

    b = make_batch([(1, n) for n in (5, 70)], 4, 2, 32, 16, torch.float32)
    kv = torch.stack([b.key_cache, b.value_cache], dim=1)  # [num_blocks, 2, block, kv_heads, D]
    qkv = torch.cat([b.q.flatten(1), torch.randn(b.q.shape[0], 64)], dim=1)
    q = qkv[:, : 4 * 32].view(-1, 4, 32)
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    out = decode_attention(q, kv[:, 0], kv[:, 1], b.seq_lens, b.block_tables, b.scale, b.max_seq_len, num_splits=3)
    assert_close(out, expected, torch.float32)


def test_decode_split_heuristic() -> None:
    from floorline.kernels.decode_attention import MAX_SPLITS, MIN_TOKENS_PER_SPLIT, decode_num_splits

    # Llama-3.1-8B at batch 1 on an H100 (132 SMs): about two programs per SM.
    assert decode_num_splits(1, 8, 16384, 132) * 8 >= 2 * 132
    # Short contexts: no split shorter than MIN_TOKENS_PER_SPLIT (measured faster than filling SMs).
    assert decode_num_splits(1, 8, 2048, 132) == 2048 // MIN_TOKENS_PER_SPLIT
    assert decode_num_splits(1, 8, 60, 132) == 1  # too short to split
    assert decode_num_splits(256, 8, 16384, 132) == 1  # the batch fills the GPU
    assert decode_num_splits(1, 1, 10**6, 132) == MAX_SPLITS


# ---------------------------------------------------------------- prefill kernel

PREFILL_CASES = {
    "no_prefix": [(1, 1), (17, 17), (40, 40)],
    "prefix": [(5, 37), (33, 50), (16, 16), (3, 100)],
    "mixed": [(1, 60), (24, 24), (1, 2), (0, 9), (9, 41), (1, 17)],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("case", sorted(PREFILL_CASES))
def test_prefill_kernel_matches_reference(
    case: str, block_size: int, group: int, head_dim: int, dtype: torch.dtype
) -> None:
    from floorline.kernels.prefill_attention import prefill_attention

    b = make_batch(PREFILL_CASES[case], 2 * group, 2, head_dim, block_size, dtype)
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    # Small tiles: several query tiles per sequence and several KV tiles per row.
    out = prefill_attention(*b.args(), b.scale, b.max_query_len, out=poisoned_out(b.q), block_m=32, block_n=16)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("group", [1, 4])
def test_prefill_default_tiles(group: int) -> None:
    from floorline.kernels.prefill_attention import prefill_attention

    b = make_batch([(70, 200), (1, 130), (150, 150)], 2 * group, 2, 64, 16, torch.float16)
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    out = prefill_attention(*b.args(), b.scale, b.max_query_len, out=poisoned_out(b.q))
    assert_close(out, expected, torch.float16)


# ---------------------------------------------------------------- GPU, bf16, real sizes


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4, 32])
@pytest.mark.parametrize("ctx", [2048, 16384])
def test_gpu_decode_bf16_llama8b(batch: int, ctx: int) -> None:
    lens = [max(1, ctx - 977 * i) for i in range(batch)]
    b = make_batch([(1, n) for n in lens], 32, 8, 128, 16, torch.bfloat16, device="cuda")
    expected = paged_attention_ref(*b.args(), b.scale, 1, b.max_seq_len)
    out = paged_attention(*b.args(), b.scale, 1, b.max_seq_len, out=poisoned_out(b.q))
    assert_close(out, expected, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim,group", [(128, 4), (64, 1), (128, 7), (256, 2)])
def test_gpu_prefill_bf16(head_dim: int, group: int) -> None:
    seqs = [(512, 2048), (1, 3000), (1000, 1000), (77, 1500), (1, 1)]
    b = make_batch(seqs, 4 * group, 4, head_dim, 16, torch.bfloat16, device="cuda")
    expected = paged_attention_ref(*b.args(), b.scale, b.max_query_len, b.max_seq_len)
    out = paged_attention(*b.args(), b.scale, b.max_query_len, b.max_seq_len, out=poisoned_out(b.q))
    assert_close(out, expected, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_decode_cuda_graph_replays_for_any_length() -> None:
    """One graph captured with a fixed split count is right for every length up to the bound."""
    from floorline.kernels.decode_attention import decode_attention, decode_num_splits, num_sms_of

    max_len, batch = 8192, 2
    b = make_batch([(1, max_len), (1, max_len)], 32, 8, 128, 16, torch.bfloat16, device="cuda")
    num_splits = decode_num_splits(batch, 8, max_len, num_sms_of(b.q.device))
    seq_lens = b.seq_lens.clone()
    out = torch.empty_like(b.q)

    def step() -> None:
        decode_attention(
            b.q, b.key_cache, b.value_cache, seq_lens, b.block_tables, b.scale, max_len, out=out, num_splits=num_splits
        )

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for lens in ([1, 8192], [300, 17], [4096, 5000]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        expected = paged_attention_ref(
            b.q, b.key_cache, b.value_cache, b.query_start_loc, seq_lens, b.block_tables, b.scale, 1, max_len
        )
        assert_close(out, expected, torch.bfloat16)

