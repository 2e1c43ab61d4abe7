"""Perplexity over a token sequence with sliding windows through the engine's model, and top-1
agreement between two runs (a quantized model against the unquantized one).

Windows of `window` tokens start every `stride` tokens; each window scores only the tokens the
previous one did not (the first window scores all but its first token), so every scored token but
those of the first window sees at least `window - stride` tokens of context (with stride == window,
a window starts one token early, so that its first scored token's predecessor is in it). Each window is one
prefill of a fresh sequence through `model.forward` under attention metadata built here (KV blocks
1.. of the engine's cache; nothing is scheduled or sampled).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from floorline.errors import FloorlineError
from floorline.runner.forward_context import AttentionMetadata, forward_context

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_TEXT = DATA_DIR / "declaration_of_independence.txt"
LOGITS_CHUNK = 256  # rows of logits computed at once (bounds memory at large vocabularies)


@dataclass
class PerplexityResult:
    """Scores of the tokens at positions 1..T-1 (each predicted from the tokens before it)."""

    nll: torch.Tensor  # [T - 1] fp64 negative log-likelihoods
    top1: torch.Tensor  # [T - 1] int64 argmax predictions
    seconds: float = 0.0
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.nll.numel()

    @property
    def ppl(self) -> float:
        return math.exp(float(self.nll.mean()))

    def agreement(self, other: PerplexityResult) -> float:
        """Share of positions where both runs predict the same next token."""
        if other.top1.shape != self.top1.shape:
            raise ValueError("top-1 agreement needs two runs over the same tokens")
        return float((self.top1 == other.top1).double().mean())


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window."""
    if window < 2 or not 1 <= stride <= window:
        raise FloorlineError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}")
    out = []
    prev_end = 1
    begin = 0
    while prev_end < num_tokens:
        begin = min(begin, prev_end - 1)  # the first scored token's predecessor must be in the window
        end = min(begin + window, num_tokens)
        out.append((begin, end, prev_end))
        prev_end = end
        begin += stride
    return out


def _metadata(n: int, block_size: int, device: torch.device) -> AttentionMetadata:
    blocks = list(range(1, -(-n // block_size) + 1))  # block 0 is reserved
    slots = [blocks[p // block_size] * block_size + p % block_size for p in range(n)]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=device),
        block_tables=torch.tensor([blocks], dtype=torch.int32, device=device),
        max_query_len=n, max_seq_len=n)


@torch.inference_mode()
def perplexity(engine, token_ids: list[int], window: int = 512, stride: int = 256) -> PerplexityResult:
    """Scores `token_ids` with `engine.model` (an LLMEngine's model and KV cache)."""
    if len(token_ids) < 2:
        raise FloorlineError(f"perplexity needs at least 2 tokens, got {len(token_ids)}")
    block_size = engine.args.block_size
    need = -(-window // block_size) + 1
    if engine.num_blocks < need:
        raise FloorlineError(f"a {window}-token window needs {need} KV blocks; the engine has {engine.num_blocks}")
    if window > engine.max_model_len:
        raise FloorlineError(f"window {window} exceeds max_model_len {engine.max_model_len}")
    device, model = engine.device, engine.model
    ids = torch.tensor(token_ids, dtype=torch.int64)
    nll = torch.empty(len(token_ids) - 1, dtype=torch.float64)
    top1 = torch.empty(len(token_ids) - 1, dtype=torch.int64)
    spans = windows(len(token_ids), window, stride)
    t0 = time.perf_counter()
    for begin, end, first in spans:
        n = end - begin
        with forward_context(_metadata(n, block_size, device)):
            hidden = model(ids[begin:end].to(device), torch.arange(n, device=device))
        for lo in range(first, end, LOGITS_CHUNK):  # target positions lo..hi-1, predicted from the row before
            hi = min(end, lo + LOGITS_CHUNK)
            logits = model.compute_logits(hidden[lo - 1 - begin:hi - 1 - begin]).float()
            logp = torch.log_softmax(logits, dim=-1)
            targets = ids[lo:hi].to(device)
            nll[lo - 1:hi - 1] = -logp.gather(1, targets[:, None])[:, 0].double().cpu()
            top1[lo - 1:hi - 1] = logits.argmax(dim=-1).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PerplexityResult(nll, top1, time.perf_counter() - t0, [(b, e) for b, e, _ in spans])


def quantization_label(model: torch.nn.Module) -> str:
    """The weight formats of a built model's Linear layers, e.g. "int4", or "none"; a quantized LM head
    (`--lm-head-quantization`, which may differ) is not counted."""
    from floorline.layers.embedding import LMHead
    from floorline.layers.linear import Linear

    heads = {id(m.proj) for m in model.modules() if isinstance(m, LMHead) and m.proj is not None}
    names = sorted({m.quant_method.name for m in model.modules()
                    if isinstance(m, Linear) and id(m) not in heads} - {"none"})
    return "+".join(names) or "none"


def linear_weight_stats(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes, weights) of every Linear's stored weight tensors (codes and scales; biases excluded)."""
    from floorline.layers.linear import Linear

    nbytes = weights = 0
    for m in model.modules():
        if isinstance(m, Linear):
            weights += m.in_features * m.out_features
            for name, p in m.named_parameters(recurse=False):
                if name != "bias":
                    nbytes += p.numel() * p.element_size()
    return nbytes, weights
