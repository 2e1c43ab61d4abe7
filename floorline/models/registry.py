"""Maps Hugging Face `architectures` names to floorline model classes."""

from __future__ import annotations

import torch

from floorline.config import ModelConfig
from floorline.errors import UnsupportedModelError
from floorline.models.llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type[torch.nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def build_model(cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                max_positions: int | None = None) -> torch.nn.Module:
    cls = MODEL_REGISTRY.get(cfg.architecture)
    if cls is None:
        raise UnsupportedModelError(
            f"unsupported architecture {cfg.architecture}; supported: {', '.join(MODEL_REGISTRY)}"
        )
    return cls(cfg, dtype=dtype, device=device, max_positions=max_positions)
