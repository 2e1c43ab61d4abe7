"""Varlen paged prefill attention in Triton: many sequences (chunks) of any q_len in one launch.

Program `(seq, tile, kv_head)` owns `TOKENS_PER_TILE` consecutive query tokens of one sequence
and all `group` query heads that share `kv_head`, packed as `BLOCK_M = tokens * group` rows (row
`r` is token `r // group`, head `r % group`), so each KV tile is read once per group and both
products run on tensor cores (`tl.dot`). It walks the sequence's KV through the block table with
an online softmax in float32: first the tiles every row sees in full (the cached prefix and
earlier chunk tokens, no mask), then the causal diagonal; tiles past the diagonal are never read.
Tile 0 of the grid is each sequence's *last* (most KV) tile, so the heaviest programs start
first and the short ones fill the tail. Tiles past a sequence's `q_len` exit at once.

`first_seq` skips the leading sequences: the runner puts a mixed step's decode rows (q_len 1)
first and sends them to the flash-decoding kernel (`paged_attention`), this kernel takes the rest.
Launch parameters (`block_m`, `block_n`, `num_warps`, `num_stages`) are settable for the sweep in
`floorline.bench.prefill_attention`.
"""

from __future__ import annotations

import math

import torch
from floorline.kernels.triton_compat import tl, triton

from floorline.kernels.paged_attention import check_paged_inputs

# Defaults for head_dim <= 128. The reasoning they started from: 128 packed rows (32 tokens x 4
# heads for Llama GQA) per program give each KV tile 128 uses, as in FlashAttention-2; 64-position
# KV tiles keep the fp32 score tile, the accumulator and P within 8 warps' registers; the K/V
# gathers are pipelined (cp.async) so the block-table indirection's latency hides behind the
# previous tile's wgmmas. Compiled for sm_90 with Triton 3.9 (no GPU needed: ptxas), Llama-8B heads,
# bf16: 181 registers, no spills, 96 KB of shared memory, wgmma, async copies; 128-wide KV tiles
# need 236-242 registers and 160 KB, and 4 warps at 128 rows spill.
# H200, 2026-12-01: the sweep (`python -m floorline.bench.prefill_attention --quick`, geometric mean
# over 16x512, 16x512+1536, 4x2048, 1x8192) put 4 warps first (531.6 us against 599.3 for 8), but in
# `bench throughput` at 256 sequences 4 warps gave 6,040 output tok/s against 6,499 for 8: 8 stay.
BLOCK_M = 128
BLOCK_N = 64
NUM_WARPS = 8
NUM_STAGES = 3


