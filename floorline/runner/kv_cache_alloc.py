"""Sizes and allocates the paged KV cache tensors and binds them to the model's attention layers."""

from __future__ import annotations

import torch

from floorline.config import CacheConfig, ModelConfig

_CPU_DEFAULT_KV_GB = 1.0


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * elem


def choose_num_blocks(cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device,
                      activation_bytes: int = 0) -> int:
    """Blocks in the pool: as configured, else from a memory budget (CPU: 1 GB; GPU: the share of
    the card's memory `gpu_memory_utilization` allows, less what is in use and the activation peak
    of the largest step measured by `profile_activation_bytes`)."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = kv_bytes_per_block(cfg, cache.block_size, dtype)
    if cache.kv_cache_memory_gb is not None:
        budget = cache.kv_cache_memory_gb * 1e9
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used_elsewhere = total - free
        budget = total * cache.gpu_memory_utilization - used_elsewhere - activation_bytes
    else:
        budget = _CPU_DEFAULT_KV_GB * 1e9
    return max(int(budget // per_block), 2)


@torch.inference_mode()
def profile_activation_bytes(model: torch.nn.Module, cfg: ModelConfig, num_tokens: int, num_seqs: int,
                             block_size: int, dtype: torch.dtype, device: torch.device,
                             max_positions: int) -> int:
    """Peak memory of one forward over `num_tokens` (the step budget) plus logits for `num_seqs`
    rows, above what is allocated now; measured so the KV pool leaves room for it."""
    from floorline.runner.forward_context import AttentionMetadata, forward_context

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    bind_kv_cache(model, allocate_kv_cache(cfg, 1, block_size, dtype, device))
    n = num_tokens
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
        model.compute_logits(hidden[: min(num_seqs, n)])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    for layer in model.attention_layers():
        layer.kv_cache = None
    del hidden
    torch.cuda.empty_cache()
    return int(peak)


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(cfg.num_layers)]


def bind_kv_cache(model: torch.nn.Module, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    layers = model.attention_layers()
    if len(layers) != len(caches):
        raise ValueError(f"{len(layers)} attention layers but {len(caches)} KV caches")
    for layer, cache in zip(layers, caches):
        layer.kv_cache = cache
