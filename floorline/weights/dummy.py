"""Random weights of a real model's shape, for speed work where the weights cannot be had."""

from __future__ import annotations

import torch


@torch.no_grad()
def init_dummy_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fills every parameter in place on its own device: norms get ones, the rest N(0, std)."""
    gen_by_device: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if "norm" in name:
            param.fill_(1.0)
            continue
        gen = gen_by_device.get(param.device)
        if gen is None:
            gen = gen_by_device[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        if param.dtype.is_floating_point:
            param.normal_(0.0, std, generator=gen)
        else:  # packed quantized weights: random bytes
            param.copy_(torch.randint(0, 256, param.shape, generator=gen, device=param.device).to(param.dtype))