@triton.jit
def _load_kv(ptrs, valid, d_ok, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr):
    """A [BLOCK_N, D_PAD] K or V tile: rows masked by `valid` on the diagonal (CAUSAL), columns by `d_ok`.

    Full tiles of a power-of-two head_dim load without a mask (wide, unpredicated loads).
    """
    if CAUSAL:
        if EVEN_D:
            t = tl.load(ptrs, mask=valid[:, None], other=0.0)
        else:
            t = tl.load(ptrs, mask=valid[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            t = tl.load(ptrs)
        else:
            t = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return t


@triton.jit
def _attend_tile(
    q, acc, m_i, l_i, n0, kv_end, row_pos,
    table_row, k_head, v_head, d, d_ok,
    qk_scale, stride_kb, stride_ks, stride_vb, stride_vs,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over KV positions n0..n0+BLOCK_N (masked only when CAUSAL)."""
    pos = n0 + tl.arange(0, BLOCK_N)
    valid = pos < kv_end  # read only when CAUSAL (dead code otherwise)
    if CAUSAL:
        block = tl.load(table_row + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    else:
        block = tl.load(table_row + pos // BLOCK_SIZE).to(tl.int64)
    slot_off = pos % BLOCK_SIZE
    k_ptrs = k_head + block[:, None] * stride_kb + slot_off[:, None] * stride_ks + d[None, :]
    v_ptrs = v_head + block[:, None] * stride_vb + slot_off[:, None] * stride_vs + d[None, :]
    k = _load_kv(k_ptrs, valid, d_ok, CAUSAL, EVEN_D)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
    if CAUSAL:
        s = tl.where((pos[None, :] <= row_pos[:, None]) & valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_kv(v_ptrs, valid, d_ok, CAUSAL, EVEN_D)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=["first_seq"])
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr,
    query_start_loc_ptr, seq_lens_ptr, block_tables_ptr,
    qk_scale, first_seq,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    TOKENS_PER_TILE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0) + first_seq
    kv_head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    # Reversed: grid tile 0 is the sequence's last tile, the one that reads the most KV.
    tile = tl.cdiv(q_len, TOKENS_PER_TILE) - 1 - tl.program_id(1)
    if tile < 0:
        return
    tok0 = tile * TOKENS_PER_TILE
    seq_len = tl.load(seq_lens_ptr + seq)
    first_pos = seq_len - q_len + tok0  # position of the tile's first query token

    rows = tl.arange(0, BLOCK_M)
    tok = tok0 + rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    row_ok = (rows < TOKENS_PER_TILE * GROUP) & (tok < q_len)
    # Padding rows get positions >= seq_len: they see every KV position, so stay finite.
    row_pos = first_pos + rows // GROUP
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    tok_idx = (q_start + tok).to(tl.int64)
    io_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + tok_idx[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :], mask=io_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    table_row = block_tables_ptr + seq * stride_bt
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    # Positions 0..first_pos are visible to every row: whole tiles there need no mask.
    full_end = (first_pos + 1) // BLOCK_N * BLOCK_N
    # One past the last valid row's position (<= seq_len).
    kv_end = tl.minimum(first_pos + TOKENS_PER_TILE, seq_len)
    for n0 in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, n0, kv_end, row_pos, table_row, k_head, v_head, d, d_ok,
            qk_scale, stride_kb, stride_ks, stride_vb, stride_vs,
            BLOCK_SIZE, BLOCK_N, False, HEAD_DIM == D_PAD, DOT_PRECISION,
        )  # fmt: skip
    # The diagonal. A row sees position first_pos here or in the loop above, so m_i stays finite.
    for n0 in range(full_end, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, n0, kv_end, row_pos, table_row, k_head, v_head, d, d_ok,
            qk_scale, stride_kb, stride_ks, stride_vb, stride_vs,
            BLOCK_SIZE, BLOCK_N, True, HEAD_DIM == D_PAD, DOT_PRECISION,
        )  # fmt: skip

    o = acc / l_i[:, None]
    tl.store(
        out_ptr + tok_idx[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=io_mask,
    )


def default_launch(head_dim: int, group: int, block_m: int | None = None) -> dict[str, int]:
    """Launch parameters used when none are given (see the module constants for why); a given
    `block_m` is raised to hold one token's whole group, and the warps follow it."""
    d_pad = triton.next_power_of_2(head_dim)
    wide = d_pad <= 128
    block_m = max(block_m or (BLOCK_M if wide else 64), 16, triton.next_power_of_2(group))
    return {
        "block_m": block_m,
        "block_n": BLOCK_N if wide else 32,
        "num_warps": NUM_WARPS if block_m >= 128 else 4,
        "num_stages": NUM_STAGES if wide else 2,
    }


def prefill_attention(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    first_seq: int = 0,
) -> torch.Tensor:
    """Causal varlen paged attention for any mix of q_len (>= 0) -> [num_tokens, num_heads, head_dim].

    Only sequences `first_seq..` are computed (their rows of `out`); `max_query_len` may be the
    whole batch's. Unset launch parameters come from `default_launch`.
    """
    check_paged_inputs(q, key_cache, value_cache, query_start_loc, seq_lens, block_tables, out)
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    if out is None:
        out = torch.empty_like(q)
    if num_seqs <= first_seq or num_tokens == 0 or max_query_len <= 0:
        return out
    d_pad = triton.next_power_of_2(head_dim)
    launch = default_launch(head_dim, group, block_m)
    block_m = launch["block_m"]
    block_n = launch["block_n"] if block_n is None else block_n
    num_warps = launch["num_warps"] if num_warps is None else num_warps
    num_stages = launch["num_stages"] if num_stages is None else num_stages
    tokens_per_tile = block_m // group
    grid = (num_seqs - first_seq, triton.cdiv(max_query_len, tokens_per_tile), num_kv_heads)
    _prefill_kernel[grid](
        q, key_cache, value_cache, out,
        query_start_loc, seq_lens, block_tables,
        scale * math.log2(math.e), first_seq,
        q.stride(0), q.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        TOKENS_PER_TILE=tokens_per_tile, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
