"""Hugging Face config of a GGUF file: a `config.json`-style dict from its metadata (and RoPE tables)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from floorline.errors import CorruptFileError, UnsupportedModelError
from floorline.weights.gguf_file import GGUFFile

__all__ = ["HF_ARCHITECTURES", "gguf_to_hf_config", "supported_arch", "uniform_metadata"]

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def supported_arch(g: GGUFFile) -> str:
    """The file's `general.architecture`; UnsupportedModelError unless it is in HF_ARCHITECTURES."""
    arch = g.architecture
    if arch not in HF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{g.path}: unsupported GGUF architecture {arch or '(none)'!r}; "
            f"supported: {', '.join(HF_ARCHITECTURES)}"
        )
    return arch


_REQUIRED = object()


def uniform_metadata(g: GGUFFile, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value that some files store per layer (an array); it must be uniform."""
    value = g.metadata.get(key, default)
    if value is _REQUIRED:
        raise CorruptFileError(f"{g.path}: metadata key {key!r} is missing")
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise UnsupportedModelError(f"{g.path}: {key} varies per layer; only uniform layers are supported")
        value = value[0]
    return value


def _f32(x: float) -> float:
    """Shortest decimal of a float32 metadata value (9.99999974e-06 -> 1e-05), as HF writes it."""
    return float(str(np.float32(x)))


def _checkpoint_dtype(g: GGUFFile) -> str:
    """The dtype that holds most weights; quantized weights count as float16.

    The block scales of the ggml quant types are fp16, so fp16 holds dequantized weights with
    3 more mantissa bits than bf16 would; the original checkpoint dtype is not recorded.
    """
    counts: Counter[str] = Counter()
    for t in g.tensors.values():
        name = {"F32": "float32", "F64": "float32", "BF16": "bfloat16"}.get(t.type_name, "float16")
        counts[name] += t.numel
    return counts.most_common(1)[0][0] if counts else "float16"


# Llama 3.x scaling parameters to try, most common first (3.1: factor 8, 3.2: factor 32).
_LLAMA3_FACTORS = (8.0, 32.0, 16.0, 4.0, 2.0, 64.0)
_LLAMA3_LOW_HIGH = ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0), (0.5, 4.0))
_LLAMA3_ORIGINAL = (8192, 4096, 16384, 2048, 32768, 65536, 131072)


def _llama3_factors(theta: float, dim: int, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1 RoPE scaling (what llama.cpp stores as rope_freqs)."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))


def _infer_llama3_scaling(g: GGUFFile, theta: float, head_dim: int) -> dict[str, Any] | None:
    """Recovers Llama 3.1 rope_scaling from the `rope_freqs.weight` tensor by matching candidates."""
    stored = g.load("rope_freqs.weight").double().numpy().reshape(-1)
    if stored.shape[0] != head_dim // 2:
        raise UnsupportedModelError(f"{g.path}: rope_freqs.weight has {stored.shape[0]} entries, expected {head_dim // 2}")
    if np.allclose(stored, 1.0):
        return None
    top = float(np.float32(stored.max()))
    for factor in dict.fromkeys((*_LLAMA3_FACTORS, round(top, 4))):
        for low, high in _LLAMA3_LOW_HIGH:
            for original in _LLAMA3_ORIGINAL:
                want = _llama3_factors(theta, head_dim, factor, low, high, original)
                if np.allclose(stored, want, rtol=1e-5, atol=1e-6):
                    return {
                        "rope_type": "llama3",
                        "factor": factor,
                        "low_freq_factor": low,
                        "high_freq_factor": high,
                        "original_max_position_embeddings": original,
                    }
    raise UnsupportedModelError(
        f"{g.path}: rope_freqs.weight matches no known Llama 3 RoPE scaling; supported rope scaling: "
        "linear, llama3 (factor/low/high/original from the common Llama 3.x values)"
    )


def _rope_scaling(g: GGUFFile, arch: str, theta: float, head_dim: int) -> dict[str, Any] | None:
    kind = g.metadata.get(f"{arch}.rope.scaling.type")
    factor = g.metadata.get(f"{arch}.rope.scaling.factor", g.metadata.get(f"{arch}.rope.scale_linear"))
    if kind is None and factor is not None:
        kind = "linear"  # older converters wrote only rope.scale_linear
    if kind in ("linear", "yarn"):
        scaling: dict[str, Any] = {"rope_type": kind, "factor": _f32(factor or 1.0)}
        original = g.metadata.get(f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling  # ModelConfig rejects the kinds floorline does not implement (yarn)
    if kind not in (None, "none"):
        return {"rope_type": str(kind)}
    if "rope_freqs.weight" in g.tensors:
        return _infer_llama3_scaling(g, theta, head_dim)
    return None


def gguf_to_hf_config(g: GGUFFile) -> dict[str, Any]:
    """A Hugging Face `config.json`-style dict for a llama / qwen2 / qwen3 GGUF file.

    `torch_dtype` is the dtype holding most weights; quantized types count as float16.
    `eos_token_id` is a list when the file also names end-of-turn / end-of-message tokens.
    """
    arch = supported_arch(g)
    md = g.metadata
    hidden = int(uniform_metadata(g, f"{arch}.embedding_length"))
    num_heads = int(uniform_metadata(g, f"{arch}.attention.head_count"))
    num_kv_heads = int(uniform_metadata(g, f"{arch}.attention.head_count_kv", num_heads))
    head_dim = int(md.get(f"{arch}.attention.key_length", hidden // num_heads))
    value_dim = int(md.get(f"{arch}.attention.value_length", head_dim))
    rope_dim = int(md.get(f"{arch}.rope.dimension_count", head_dim))
    if value_dim != head_dim or rope_dim != head_dim:
        raise UnsupportedModelError(
            f"{g.path}: head sizes key={head_dim} value={value_dim} rotary={rope_dim} differ; "
            "supported: equal key, value and rotary sizes"
        )
    theta = float(md.get(f"{arch}.rope.freq_base", 10000.0))
    vocab = md.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = md.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else g.tensors["token_embd.weight"].shape[0]
    has_bias = "blk.0.attn_q.bias" in g.tensors
    cfg: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(uniform_metadata(g, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(uniform_metadata(g, f"{arch}.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(md.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(g, arch, theta, head_dim),
        "max_position_embeddings": int(md.get(f"{arch}.context_length", 4096)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "torch_dtype": _checkpoint_dtype(g),
    }
    if arch == "llama":
        cfg["attention_bias"] = has_bias
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in g.tensors
    for gguf_key, hf_key in (("bos", "bos_token_id"), ("padding", "pad_token_id")):
        if f"tokenizer.ggml.{gguf_key}_token_id" in md:
            cfg[hf_key] = int(md[f"tokenizer.ggml.{gguf_key}_token_id"])
    eos = [int(md[f"tokenizer.ggml.{k}_token_id"]) for k in ("eos", "eot", "eom") if f"tokenizer.ggml.{k}_token_id" in md]
    eos = list(dict.fromkeys(eos))
    if eos:
        cfg["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if md.get("general.name"):
        cfg["_name_or_path"] = str(md["general.name"])
    return cfg
