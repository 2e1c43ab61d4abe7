"""HF-named weights of a GGUF file: GGUF tensor names -> HF names, tensors in HF layout."""

from __future__ import annotations

import re
from typing import Iterator

import torch

from floorline.errors import WeightMismatchError
from floorline.weights.gguf_config import supported_arch, uniform_metadata
from floorline.weights.gguf_file import GGUFFile

__all__ = ["hf_weight_name", "iter_hf_weights"]

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# RoPE tables that the model recomputes (llama3 factors are read by gguf_to_hf_config).
_SKIPPED = re.compile(r"^(rope_freqs\.weight|blk\.\d+\.attn_rot_embd(\.weight)?)$")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(\w+)\.(weight|bias)$")


def hf_weight_name(gguf_name: str) -> str | None:
    """HF name of a GGUF tensor (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`).

    None for tensors that have no HF counterpart (RoPE tables); WeightMismatchError if unknown.
    """
    if _SKIPPED.match(gguf_name):
        return None
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    m = _GLOBAL_RE.match(gguf_name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise WeightMismatchError(
        f"unknown GGUF tensor {gguf_name!r}; accepted: token_embd, output_norm, output, rope_freqs, "
        f"blk.N.{{{', '.join(_LAYER_NAMES)}}} (.weight/.bias)"
    )


def _unpermute_rows(w: torch.Tensor, n_head: int, name: str) -> torch.Tensor:
    """Undoes llama.cpp's Q/K row permutation (rotary halves -> interleaved pairs) per head."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise WeightMismatchError(f"{name}: {rows} rows cannot be split into {n_head} heads of rotary pairs")
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).transpose(1, 2).reshape(w.shape).contiguous()


def iter_hf_weights(g: GGUFFile, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (HF name, tensor) for every weight, dequantized to `dtype`, in HF layout."""
    arch = supported_arch(g)
    g.check_dequantizable()
    names = {name: hf_weight_name(name) for name in g.tensors}  # fail on unknown names first
    num_heads = int(uniform_metadata(g, f"{arch}.attention.head_count"))
    num_kv_heads = int(uniform_metadata(g, f"{arch}.attention.head_count_kv", num_heads))
    for name, hf_name in names.items():
        if hf_name is None:
            continue
        w = g.load(name, dtype)
        # Only the llama converter permutes Q/K (llama.cpp's llama RoPE rotates adjacent pairs).
        if arch == "llama" and ".attn_q." in name:
            w = _unpermute_rows(w, num_heads, name)
        elif arch == "llama" and ".attn_k." in name:
            w = _unpermute_rows(w, num_kv_heads, name)
        yield hf_name, w
