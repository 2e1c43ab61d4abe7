"""Paged attention layer: writes this step's K/V into the cache, then attends over it."""

from __future__ import annotations

import torch

from floorline.kernels.kv_write import rotary_and_cache_write
from floorline.kernels.paged_attention import paged_attention
from floorline.runner.forward_context import get_attention_metadata


class Attention(torch.nn.Module):
    """Rotary + cache write + paged attention; the runner binds `kv_cache` before the first step."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, cos_sin_cache: torch.Tensor):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.cos_sin_cache = cos_sin_cache  # [max_positions, head_dim], shared by all layers
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """q [n, hq, d], k/v [n, hk, d] (before rotary) -> [n, hq * d]."""
        meta = get_attention_metadata()
        if self.kv_cache is None:
            raise RuntimeError("attention layer has no KV cache bound")
        key_cache, value_cache = self.kv_cache
        rotary_and_cache_write(q, k, v, positions, self.cos_sin_cache, key_cache, value_cache, meta.slot_mapping)
        out = paged_attention(
            q, key_cache, value_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
            self.scale, meta.max_query_len, meta.max_seq_len, num_splits=meta.decode_num_splits,
            num_decodes=meta.num_decodes,
        )
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)
