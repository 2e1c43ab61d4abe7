"""Flash-decoding paged attention in Triton: one query token per sequence, KV split across programs.

Program `(seq, kv_head, split)` reads one contiguous range of the sequence's KV positions for one
KV head, once, and serves the whole group of query heads that share it (q is a
`[group, head_dim]` tile). It keeps an online softmax in float32 and, when there is more than one
split, writes a normalized partial output and its log-sum-exp (base 2); a second kernel merges
the splits. With one split the first kernel writes the output directly.

CUDA graphs: the launch grid is `(num_seqs, num_kv_heads, num_splits)` and each program derives
its range from `seq_lens` on the device, so one captured graph serves every length as long as
`num_splits` stays fixed. By default `num_splits` follows `max_seq_len`; a runner that captures
graphs passes `num_splits=decode_num_splits(batch, num_kv_heads, max_model_len, num_sms_of(dev))`
at capture and at every replay. Short sequences then simply leave the trailing splits empty. A padding slot
with `seq_lens == 0` gets an all-zero output.
"""

from __future__ import annotations

import functools
import math

import torch
from floorline.kernels.triton_compat import tl, triton

from floorline.kernels.pdl import early_launch_args, gdc_launch_dependents, gdc_wait

from floorline.kernels.paged_attention import check_paged_inputs

