"""The one home of attention metadata: built by the runner per step, read by attention layers.

KV cache layout (per layer): `key_cache` and `value_cache`, each
`[num_blocks, block_size, num_kv_heads, head_dim]`. A token's slot is
`block_id * block_size + offset`; `slot_mapping` gives the slot of every token computed this step.

Tokens of all sequences are flattened into one batch (`[num_tokens, ...]`). Sequence `i` owns
tokens `query_start_loc[i]:query_start_loc[i+1]`; they are the *last* `q_len` tokens of a context
of `seq_lens[i]` tokens, so query token `j` of sequence `i` sits at position
`seq_lens[i] - q_len + j` and attends (causally) to KV positions `0..that position`.
The KV of the new tokens is written to the cache before attention reads it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class AttentionMetadata:
    """Per-step inputs of paged attention (shared by every layer)."""

    slot_mapping: torch.Tensor  # [num_tokens] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, context length after this step
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    max_query_len: int
    max_seq_len: int
    # Decode split count fixed for a captured CUDA graph (None: chosen from max_seq_len per call).
    decode_num_splits: int | None = None
    # The first num_decodes sequences have one query token each (tokens 0..num_decodes-1): in a
    # mixed step the GPU runs them through the decode kernel, the rest through the prefill kernel.
    num_decodes: int = 0

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


_current: AttentionMetadata | None = None


@contextmanager
def forward_context(meta: AttentionMetadata | None) -> Iterator[None]:
    """Installs `meta` for the duration of one model forward."""
    global _current
    previous, _current = _current, meta
    try:
        yield
    finally:
        _current = previous


def get_attention_metadata() -> AttentionMetadata:
    if _current is None:
        raise RuntimeError("attention ran outside forward_context(): the runner must install metadata")
    return _current
