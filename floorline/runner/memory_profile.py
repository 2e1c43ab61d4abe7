"""Profile run before the KV pool is sized: the peak memory of the largest eager step and of one
decode forward at full batch (what a CUDA-graph pool will hold), measured on the GPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floorline.config import ModelConfig
from floorline.runner.forward_context import AttentionMetadata, forward_context
from floorline.runner.kv_cache_alloc import allocate_kv_cache, bind_kv_cache
from floorline.runner.sampler import Sampler, SamplingMetadata
from floorline.sampling_params import SamplingParams


@dataclass(frozen=True)
class MemoryProfile:
    """Bytes above what was allocated before the profile (weights)."""

    step_bytes: int  # forward of the step budget, logits and sampling for max_num_seqs rows
    decode_forward_bytes: int  # forward + logits of max_num_seqs one-token rows


def hungriest_sampling_params(num_rows: int) -> list[SamplingParams]:
    """Settings that take the sampler's most memory-hungry path: top-p without top-k (a full sort
    of the vocabulary), min-p, all penalties, top logprobs, greedy and random rows mixed."""
    hungry = SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05, repetition_penalty=1.1, presence_penalty=0.1,
                            frequency_penalty=0.1, logprobs=20, max_tokens=16)
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    return [greedy if i % 8 == 7 else hungry for i in range(num_rows)]


def run_hungriest_sampling(logits: torch.Tensor) -> torch.Tensor:
    """Samples `logits` [rows, vocab] with `hungriest_sampling_params` (any device) -> token ids [rows]."""
    rows, vocab = logits.shape
    params = hungriest_sampling_params(rows)
    history = [list(range(16)) for _ in range(rows)]
    meta = SamplingMetadata.build(params=params, prompt_token_ids=history, output_token_ids=history,
                                  generators=[None] * rows, vocab_size=vocab, device=logits.device)
    return Sampler()(logits, meta).token_ids


def _forward_peak(model: torch.nn.Module, num_tokens: int, num_logits: int, block_size: int,
                  device: torch.device, max_positions: int, sample: bool) -> int:
    """Peak bytes above the current allocation of one forward over `num_tokens` (one sequence, no KV
    written), logits for its last `num_logits` rows and, with `sample`, sampling them."""
    n = num_tokens
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    meta = AttentionMetadata(  # one sequence; slot -1 writes nothing; every table entry is block 0
        slot_mapping=torch.full((n,), -1, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=device),
        block_tables=torch.zeros(1, -(-n // block_size), dtype=torch.int32, device=device),
        max_query_len=n, max_seq_len=n,
    )
    with forward_context(meta):
        hidden = model(torch.zeros(n, dtype=torch.int64, device=device),
                       torch.arange(n, device=device) % max_positions)
    logits = model.compute_logits(hidden[n - num_logits:])
    if sample:
        run_hungriest_sampling(logits)
    torch.cuda.synchronize(device)
    del hidden, logits
    return int(torch.cuda.max_memory_allocated(device) - base)


@torch.inference_mode()
def profile_memory(model: torch.nn.Module, cfg: ModelConfig, num_tokens: int, num_seqs: int, block_size: int,
                   dtype: torch.dtype, device: torch.device, max_positions: int) -> MemoryProfile:
    """Measures both peaks with a one-block KV cache bound (unbound again afterwards)."""
    bind_kv_cache(model, allocate_kv_cache(cfg, 1, block_size, dtype, device))
    rows = min(num_seqs, num_tokens)
    step = _forward_peak(model, num_tokens, rows, block_size, device, max_positions, sample=True)
    decode = _forward_peak(model, rows, rows, block_size, device, max_positions, sample=False)
    for layer in model.attention_layers():
        layer.kv_cache = None
    torch.cuda.empty_cache()
    # The one-block cache was allocated before `base`, so neither peak counts it.
    return MemoryProfile(step_bytes=step, decode_forward_bytes=decode)
