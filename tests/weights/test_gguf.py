"""Tests of the GGUF weight source against llama.cpp's `gguf` package and transformers' GGUF loader."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from floorline.config import ModelConfig
from floorline.errors import (
    CorruptFileError,
    ModelNotFoundError,
    UnsupportedModelError,
    WeightMismatchError,
)
from floorline.weights.bundled import bundled_model_path
from floorline.weights.gguf_config import gguf_to_hf_config
from floorline.weights.gguf_file import GGUFFile
from floorline.weights.gguf_quants import (
    DEQUANTIZABLE_TYPES,
    GGML_TYPES,
    GGML_TYPES_BY_NAME,
    bits_per_weight,
    dequantize,
)
from floorline.weights.gguf_weights import hf_weight_name, iter_hf_weights

QT = gguf.GGMLQuantizationType
QUANT_TYPES = [t for t in DEQUANTIZABLE_TYPES if GGML_TYPES_BY_NAME[t].block_size > 1]
# Byte offsets of the fp16 scales inside each block (random bytes there could be inf/nan).
FP16_SCALES = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def _random_blocks(type_name: str, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    t = GGML_TYPES_BY_NAME[type_name]
    blocks = rng.integers(0, 256, size=(num_blocks, t.type_size), dtype=np.uint8)
    for off in FP16_SCALES[type_name]:
        scale = rng.uniform(-2.0, 2.0, size=num_blocks).astype(np.float16)
        blocks[:, off : off + 2] = scale.view(np.uint8).reshape(num_blocks, 2)
    return blocks


def _ours(raw: np.ndarray, type_name: str) -> np.ndarray:
    return dequantize(torch.from_numpy(raw.reshape(-1).copy()), type_name).numpy()


# ---------------------------------------------------------------- type table and dequantization


def test_type_table_matches_gguf():
    for qt, (block_size, type_size) in gguf.GGML_QUANT_SIZES.items():
        if int(qt) not in GGML_TYPES:
            continue  # a type newer than the table; the core types are checked below
        t = GGML_TYPES[int(qt)]
        assert (t.name, t.block_size, t.type_size) == (qt.name, block_size, type_size)
    assert set(GGML_TYPES_BY_NAME) >= {"F32", "F16", "BF16", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS"}


def test_bits_per_weight():
    assert bits_per_weight("Q4_0") == 4.5
    assert bits_per_weight("Q8_0") == 8.5
    assert bits_per_weight("Q4_K") == 4.5
    assert bits_per_weight("Q6_K") == 6.5625
    assert bits_per_weight("F16") == 16.0
    assert bits_per_weight("bf16") == 16.0
    with pytest.raises(UnsupportedModelError, match="unknown ggml type"):
        bits_per_weight("Q9_9")


@pytest.mark.parametrize("type_name", QUANT_TYPES)
def test_dequantize_random_blocks(type_name: str):
    rng = np.random.default_rng()
    blocks = _random_blocks(type_name, 37, rng)
    want = gguf.quants.dequantize(blocks, QT[type_name]).reshape(-1)
    got = _ours(blocks, type_name)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_float_types(type_name: str, dtype: torch.dtype):
    values = torch.randn(300) * 3
    raw = values.to(getattr(torch, {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[type_name]))
    raw_bytes = raw.view(torch.uint8).numpy()
    want = torch.from_numpy(gguf.quants.dequantize(raw_bytes.copy(), QT[type_name]).reshape(-1).copy())
    got = dequantize(torch.from_numpy(raw_bytes.copy()), type_name, dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)
    # An unaligned start (offset 1) is copied, not misread.
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), torch.from_numpy(raw_bytes.copy())])[1:]
    torch.testing.assert_close(dequantize(shifted, type_name, dtype), want.to(dtype), rtol=0, atol=0)


def _quantize_supported(type_name: str) -> bool:
    try:
        gguf.quants.quantize(np.zeros((1, 256), dtype=np.float32), QT[type_name])
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("type_name", [t for t in DEQUANTIZABLE_TYPES if _quantize_supported(t)])
def test_dequantize_quantized_floats(type_name: str):
    values = np.random.default_rng().standard_normal((8, 512)).astype(np.float32)
    quantized = gguf.quants.quantize(values, QT[type_name])
    want = gguf.quants.dequantize(quantized, QT[type_name]).reshape(-1)
    got = _ours(np.ascontiguousarray(quantized).view(np.uint8), type_name)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_dequantize_unsupported_type_lists_supported():
    with pytest.raises(UnsupportedModelError, match="IQ2_XXS.*supported: F32, F16, BF16, Q4_0"):
        dequantize(torch.zeros(66, dtype=torch.uint8), "IQ2_XXS")


# ---------------------------------------------------------------- reader


def _write(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, QT | None]], kv: dict | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for key, (value, vtype) in (kv or {}).items():
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    for name, (data, raw_dtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _q8_0(values: np.ndarray) -> tuple[np.ndarray, QT]:
    return gguf.quants.quantize(values, QT.Q8_0), QT.Q8_0


def test_reader_metadata_and_tensors(tmp_path: Path):
    rng = np.random.default_rng()
    V = gguf.GGUFValueType
    kv = {
        "t.u8": (200, V.UINT8), "t.i8": (-100, V.INT8), "t.u16": (60000, V.UINT16),
        "t.i16": (-30000, V.INT16), "t.u32": (4_000_000_000, V.UINT32), "t.i32": (-2_000_000_000, V.INT32),
        "t.f32": (0.5, V.FLOAT32), "t.bool": (True, V.BOOL), "t.str": ("héllo ✓", V.STRING),
        "t.u64": (2**63 + 5, V.UINT64), "t.i64": (-(2**62), V.INT64), "t.f64": (1e-300, V.FLOAT64),
        "t.ints": ([1, -2, 3], V.ARRAY), "t.strs": (["a", "", "ü"], V.ARRAY),
        "t.floats": ([0.25, -1.5], V.ARRAY), "t.bools": ([True, False], V.ARRAY),
        "t.nested": ([[1, 2], [3]], V.ARRAY),
    }
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    f16 = rng.standard_normal((5, 32)).astype(np.float16)
    q8 = rng.standard_normal((4, 64)).astype(np.float32)
    vec = rng.standard_normal(7).astype(np.float32)
    path = _write(
        tmp_path / "m.gguf", "llama",
        {"a.weight": (f32, None), "b.weight": (f16, None), "c.weight": _q8_0(q8), "d.weight": (vec, None)},
        kv,
    )
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as g:
        assert g.architecture == "llama" and g.version == 3
        for key, (value, _) in kv.items():
            assert g.metadata[key] == value, key
        for field in ref.fields.values():  # every key the reference sees, with its value
            if not field.name.startswith("GGUF.") and field.name != "t.nested":  # contents() flattens it
                assert g.metadata[field.name] == field.contents(), field.name
        assert g.tensors["a.weight"].shape == (3, 64) and g.tensors["a.weight"].type_name == "F32"
        assert g.tensors["b.weight"].type_name == "F16"
        info = g.tensors["c.weight"]
        assert (info.shape, info.type_name, info.nbytes) == ((4, 64), "Q8_0", 4 * 2 * 34)
        assert g.tensors["d.weight"].shape == (7,)
        for t in ref.tensors:
            assert g.tensors[t.name].offset == t.data_offset and g.tensors[t.name].nbytes == t.n_bytes
        torch.testing.assert_close(g.load("a.weight"), torch.from_numpy(f32), rtol=0, atol=0)
        torch.testing.assert_close(g.load("b.weight", torch.float16), torch.from_numpy(f16), rtol=0, atol=0)
        want_q8 = gguf.quants.dequantize(ref.tensors[2].data, QT.Q8_0).reshape(4, 64)
        torch.testing.assert_close(g.load("c.weight"), torch.from_numpy(want_q8), rtol=0, atol=0)
        torch.testing.assert_close(g.load("c.weight"), torch.from_numpy(q8), rtol=0.02, atol=0.02)
        torch.testing.assert_close(g.load("d.weight", torch.bfloat16), torch.from_numpy(vec).bfloat16())
        with pytest.raises(WeightMismatchError, match="no tensor named 'zz'"):
            g.load("zz")


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    data = np.random.default_rng().standard_normal((8, 64)).astype(np.float32)
    return _write(tmp_path / "s.gguf", "llama", {"x.weight": (data, None), "y.weight": (data, None)})


def test_bad_magic(tmp_path: Path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(CorruptFileError, match=r"bad\.gguf: not a GGUF file"):
        GGUFFile(path)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="not a GGUF file"):
        GGUFFile(tmp_path / "empty.gguf")
    with pytest.raises(ModelNotFoundError, match="not found"):
        GGUFFile(tmp_path / "missing.gguf")


def test_truncated_tensor_data(small_gguf: Path):
    data = small_gguf.read_bytes()
    small_gguf.write_bytes(data[:-10])
    with pytest.raises(CorruptFileError, match=r"s\.gguf: truncated file: tensor 'y\.weight'"):
        GGUFFile(small_gguf)


def test_truncated_header(small_gguf: Path):
    data = small_gguf.read_bytes()
    for cut in (6, 20, 40):
        small_gguf.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match="truncated GGUF header"):
            GGUFFile(small_gguf)


@pytest.mark.parametrize("version", [1, 4, 0x03000000])
def test_unsupported_version(small_gguf: Path, version: int):
    data = bytearray(small_gguf.read_bytes())
    data[4:8] = struct.pack("<I", version)
    small_gguf.write_bytes(bytes(data))
    detail = "big-endian" if version > 4 else f"version {version}"
    with pytest.raises(UnsupportedModelError, match=f"unsupported .*{detail}.*supported: little-endian GGUF versions 2, 3"):
        GGUFFile(small_gguf)


def test_unknown_type_id(small_gguf: Path):
    data = bytearray(small_gguf.read_bytes())
    name = b"y.weight"
    pos = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    type_pos = pos + 4 + 2 * 8  # n_dims, ne[2]
    assert struct.unpack_from("<I", data, type_pos)[0] == 0  # F32
    data[type_pos : type_pos + 4] = struct.pack("<I", 99)
    small_gguf.write_bytes(bytes(data))
    with pytest.raises(UnsupportedModelError, match="'y.weight' has unknown ggml type id 99; known: 0=F32"):
        GGUFFile(small_gguf)


def test_unsupported_tensor_type(tmp_path: Path):
    raw = np.random.default_rng().integers(0, 256, size=(2, 66), dtype=np.uint8)
    ok = np.zeros((2, 32), dtype=np.float32)
    path = _write(tmp_path / "iq.gguf", "llama", {"token_embd.weight": (ok, None), "output.weight": (raw, QT.IQ2_XXS)})
    with GGUFFile(path) as g:
        assert g.tensors["output.weight"].shape == (2, 256)
        with pytest.raises(UnsupportedModelError, match="IQ2_XXS cannot be dequantized; supported: F32"):
            g.load("output.weight")
        with pytest.raises(UnsupportedModelError, match=r"iq\.gguf: unsupported ggml tensor type\(s\) IQ2_XXS"):
            next(iter_hf_weights(g))


# ---------------------------------------------------------------- names and Q/K permutation


def test_hf_weight_names():
    assert hf_weight_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_weight_name("blk.0.attn_v.bias") == "model.layers.0.self_attn.v_proj.bias"
    assert hf_weight_name("blk.11.ffn_norm.weight") == "model.layers.11.post_attention_layernorm.weight"
    assert hf_weight_name("blk.1.attn_k_norm.weight") == "model.layers.1.self_attn.k_norm.weight"
    assert hf_weight_name("output.weight") == "lm_head.weight"
    assert hf_weight_name("output_norm.weight") == "model.norm.weight"
    assert hf_weight_name("rope_freqs.weight") is None
    with pytest.raises(WeightMismatchError, match="unknown GGUF tensor 'blk.0.ffn_gate_exps.weight'"):
        hf_weight_name("blk.0.ffn_gate_exps.weight")


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF->GGUF Q/K row order, written out independently for the test."""
    rows = w.shape[0]
    head_dim = rows // n_head
    order = [h * head_dim + half * (head_dim // 2) + i for h in range(n_head) for i in range(head_dim // 2) for half in (0, 1)]
    return w[order]


def _tiny_model(
    tmp_path: Path, arch: str, extra: dict | None = None, extra_tensors: dict[str, np.ndarray] | None = None
) -> tuple[Path, dict[str, np.ndarray]]:
    """A 1-layer model with HF-layout weights; Q/K written permuted for llama as llama.cpp does."""
    rng = np.random.default_rng()
    hidden, heads, kv_heads, head_dim, inter, vocab = 64, 4, 2, 16, 96, 50
    hf = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, hidden)),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((heads * head_dim, hidden)),
        "model.layers.0.self_attn.q_proj.bias": rng.standard_normal(heads * head_dim),
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((kv_heads * head_dim, hidden)),
        "model.layers.0.self_attn.k_proj.bias": rng.standard_normal(kv_heads * head_dim),
        "model.layers.0.self_attn.v_proj.weight": rng.standard_normal((kv_heads * head_dim, hidden)),
        "model.layers.0.self_attn.o_proj.weight": rng.standard_normal((hidden, heads * head_dim)),
        "model.layers.0.mlp.gate_proj.weight": rng.standard_normal((inter, hidden)),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((inter, hidden)),
        "model.layers.0.mlp.down_proj.weight": rng.standard_normal((hidden, inter)),
        "model.layers.0.input_layernorm.weight": rng.standard_normal(hidden),
        "model.layers.0.post_attention_layernorm.weight": rng.standard_normal(hidden),
        "model.norm.weight": rng.standard_normal(hidden),
        "lm_head.weight": rng.standard_normal((vocab, hidden)),
    }
    hf = {k: v.astype(np.float32) for k, v in hf.items()}
    gguf_names = {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    short = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    tensors = {}
    for name, w in hf.items():
        if name not in gguf_names:
            mod, suffix = name[len("model.layers.0."):].rsplit(".", 1)
            gguf_names[name] = f"blk.0.{short[mod]}.{suffix}"
        if arch == "llama" and ".q_proj." in name:
            w = _llama_cpp_permute(w, heads)
        elif arch == "llama" and ".k_proj." in name:
            w = _llama_cpp_permute(w, kv_heads)
        tensors[gguf_names[name]] = (w, None)
    V = gguf.GGUFValueType
    kv = {
        f"{arch}.embedding_length": (hidden, V.UINT32), f"{arch}.block_count": (1, V.UINT32),
        f"{arch}.feed_forward_length": (inter, V.UINT32), f"{arch}.attention.head_count": (heads, V.UINT32),
        f"{arch}.attention.head_count_kv": (kv_heads, V.UINT32), f"{arch}.context_length": (2048, V.UINT32),
        f"{arch}.rope.freq_base": (500000.0, V.FLOAT32),
        f"{arch}.attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32),
        "tokenizer.ggml.tokens": ([f"t{i}" for i in range(vocab)], V.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, V.UINT32), "tokenizer.ggml.eos_token_id": (2, V.UINT32),
        "tokenizer.ggml.eot_token_id": (3, V.UINT32),
    }
    kv.update(extra or {})
    tensors.update({name: (w, None) for name, w in (extra_tensors or {}).items()})
    path = _write(tmp_path / f"{arch}.gguf", arch, tensors, kv)
    return path, hf


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_iter_hf_weights_restores_hf_layout(tmp_path: Path, arch: str):
    path, hf = _tiny_model(tmp_path, arch)
    with GGUFFile(path) as g:
        got = dict(iter_hf_weights(g, torch.float32))
        assert set(got) == set(hf)
        for name, w in hf.items():
            torch.testing.assert_close(got[name], torch.from_numpy(w), rtol=0, atol=0, msg=name)
        cfg = gguf_to_hf_config(g)
    assert cfg["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    assert (cfg["vocab_size"], cfg["head_dim"], cfg["tie_word_embeddings"]) == (50, 16, False)
    assert cfg["eos_token_id"] == [2, 3] and cfg["rms_norm_eps"] == 1e-6 and cfg["torch_dtype"] == "float32"
    mc = ModelConfig.from_hf_dict(cfg)
    assert mc.qkv_bias and mc.eos_token_ids == (2, 3) and mc.rope_theta == 500000.0


def test_unknown_tensor_name(tmp_path: Path):
    data = np.zeros((4, 32), dtype=np.float32)
    path = _write(tmp_path / "u.gguf", "qwen2", {"token_embd.weight": (data, None), "blk.0.weird.weight": (data, None)},
                  {"qwen2.attention.head_count": (2, gguf.GGUFValueType.UINT32)})
    with GGUFFile(path) as g, pytest.raises(WeightMismatchError, match="unknown GGUF tensor 'blk.0.weird.weight'"):
        next(iter_hf_weights(g))


# ---------------------------------------------------------------- config


def test_unsupported_architecture(tmp_path: Path):
    path = _write(tmp_path / "p.gguf", "phi3", {"x.weight": (np.zeros((2, 32), np.float32), None)})
    with GGUFFile(path) as g, pytest.raises(UnsupportedModelError, match="'phi3'; supported: llama, qwen2, qwen3"):
        gguf_to_hf_config(g)


def test_qwen3_head_dim_and_linear_rope(tmp_path: Path):
    V = gguf.GGUFValueType
    extra = {"qwen3.attention.key_length": (32, V.UINT32), "qwen3.attention.value_length": (32, V.UINT32),
             "qwen3.rope.scaling.type": ("linear", V.STRING), "qwen3.rope.scaling.factor": (4.0, V.FLOAT32)}
    path, _ = _tiny_model(tmp_path, "qwen3", extra)
    with GGUFFile(path) as g:
        cfg = gguf_to_hf_config(g)
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["head_dim"] == 32
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    mc = ModelConfig.from_hf_dict(cfg)
    assert mc.qk_norm and mc.head_dim == 32 and mc.rope_scaling.rope_type == "linear"


def _hf_llama3_factors(theta: float, head_dim: int, rope: dict) -> np.ndarray:
    """transformers' llama3 inverse frequencies, as the divisors llama.cpp stores in rope_freqs."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    try:  # transformers 5 names it rope_parameters, 4.x rope_scaling + rope_theta
        config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                             rope_parameters={"rope_theta": theta, **rope})
        assert config.rope_parameters["rope_type"] == "llama3"
    except (TypeError, AttributeError, AssertionError, KeyError):
        config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                             rope_theta=theta, rope_scaling=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return (base / scaled.double()).float().numpy()


@pytest.mark.parametrize("factor,original", [(8.0, 8192), (32.0, 8192)])
def test_llama3_rope_from_rope_freqs(tmp_path: Path, factor: float, original: int):
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": original}
    # The metadata's head size of 128 (not the tensors') puts frequencies in every band.
    V = gguf.GGUFValueType
    extra = {"llama.attention.key_length": (128, V.UINT32), "llama.rope.dimension_count": (128, V.UINT32)}
    freqs = _hf_llama3_factors(500000.0, 128, rope)
    path, hf = _tiny_model(tmp_path, "llama", extra, {"rope_freqs.weight": freqs})
    with GGUFFile(path) as g:
        cfg = gguf_to_hf_config(g)
        assert {name for name, _ in iter_hf_weights(g)} == set(hf)  # rope_freqs is not a weight
    assert cfg["rope_scaling"] == rope
    assert ModelConfig.from_hf_dict(cfg).rope_scaling.factor == factor
    # Factors that no Llama 3 setting produces are refused.
    bent = freqs * np.linspace(1.0, 1.5, 64, dtype=np.float32)
    path, _ = _tiny_model(tmp_path, "llama", extra, {"rope_freqs.weight": bent})
    with GGUFFile(path) as g, pytest.raises(UnsupportedModelError, match="matches no known Llama 3 RoPE scaling"):
        gguf_to_hf_config(g)


# ---------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def bundled() -> Iterator[GGUFFile]:
    with GGUFFile(bundled_model_path()) as g:
        yield g


@pytest.mark.slow
def test_bundled_config(bundled: GGUFFile):
    cfg = gguf_to_hf_config(bundled)
    expected = {
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 30, "hidden_size": 576,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "head_dim": 64, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2, "rope_scaling": None,
        "torch_dtype": "float16",
    }
    assert {k: cfg[k] for k in expected} == expected
    mc = ModelConfig.from_hf_dict(cfg)
    assert (mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads) == (30, 576, 9, 3)
    assert sum(t.numel for t in bundled.tensors.values()) == mc.num_parameters()


@pytest.mark.slow
def test_bundled_matches_transformers_gguf_loader(bundled: GGUFFile):
    """Q/K un-permutation and dequantization equal transformers' own GGUF loader.

    `from_pretrained(dir, gguf_file=...)` needs `accelerate` and re-maps every layer's names
    (~20 s here); it delegates to `load_gguf_checkpoint`, called directly with a 1-layer model
    on the meta device that only provides the HF names.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)
    with torch.device("meta"):
        names_model = AutoModelForCausalLM.from_config(config)
    ref = load_gguf_checkpoint(str(bundled.path), return_tensors=True, model_to_load=names_model)["tensors"]
    wanted = {
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
    }
    ours = {}
    for name, w in iter_hf_weights(bundled, torch.float32):
        if name in wanted:
            ours[name] = w
        if len(ours) == len(wanted):
            break
    assert set(ours) == wanted
    for name in wanted:
        torch.testing.assert_close(ours[name], ref[name].float(), rtol=1e-6, atol=1e-7, msg=name)
    q = ours["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (576, 576) and ours["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
