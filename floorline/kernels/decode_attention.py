"""Flash-decoding paged attention in Triton: one query token per sequence, KV split across programs.

Program `(seq, kv_head, split)` reads one contiguous range of the sequence's KV positions for one
KV head, once, and serves the whole group of query heads that share it (q is a
`[group, head_dim]` tile). It keeps an online softmax in float32 and, when there is more than one
split, writes a normalized partial output and its log-sum-exp (base 2); the last split of a
(sequence, KV head) to finish (a ticket, `tickets`) merges them, so there is no merge kernel.
With one split the program writes the output directly.

With PDL the program loads its first K/V tile before `gdc_wait`: every position but the newest was
written by an earlier step, so that read overlaps the previous kernel (the rotary + cache write);
the newest position, which that kernel writes, is read after the wait and folded in on its own.
On the H200 this took the bf16 step at batch 1 and context 2048 from 4.325 to 4.203 ms (int4: no
change; benchmarks/RESULTS.md, eighth session).

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
from floorline.kernels.tickets import tickets

# Programs per SM the split count aims for: enough loads in flight to saturate HBM at batch 1.
TARGET_PROGRAMS_PER_SM = 2
# A split shorter than this costs more in partial writes and merging than it gains in parallelism.
MIN_TOKENS_PER_SPLIT = 128
MAX_SPLITS = 64
# Partial-output elements the merging program loads at once (64 fp32 registers a thread on 4 warps).
MERGE_ELEMENTS = 8192
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
def _kv_tile(table_row, k_head, v_head, n0, kv_end, d, d_ok, stride_kb, stride_ks, stride_vb, stride_vs,
             BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """K and V [BLOCK_N, D_PAD] of positions n0.. (zero from kv_end on), and which positions are valid.
    V loads with K, so both tiles are in flight before the first dot."""
    pos = n0 + tl.arange(0, BLOCK_N)
    valid = pos < kv_end
    # int64 block ids: block * stride overflows int32 on large caches.
    block = tl.load(table_row + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    slot_off = pos % BLOCK_SIZE
    kv_mask = valid[:, None] & d_ok[None, :]
    k = tl.load(k_head + block[:, None] * stride_kb + slot_off[:, None] * stride_ks + d[None, :], mask=kv_mask,
                other=0.0)
    v = tl.load(v_head + block[:, None] * stride_vb + slot_off[:, None] * stride_vs + d[None, :], mask=kv_mask,
                other=0.0)
    return k, v, valid


@triton.jit
def _attend_tile(q, k, v, valid, m_i, l_i, acc, qk_scale, DOT_PRECISION: tl.constexpr):
    """The online softmax over one tile, which must hold a valid position (so the new max is finite)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [GROUP_PAD, BLOCK_N]
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _attend_one(q, k, v, m_i, l_i, acc, qk_scale):
    """The online softmax over one position: k, v [D_PAD]."""
    s = tl.sum(q.to(tl.float32) * k.to(tl.float32)[None, :], 1) * qk_scale  # [GROUP_PAD]
    m_new = tl.maximum(m_i, s)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new)
    return m_new, l_i * alpha + p, acc * alpha[:, None] + p[:, None] * v.to(tl.float32)[None, :]


