"""Paged attention: the public entry, its input checks and the plain-PyTorch reference.

Layout and meaning of the inputs are those of `floorline.runner.forward_context`: the KV of all
`seq_lens[i]` context tokens is already in the cache; query token `j` of sequence `i` sits at
position `seq_lens[i] - q_len_i + j` and attends to KV positions `0..that position`. Query head
`h` reads KV head `h // (num_heads // num_kv_heads)` (grouped-query attention).

On CUDA the Triton kernels run (`paged_attention_triton`): `decode_attention` when every
sequence has one query token; in a mixed step whose first `num_decodes` sequences are decode rows
(the runner orders them so), `decode_attention` for those rows and `prefill_attention` for the
rest, into disjoint rows of one output; `prefill_attention` alone otherwise. Elsewhere the
reference runs. Triton is imported lazily so the CPU engine runs without it.
"""

from __future__ import annotations

import torch


def check_paged_inputs(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor | None,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    out: torch.Tensor | None,
) -> None:
    """Raises ValueError on shapes, dtypes or strides the kernels do not accept (no host sync).

    `query_start_loc` may be None for decode, where token `i` is the one query of sequence `i`.
    """
    if q.dim() != 3 or key_cache.dim() != 4:
        raise ValueError(
            f"expected q [num_tokens, num_heads, head_dim] and key_cache "
            f"[num_blocks, block_size, num_kv_heads, head_dim], got {tuple(q.shape)} and {tuple(key_cache.shape)}"
        )
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache {tuple(value_cache.shape)} != key_cache {tuple(key_cache.shape)}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and of the cache ({key_cache.shape[3]}) differ")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if not (q.dtype == key_cache.dtype == value_cache.dtype):
        raise ValueError(f"q, key_cache, value_cache dtypes differ: {q.dtype}, {key_cache.dtype}, {value_cache.dtype}")
    for name, t in (("q", q), ("key_cache", key_cache), ("value_cache", value_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride {t.stride(-1)})")
    num_seqs = seq_lens.shape[0]
    starts_ok = query_start_loc is None or tuple(query_start_loc.shape) == (num_seqs + 1,)
    if not starts_ok or block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        starts_shape = None if query_start_loc is None else tuple(query_start_loc.shape)
        raise ValueError(
            f"metadata shapes disagree: query_start_loc {starts_shape}, "
            f"seq_lens {tuple(seq_lens.shape)}, block_tables {tuple(block_tables.shape)}"
        )
    named = (("query_start_loc", query_start_loc), ("seq_lens", seq_lens), ("block_tables", block_tables))
    for name, t in named:
        if t is not None and t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables must be contiguous along its rows")
    if out is not None:
        if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
            raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} contiguous in head_dim")


def paged_attention_ref(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact paged attention in float32, one masked softmax per sequence -> [num_tokens, num_heads, head_dim]."""
    del max_query_len, max_seq_len  # implied by the metadata; kept for the common signature
    check_paged_inputs(q, key_cache, value_cache, query_start_loc, seq_lens, block_tables, out)
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, ctx in enumerate(lens):
        start, end = starts[i], starts[i + 1]
        q_len = end - start
        if q_len == 0:
            continue
        num_blocks = -(-ctx // block_size)
        block_ids = block_tables[i, :num_blocks].long()
        # [ctx, num_kv_heads, head_dim]: the sequence's KV in position order.
        k = key_cache[block_ids].reshape(-1, num_kv_heads, head_dim)[:ctx].float()
        v = value_cache[block_ids].reshape(-1, num_kv_heads, head_dim)[:ctx].float()
        qi = q[start:end].float().view(q_len, num_kv_heads, group, head_dim)
        scores = torch.einsum("qhgd,khd->hgqk", qi, k) * scale  # [kv_heads, group, q_len, ctx]
        q_pos = torch.arange(ctx - q_len, ctx, device=q.device)
        k_pos = torch.arange(ctx, device=q.device)
        visible = k_pos[None, :] <= q_pos[:, None]  # [q_len, ctx]
        scores.masked_fill_(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        o = torch.einsum("hgqk,khd->qhgd", probs, v).reshape(q_len, num_heads, head_dim)
        out[start:end] = o.to(out.dtype)
    return out


def paged_attention(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    num_decodes: int = 0,
) -> torch.Tensor:
    """Causal paged attention over the cache -> [num_tokens, num_heads, head_dim].

    `max_query_len == 1` selects the decode kernel (which then needs one query token per
    sequence). `num_splits` fixes the decode split count; pass it when capturing a CUDA graph
    (see `decode_attention`). `num_decodes`: the first that many sequences have one query token
    each (tokens `0..num_decodes-1`); see `paged_attention_triton`. On CPU the reference runs
    and `num_splits`, `num_decodes` are ignored.
    """
    if not q.is_cuda:
        return paged_attention_ref(
            q, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale, max_query_len, max_seq_len, out
        )
    return paged_attention_triton(
        q, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale, max_query_len, max_seq_len,
        out=out, num_splits=num_splits, num_decodes=num_decodes,
    )  # fmt: skip


def paged_attention_triton(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    num_decodes: int = 0,
) -> torch.Tensor:
    """The Triton kernels for any batch (also under TRITON_INTERPRET on CPU tensors).

    A mixed batch (`0 < num_decodes < num_seqs`, `max_query_len > 1`) is two launches: the
    flash-decoding kernel over rows `0..num_decodes-1` (a decode row in the prefill kernel would
    fill 4 of its 128 tensor-core rows and read its KV at a fraction of the bandwidth), then the
    prefill kernel over the other sequences. `num_decodes` is trusted, not checked (no host sync).
    """
    from floorline.kernels.decode_attention import decode_attention
    from floorline.kernels.prefill_attention import prefill_attention

    if max_query_len == 1:
        return decode_attention(
            q, key_cache, value_cache, seq_lens, block_tables, scale, max_seq_len, out=out, num_splits=num_splits
        )
    num_seqs = seq_lens.shape[0]
    if num_decodes <= 0 or num_decodes > num_seqs:
        return prefill_attention(
            q, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale, max_query_len, out=out
        )
    if out is None:
        out = torch.empty_like(q)
    n = num_decodes
    decode_attention(q[:n], key_cache, value_cache, seq_lens[:n], block_tables[:n], scale, max_seq_len, out=out[:n])
    prefill_attention(
        q, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale, max_query_len, out=out, first_seq=n
    )
    return out
