"""Sizes and allocates the paged KV cache tensors and binds them to the model's attention layers."""

from __future__ import annotations

import torch

from floorline.config import CacheConfig, ModelConfig

_CPU_DEFAULT_KV_GB = 1.0


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * elem


def choose_num_blocks(cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device) -> int:
    """Blocks in the pool: as configured, else from a memory budget (CPU: 1 GB; GPU: free memory share)."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = kv_bytes_per_block(cfg, cache.block_size, dtype)
    if cache.kv_cache_memory_gb is not None:
        budget = cache.kv_cache_memory_gb * 1e9
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used_elsewhere = total - free
        budget = total * cache.gpu_memory_utilization - used_elsewhere
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
