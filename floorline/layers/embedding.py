"""Token embedding and the LM head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.kernels.skinny_gemm import skinny_gemm


class Embedding(torch.nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        w = torch.empty(vocab_size, hidden_size, dtype=dtype, device=device)
        self.weight = torch.nn.Parameter(w, requires_grad=False)  # [vocab, hidden]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(torch.nn.Module):
    """logits = hidden @ W^T in float32; W is its own or the tied embedding's."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device | str,
                 tied_to: Embedding | None = None):
        super().__init__()
        self.tied = tied_to is not None
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            w = torch.empty(vocab_size, hidden_size, dtype=dtype, device=device)
            self.weight = torch.nn.Parameter(w, requires_grad=False)  # [vocab, hidden]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return skinny_gemm(hidden, self.weight).float()  # [num_tokens, vocab]