@triton.jit
def _merge_splits(out_ptr, part_o_ptr, part_lse_ptr, seq, kv_head, num_active, num_splits, stride_ot, stride_oh,
                  NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, MERGE_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
                  D_PAD: tl.constexpr, CHUNK: tl.constexpr):
    """The output of the KV head's GROUP query heads from its `num_active` splits' partials (read from
    L2, where the other programs wrote them): an online softmax over chunks of CHUNK splits, which bound
    the registers; one chunk, one round of loads, covers the splits of short contexts."""
    rows = tl.arange(0, MERGE_ROWS)
    row_ok = rows < GROUP
    heads = kv_head * GROUP + rows
    base = (seq * NUM_HEADS + heads) * num_splits  # [MERGE_ROWS]: a head's first partial
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    m = tl.full([MERGE_ROWS], float("-inf"), tl.float32)
    acc = tl.zeros([MERGE_ROWS, D_PAD], tl.float32)
    denom = tl.zeros([MERGE_ROWS], tl.float32)
    for c in range(0, num_active, CHUNK):
        sc = c + tl.arange(0, CHUNK)
        ok = row_ok[:, None] & (sc < num_active)[None, :]  # [MERGE_ROWS, CHUNK]
        lse = tl.load(part_lse_ptr + base[:, None] + sc[None, :], mask=ok, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(part_o_ptr + (base[:, None, None] + sc[None, :, None]) * HEAD_DIM + d[None, None, :],
                       mask=ok[:, :, None] & d_ok[None, None, :], other=0.0, cache_modifier=".cg")
        # finite on real rows (an active split holds a position); 0 on padding rows, whose weights are 0
        m_new = tl.where(row_ok, tl.maximum(m, tl.max(lse, 1)), 0.0)
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new[:, None])
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * part, 1)
        denom = denom * alpha + tl.sum(w, 1)
        m = m_new
    o = acc / tl.where(row_ok, denom, 1.0)[:, None]
    tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_o_ptr, part_lse_ptr, cnt_ptr,
    qk_scale, num_splits,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, MERGE_ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MERGE_CHUNK: tl.constexpr,
    DIRECT_OUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr = False, EARLY_LAUNCH: tl.constexpr = False,
):  # fmt: skip
    if EARLY_LAUNCH:
        gdc_launch_dependents()  # o_proj may launch; it waits for this grid's writes
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Lengths and block tables come from the host, copied before the step: readable before gdc_wait.
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = _split_len(seq_len, num_splits, BLOCK_N)
    start = split * split_len
    if not DIRECT_OUT:
        # Splits past the end are never merged: skip them (an empty sequence's split 0 writes its zeros).
        if start >= tl.maximum(seq_len, 1):
            return
    end = tl.minimum(start + split_len, seq_len)
    # Positions before the newest were written by earlier steps, so their K/V load before gdc_wait,
    # overlapping the previous kernel; the newest one (this step's cache write) is read after it.
    newest = seq_len - 1
    kv_end = tl.minimum(end, newest)
    table_row = block_tables_ptr + seq * stride_bt
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    k, v, valid = _kv_tile(table_row, k_head, v_head, start, kv_end, d, d_ok, stride_kb, stride_ks, stride_vb,
                           stride_vs, BLOCK_SIZE, BLOCK_N)
    newest_block = tl.load(table_row + tl.maximum(newest, 0) // BLOCK_SIZE).to(tl.int64)
    if USE_PDL:
        gdc_wait()  # the previous kernel's writes (q, this step's K/V) are visible from here

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    if start < kv_end:
        m_i, l_i, acc = _attend_tile(q, k, v, valid, m_i, l_i, acc, qk_scale, DOT_PRECISION)
    for n0 in range(start + BLOCK_N, kv_end, BLOCK_N):
        k, v, valid = _kv_tile(table_row, k_head, v_head, n0, kv_end, d, d_ok, stride_kb, stride_ks, stride_vb,
                               stride_vs, BLOCK_SIZE, BLOCK_N)
        m_i, l_i, acc = _attend_tile(q, k, v, valid, m_i, l_i, acc, qk_scale, DOT_PRECISION)
    if (newest >= start) & (newest < end):
        slot_off = newest % BLOCK_SIZE
        k_new = tl.load(k_head + newest_block * stride_kb + slot_off * stride_ks + d, mask=d_ok, other=0.0)
        v_new = tl.load(v_head + newest_block * stride_vb + slot_off * stride_vs + d, mask=d_ok, other=0.0)
        m_i, l_i, acc = _attend_one(q, k_new, v_new, m_i, l_i, acc, qk_scale)

    has_kv = l_i > 0
    o = tl.where(has_kv[:, None], acc / tl.where(has_kv, l_i, 1.0)[:, None], 0.0)
    store_mask = row_ok[:, None] & d_ok[None, :]
    if DIRECT_OUT or seq_len == 0:  # one split, or a padding slot (nothing to merge)
        tl.store(
            out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=store_mask,
        )
    else:
        part = (seq * NUM_HEADS + heads) * num_splits + split  # [GROUP_PAD] row of the partials
        tl.store(part_o_ptr + part[:, None] * HEAD_DIM + d[None, :], o, mask=store_mask)
        tl.store(part_lse_ptr + part, m_i + tl.log2(l_i), mask=row_ok)
        # The last of this (sequence, KV head)'s splits to finish merges them all: no merge kernel.
        num_active = tl.cdiv(seq_len, split_len)
        counter = cnt_ptr + seq * tl.num_programs(1) + kv_head
        tl.debug_barrier()  # every thread's partials issued before the (release) ticket
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if ticket == num_active - 1:
            _merge_splits(out_ptr, part_o_ptr, part_lse_ptr, seq, kv_head, num_active, num_splits, stride_ot,
                          stride_oh, NUM_HEADS, GROUP, MERGE_ROWS, HEAD_DIM, D_PAD, MERGE_CHUNK)
            tl.store(counter, 0)  # ready for the next launch (or graph replay)


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
        counters = seq_lens  # unused placeholder (no tickets without splits)
    else:
        part_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
        counters = tickets(q.device, num_seqs * num_kv_heads, "decode_attention")
    merge_rows = triton.next_power_of_2(group)
    splits_pad = triton.next_power_of_2(num_splits)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, key_cache, value_cache, block_tables, seq_lens,
        out, part_o, part_lse, counters,
        scale * math.log2(math.e), num_splits,
        q.stride(0), q.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), MERGE_ROWS=merge_rows,
        HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_SIZE=block_size, BLOCK_N=block_n,
        MERGE_CHUNK=max(1, min(splits_pad, MERGE_ELEMENTS // (merge_rows * d_pad))),
        DIRECT_OUT=direct, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, **({} if num_stages is None else {"num_stages": num_stages}),
        **early_launch_args(q.device),
    )  # fmt: skip
    return out
