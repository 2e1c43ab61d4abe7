"""Token embedding and the LM head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from floorline.kernels.skinny_gemm import skinny_gemm
from floorline.layers.linear import Linear
from floorline.quant.context import method_for_lm_head


class Embedding(torch.nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        w = torch.empty(vocab_size, hidden_size, dtype=dtype, device=device)
        self.weight = torch.nn.Parameter(w, requires_grad=False)  # [vocab, hidden]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(torch.nn.Module):
    """logits = hidden @ W^T in float32; W is its own or the tied embedding's.

    Where the quantization config covers the LM head (`--lm-head-quantization`), W lives in a quantized
    `Linear` (`proj`) instead; a tied head quantizes the embedding's weight once it is loaded (the
    embedding itself stays 16-bit for the token lookup)."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device | str,
                 tied_to: Embedding | None = None):
        super().__init__()
        method = method_for_lm_head()
        self.proj = None if method is None else Linear(hidden_size, [vocab_size], dtype=dtype, device=device,
                                                       quant_method=method, prefix="lm_head")
        self._tied_to = [tied_to]  # a list: not registered as a second parent of the embedding
        if self.proj is None and tied_to is not None:
            self.weight = tied_to.weight
        elif self.proj is None:
            w = torch.empty(vocab_size, hidden_size, dtype=dtype, device=device)
            self.weight = torch.nn.Parameter(w, requires_grad=False)  # [vocab, hidden]

    def load_target(self) -> torch.nn.Module:
        """The module checkpoint tensors `lm_head.*` load into: the quantized Linear, or this head."""
        return self if self.proj is None else self.proj

    def finish_loading(self) -> None:
        """A tied quantized head takes the embedding's weight (the loader calls this before `proj`'s own)."""
        if self.proj is not None and self.tied:
            self.proj.load(0, "weight", self._tied_to[0].weight)

    @property
    def tied(self) -> bool:
        """Whether W is the embedding's."""
        return self._tied_to[0] is not None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(hidden).float()
        return skinny_gemm(hidden, self.weight).float()  # [num_tokens, vocab]
