"""Sizes and allocates the paged KV cache tensors and binds them to the model's attention layers."""

from __future__ import annotations

import torch

from floorline.config import CacheConfig, ModelConfig
from floorline.runner.cuda_graphs import DecodeGraphs

_CPU_DEFAULT_KV_GB = 1.0


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * elem


# What neither the profile nor the graph arithmetic sees: Triton modules first compiled during
# graph capture, the capture stream's cuBLAS workspace, allocator rounding in the graph pool.
GRAPH_SLACK_BYTES = 256 * 2**20


def graph_reserve_bytes(max_batch: int, max_model_len: int, block_size: int, vocab_size: int,
                        decode_forward_bytes: int) -> int:
    """Memory the decode CUDA graphs take after the KV pool exists: their static buffers, and one
    pool (shared by every bucket, captured largest first) holding the largest bucket's forward and
    logits, as measured by `profile_memory`'s `decode_forward_bytes`."""
    max_blocks = -(-max_model_len // block_size)
    static = DecodeGraphs.static_bytes(max_batch, max_blocks, vocab_size)  # the largest bucket is max_batch
    return static + decode_forward_bytes + GRAPH_SLACK_BYTES


def kv_budget_bytes(total: int, free: int, utilization: float, reserve: int) -> int:
    """Bytes for the KV pool: the `utilization` share of the card, less what is in use now (weights,
    CUDA context, other processes) and `reserve` (step activations, sampling, CUDA graphs)."""
    return int(total * utilization - (total - free) - reserve)


def choose_num_blocks(cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device,
                      reserve_bytes: int = 0) -> int:
    """Blocks in the pool: as configured, else from a memory budget (CPU: 1 GB; GPU:
    `kv_budget_bytes` with `reserve_bytes` from `profile_memory` and `graph_reserve_bytes`)."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = kv_bytes_per_block(cfg, cache.block_size, dtype)
    if cache.kv_cache_memory_gb is not None:
        budget = cache.kv_cache_memory_gb * 1e9
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = kv_budget_bytes(total, free, cache.gpu_memory_utilization, reserve_bytes)
    else:
        budget = _CPU_DEFAULT_KV_GB * 1e9
    return max(int(budget // per_block), 2)


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