# Programs per SM the split count aims for: enough loads in flight to saturate HBM at batch 1.
TARGET_PROGRAMS_PER_SM = 2
# A split shorter than this costs more in partial writes and merging than it gains in parallelism.
MIN_TOKENS_PER_SPLIT = 128
MAX_SPLITS = 64
# The SM count used off-GPU (Triton interpreter), small so interpreted grids stay cheap.
CPU_NUM_SMS = 4


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms_of(device: torch.device) -> int:
    """SM count of a CUDA device (cached), or CPU_NUM_SMS for the interpreter."""
    if device.type != "cuda":
        return CPU_NUM_SMS
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int = 132) -> int:
    """Split count that fills `num_sms` SMs without making splits shorter than MIN_TOKENS_PER_SPLIT."""
    units = max(1, num_seqs * num_kv_heads)
    wanted = -(-TARGET_PROGRAMS_PER_SM * num_sms // units)
    by_length = -(-max(1, max_seq_len) // MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_SPLITS))


@triton.jit
def _split_len(seq_len, num_splits, BLOCK_N: tl.constexpr):
    """Tokens per split for this sequence, a multiple of BLOCK_N (at least one tile)."""
    per_split = tl.cdiv(seq_len, num_splits)
    return tl.maximum(tl.cdiv(per_split, BLOCK_N), 1) * BLOCK_N


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_o_ptr, part_lse_ptr,
    qk_scale, num_splits,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    DIRECT_OUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr = False, EARLY_LAUNCH: tl.constexpr = False,
):  # fmt: skip
    if EARLY_LAUNCH:
        gdc_launch_dependents()  # the merge (or o_proj) may launch; it waits for this grid's writes
    if USE_PDL:
        gdc_wait()  # wait for the previous kernel's writes (launched early with PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = _split_len(seq_len, num_splits, BLOCK_N)
    start = split * split_len
    if not DIRECT_OUT:
        # Splits past the end are never read by the merge kernel: skip them entirely.
        if start >= seq_len:
            return
    end = tl.minimum(start + split_len, seq_len)

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    table_row = block_tables_ptr + seq * stride_bt
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        # int64 block ids: block * stride overflows int32 on large caches.
        block = tl.load(table_row + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        slot_off = pos % BLOCK_SIZE
        kv_mask = valid[:, None] & d_ok[None, :]
        k_ptrs = k_head + block[:, None] * stride_kb + slot_off[:, None] * stride_ks + d[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [GROUP_PAD, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds a valid position
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = v_head + block[:, None] * stride_vb + slot_off[:, None] * stride_vs + d[None, :]
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_kv = l_i > 0
    o = tl.where(has_kv[:, None], acc / tl.where(has_kv, l_i, 1.0)[:, None], 0.0)
    store_mask = row_ok[:, None] & d_ok[None, :]
    if DIRECT_OUT:
        tl.store(
            out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=store_mask,
        )
    else:
        part = (seq * NUM_HEADS + heads) * num_splits + split  # [GROUP_PAD] row of the partials
        tl.store(part_o_ptr + part[:, None] * HEAD_DIM + d[None, :], o, mask=store_mask)
        tl.store(part_lse_ptr + part, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _decode_merge_kernel(
    out_ptr, part_o_ptr, part_lse_ptr, seq_lens_ptr,
    num_splits,
    stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr = False, EARLY_LAUNCH: tl.constexpr = False,
):  # fmt: skip
    if EARLY_LAUNCH:
        gdc_launch_dependents()  # o_proj may launch and fetch its first weight tile meanwhile
    if USE_PDL:
        gdc_wait()
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    # Only the splits that held KV were written.
    num_active = tl.cdiv(seq_len, _split_len(seq_len, num_splits, BLOCK_N))
    base = (seq * NUM_HEADS + head) * num_splits
    idx = tl.arange(0, SPLITS_PAD)
    lse = tl.load(part_lse_ptr + base + idx, mask=idx < num_active, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # empty sequence: all weights 0
    weight = tl.exp2(lse - lse_max)  # [SPLITS_PAD]; 0 for the splits that held no KV (lse -inf)
    denom = tl.sum(weight, 0)
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    # All splits' partial outputs in one [SPLITS_PAD, D_PAD] load: one memory latency, not one a split.
    part = tl.load(part_o_ptr + (base + idx)[:, None] * HEAD_DIM + d[None, :],
                   mask=(idx < num_active)[:, None] & d_ok[None, :], other=0.0)
    acc = tl.sum(weight[:, None] * part, axis=0)
    o = tl.where(denom > 0, acc / tl.where(denom > 0, denom, 1.0), 0.0)
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d_ok)


def decode_attention(
    q: torch.Tensor,  # [num_seqs, num_heads, head_dim]: one query token per sequence
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    max_seq_len: int,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Decode attention (token `i` is the last position of sequence `i`) -> [num_seqs, num_heads, head_dim].

    No host synchronization: safe to capture in a CUDA graph with a fixed `num_splits`.
    """
    check_paged_inputs(q, key_cache, value_cache, None, seq_lens, block_tables, out)
    num_seqs, num_heads, head_dim = q.shape
    if num_seqs != seq_lens.shape[0]:
        raise ValueError(f"decode needs one query token per sequence: {num_seqs} tokens, {seq_lens.shape[0]} sequences")
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if num_splits is None:
        num_splits = decode_num_splits(num_seqs, num_kv_heads, max_seq_len, num_sms_of(q.device))
    d_pad = triton.next_power_of_2(head_dim)
    if block_n is None:
        # 128-token tiles, 2 stages: fastest on the H100 sweep (bench/attention.py, Llama-8B shape,
        # batch 1: 9.7 vs 10.9 us at 2k context, 31.8 vs 32.5 us at 16k; benchmarks/RESULTS.md).
        block_n = 128 if d_pad <= 128 else 32
        num_stages = 2 if num_stages is None else num_stages
    direct = num_splits == 1
    if direct:
        part_o = part_lse = out  # unused placeholders
    else:
        part_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, key_cache, value_cache, block_tables, seq_lens,
        out, part_o, part_lse,
        scale * math.log2(math.e), num_splits,
        q.stride(0), q.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_SIZE=block_size, BLOCK_N=block_n,
        DIRECT_OUT=direct, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, **({} if num_stages is None else {"num_stages": num_stages}),
        **early_launch_args(q.device),
    )  # fmt: skip
    if not direct:
        _decode_merge_kernel[(num_seqs, num_heads)](
            out, part_o, part_lse, seq_lens,
            num_splits,
            out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, D_PAD=d_pad,
            SPLITS_PAD=triton.next_power_of_2(num_splits), BLOCK_N=block_n,
            num_warps=1 if d_pad <= 128 else 2, **early_launch_args(q.device),
        )  # fmt: skip
    return out
