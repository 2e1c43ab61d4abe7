"""GGUF weight source: reads a GGUF v2/v3 file, builds its HF config, yields HF-named weights.

Tensor data stays memory-mapped (copy-on-write, so torch can view it without copying the
file); one tensor at a time is dequantized, so host memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from floorline.errors import (
    CorruptFileError,
    ModelNotFoundError,
    UnsupportedModelError,
    WeightMismatchError,
)
from floorline.weights.gguf_quants import DEQUANTIZABLE_TYPES, GGML_TYPES, bits_per_weight, dequantize

__all__ = [
    "GGUFFile",
    "GGUFTensorInfo",
    "bits_per_weight",
    "gguf_to_hf_config",
    "hf_weight_name",
    "iter_hf_weights",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Metadata value type id -> little-endian numpy dtype (scalars and arrays alike).
_NUMERIC = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype("?"),
    10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8"),
}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file; `shape` is in torch order (the reverse of GGUF's `ne`)."""

    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # weights: [out_features, in_features]
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Reader:
    """Bounds-checked little-endian reads from the header part of the file."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.buf):
            raise CorruptFileError(f"{self.path}: truncated GGUF header (reading {what} past end of file)")

    def u32(self, what: str) -> int:
        self._need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self._need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        n = self.u64(what)
        self._need(n, what)
        # surrogateescape: token strings that are not valid UTF-8 keep their bytes.
        s = str(self.buf[self.pos : self.pos + n], "utf-8", "surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: int, what: str) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype, count = self.u32(what), self.u64(what)
            if etype in _NUMERIC:
                return self._numeric(_NUMERIC[etype], count, what).tolist()
            return [self.value(etype, what) for _ in range(count)]
        if vtype in _NUMERIC:
            return self._numeric(_NUMERIC[vtype], 1, what)[0].item()
        raise CorruptFileError(f"{self.path}: unknown metadata value type {vtype} in {what}")

    def _numeric(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        self._need(count * dtype.itemsize, what)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += count * dtype.itemsize
        return arr


class GGUFFile:
    """A GGUF file: `.metadata`, `.tensors` (name -> GGUFTensorInfo), `.load(name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
                if magic != GGUF_MAGIC:
                    raise CorruptFileError(
                        f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})"
                    )
                # Copy-on-write: pages are shared with the page cache until written (never),
                # and the mapping is writable so torch.frombuffer can view it without a warning.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError as e:
            raise ModelNotFoundError(f"{self.path}: GGUF file not found") from e
        except OSError as e:
            raise CorruptFileError(f"{self.path}: cannot read GGUF file ({e.strerror})") from e
        self.file_size = len(self._mm)
        buf = memoryview(self._mm)
        try:
            self._parse(_Reader(buf, self.path))
        except BaseException:
            buf.release()
            self._mm.close()
            raise
        buf.release()

    def _parse(self, r: _Reader) -> None:
        r.pos = 4
        self.version = r.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            swapped = self.version & 0xFFFF == 0 and self.version >> 16 != 0
            detail = "big-endian GGUF" if swapped else f"GGUF version {self.version}"
            raise UnsupportedModelError(
                f"{self.path}: unsupported {detail}; supported: little-endian GGUF versions "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
            )
        num_tensors, num_kv = r.u64("tensor count"), r.u64("metadata count")
        self.metadata: dict[str, Any] = {}
        for i in range(num_kv):
            key = r.string(f"metadata key #{i}")
            self.metadata[key] = r.value(r.u32(key), key)
        infos = [self._tensor_info(r) for _ in range(num_tensors)]
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0:
            raise CorruptFileError(f"{self.path}: invalid general.alignment {alignment}")
        self.data_offset = -(-r.pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, type_id, shape, rel_offset, nbytes in infos:
            start = self.data_offset + rel_offset
            if start + nbytes > self.file_size:
                raise CorruptFileError(
                    f"{self.path}: truncated file: tensor {name!r} needs bytes {start}..{start + nbytes}"
                    f" but the file has {self.file_size}"
                )
            t = GGML_TYPES[type_id]
            self.tensors[name] = GGUFTensorInfo(name, type_id, t.name, shape, start, nbytes)

    def _tensor_info(self, r: _Reader) -> tuple[str, int, tuple[int, ...], int, int]:
        name = r.string("tensor name")
        ndim = r.u32(name)
        ne = [r.u64(name) for _ in range(ndim)]
        type_id = r.u32(name)
        rel_offset = r.u64(name)
        t = GGML_TYPES.get(type_id)
        if t is None:
            known = ", ".join(f"{k}={v.name}" for k, v in GGML_TYPES.items())
            raise UnsupportedModelError(
                f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}; known: {known}"
            )
        numel = math.prod(ne)
        if ne and ne[0] % t.block_size:
            raise CorruptFileError(
                f"{self.path}: tensor {name!r} of type {t.name} has rows of {ne[0]} weights,"
                f" not a multiple of the block size {t.block_size}"
            )
        return name, type_id, tuple(reversed(ne)), rel_offset, numel // t.block_size * t.type_size

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def load(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor `name`, dequantized to `dtype`, in torch-order shape; owns its memory."""
        info = self.tensors.get(name)
        if info is None:
            raise WeightMismatchError(f"{self.path}: no tensor named {name!r}")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        return dequantize(raw, info.type_name, dtype).reshape(info.shape)

    def check_dequantizable(self) -> None:
        """Raises UnsupportedModelError, before anything loads, if a tensor type cannot be decoded."""
        bad = sorted({t.type_name for t in self.tensors.values()} - set(DEQUANTIZABLE_TYPES))
        if bad:
            raise UnsupportedModelError(
                f"{self.path}: unsupported ggml tensor type(s) {', '.join(bad)}; "
                f"supported: {', '.join(DEQUANTIZABLE_TYPES)}"
            )

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view; the map closes when that is collected

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, arch={self.architecture!r}, tensors={len(self.tensors)})"


# ---------------------------------------------------------------- HF config

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _arch(g: GGUFFile) -> str:
    arch = g.architecture
    if arch not in HF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{g.path}: unsupported GGUF architecture {arch or '(none)'!r}; "
            f"supported: {', '.join(HF_ARCHITECTURES)}"
        )
    return arch


_REQUIRED = object()


def _uniform(g: GGUFFile, key: str, default: Any = _REQUIRED) -> Any:
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
    arch = _arch(g)
    md = g.metadata
    hidden = int(_uniform(g, f"{arch}.embedding_length"))
    num_heads = int(_uniform(g, f"{arch}.attention.head_count"))
    num_kv_heads = int(_uniform(g, f"{arch}.attention.head_count_kv", num_heads))
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
        "intermediate_size": int(_uniform(g, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_uniform(g, f"{arch}.block_count")),
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


# ---------------------------------------------------------------- HF weight names

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
    arch = _arch(g)
    g.check_dequantizable()
    names = {name: hf_weight_name(name) for name in g.tensors}  # fail on unknown names first
    num_heads = int(_uniform(g, f"{arch}.attention.head_count"))
    num_kv_heads = int(_uniform(g, f"{arch}.attention.head_count_kv", num_heads))
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
