"""CUDA graphs for decode steps: captured once per batch-size bucket, replayed with static buffers.

A decode step of an 8B model is ~300 kernel launches; launched from Python each costs several
microseconds of host time and leaves the GPU idle in between. One graph replay per step removes
those gaps. Graphs cover pure-decode batches (one new token per sequence); prefill runs eagerly.

Every graph copies its logits into one static `[max_batch, vocab]` buffer. A graph's own output
would stay allocated in the shared pool after capture, so one logits tensor per bucket would
pile up: at 512 sequences, 67 buckets hold 16,647 rows of 128,256 fp32 logits, 8.5 GB.
"""

from __future__ import annotations

import time

import torch

from floorline.config import ModelConfig
from floorline.kernels.decode_attention import decode_num_splits, num_sms_of
from floorline.kernels.stage_inputs import stage_decode_inputs
from floorline.runner.forward_context import AttentionMetadata, forward_context


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, 40, ... (steps of 8 past 8) up to max_batch."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch]
    sizes += list(range(16, max_batch, 8))
    return sorted(set(sizes + [max_batch]))


class DecodeGraphs:
    """Holds one captured graph per bucket and the static buffers every graph reads."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, max_batch: int, max_model_len: int,
                 block_size: int, device: torch.device):
        self.model = model
        self.cfg = cfg
        self.buckets = batch_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        self.max_model_len = max_model_len
        self.max_blocks = -(-max_model_len // block_size)
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, self.max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits = torch.empty(n, cfg.vocab_size, dtype=torch.float32, device=device)  # rows :b by each replay
        self.num_sms = num_sms_of(device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_seconds = 0.0
        self.pool_bytes = 0  # memory the capture reserved beyond the static buffers

    @staticmethod
    def static_bytes(max_batch: int, max_blocks: int, vocab_size: int) -> int:
        """Bytes of the static buffers `__init__` allocates (for sizing the KV pool before capture)."""
        n = max_batch
        per_row = 3 * 8 + 4 + 4 * max_blocks + 4 * vocab_size  # ids, positions, slots; seq_lens; table; logits
        return n * per_row + 4 * (n + 1)  # + query_start_loc

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:b], query_start_loc=self.query_start_loc[: b + 1],
            seq_lens=self.seq_lens[:b], block_tables=self.block_tables[:b], max_query_len=1,
            max_seq_len=self.max_model_len,
            decode_num_splits=decode_num_splits(b, self.cfg.num_kv_heads, self.max_model_len, self.num_sms),
        )

    def _forward(self, b: int) -> torch.Tensor:
        with forward_context(self._meta(b)):
            hidden = self.model(self.input_ids[:b], self.positions[:b])
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Warms up (compiles every kernel) and captures the largest bucket first so the rest share its pool."""
        t0 = time.perf_counter()
        reserved = torch.cuda.memory_reserved()
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b in reversed(self.buckets):
                for _ in range(2):
                    self._forward(b)  # slot -1: nothing is written to the cache
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    # The graph's logits are freed after capture; the pool reuses them for the next bucket.
                    self.logits[:b].copy_(self._forward(b))
                pool = graph.pool() if pool is None else pool
                self.graphs[b] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        # The warm-ups' blocks are cached for the side stream only: give them back to the device.
        torch.cuda.empty_cache()
        self.capture_seconds = time.perf_counter() - t0
        self.pool_bytes = torch.cuda.memory_reserved() - reserved

    def can_run(self, num_seqs: int, max_seq_len: int) -> bool:
        return bool(self.graphs) and num_seqs <= self.max_batch and max_seq_len <= self.max_model_len

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
            fill_from: torch.Tensor | None = None, last_sampled: torch.Tensor | None = None) -> torch.Tensor:
        """Replays the smallest bucket that holds the batch; returns logits [num_seqs, vocab]. `fill_from`
        (with `last_sampled`): token i is last_sampled[fill_from[i]] where that is >= 0."""
        n = input_ids.shape[0]
        b = next(x for x in self.buckets if x >= n)
        stage_decode_inputs((self.input_ids, self.positions, self.slot_mapping, self.seq_lens, self.block_tables),
                            input_ids, positions, meta.slot_mapping, meta.seq_lens, meta.block_tables, b,
                            fill_from, last_sampled)
        self.graphs[b].replay()
        return self.logits[:n]
