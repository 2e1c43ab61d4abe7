"""Pre-quantized checkpoints: a hand-built bitsandbytes NF4 checkpoint and independently packed AWQ / GPTQ
ones load into the weights their tensors describe (computed here, not by floorline's code)."""

from __future__ import annotations

import json

import pytest
import torch

from floorline.api import LLM
from floorline.errors import UnsupportedModelError
from tests.quant.conftest import (
    LINEAR_NAMES,
    NF4_TABLE,
    expected_linear_weights,
    model_logits,
    read_checkpoint,
    write_checkpoint,
)

IDS = [5, 17, 3, 99, 140, 7, 61, 8, 200, 1, 42]


def _linear_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [n for n in tensors if n.endswith(".weight") and any(f".{p}." in n for p in LINEAR_NAMES)]


def _check_model(qdir: str, float_weights: dict[str, torch.Tensor], base: dict[str, torch.Tensor], tmp_path,
                 config: dict) -> None:
    """Every Linear dequantizes to the expected weights, and logits equal those of the float model."""
    qmodel = LLM(qdir, num_kv_blocks=16).engine.model
    for key, want in expected_linear_weights(qmodel, float_weights).items():
        idx, path = key.split(".", 1)
        layer = qmodel.layers[int(idx)].get_submodule(path)
        torch.testing.assert_close(layer.quant_method.dequantize_ref(layer), want, rtol=1e-6, atol=1e-6)
    plain = dict(base, **{f"{n}.weight": w for n, w in float_weights.items()})
    cfg = {k: v for k, v in config.items() if k != "quantization_config"}
    fdir = write_checkpoint(tmp_path / "float", cfg, plain)
    ref = model_logits(LLM(fdir, num_kv_blocks=16).engine.model, IDS)
    torch.testing.assert_close(model_logits(qmodel, IDS), ref, rtol=1e-4, atol=1e-4)


# ---- bitsandbytes NF4 -----------------------------------------------------------------------------

def _bnb_tensor(n: int, k: int, nested: bool, g: torch.Generator):
    """Random bitsandbytes NF4 tensors for an [n, k] weight and the weight they describe (flat blocks of 64,
    high nibble first; nested: absmax = map[code] * nested_absmax[block // 256] + offset)."""
    packed = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8, generator=g)
    nibbles = torch.stack([packed // 16, packed % 16], dim=1).reshape(-1).long()
    blocks = n * k // 64
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [n, k]}
    tensors = {"weight": packed.reshape(-1, 1), "weight.quant_map": NF4_TABLE.clone()}
    if nested:
        codes = torch.randint(0, 256, (blocks,), dtype=torch.uint8, generator=g)
        nested_absmax = torch.rand(-(-blocks // 256), generator=g) * 0.05
        qmap = torch.sort(torch.rand(256, generator=g) * 2 - 1).values  # any map: the file's is used
        offset = 0.03
        absmax = torch.tensor([float(qmap[int(codes[b])]) * float(nested_absmax[b // 256]) + offset
                               for b in range(blocks)])
        tensors.update({"weight.absmax": codes, "weight.nested_absmax": nested_absmax,
                        "weight.nested_quant_map": qmap})
        state.update(nested_blocksize=256, nested_dtype="float32", nested_offset=offset)
    else:
        absmax = torch.rand(blocks, generator=g) * 0.1
        tensors["weight.absmax"] = absmax
    tensors["weight.quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    weight = (NF4_TABLE[nibbles] * absmax.repeat_interleave(64)).reshape(n, k)
    return tensors, weight


@pytest.mark.parametrize("nested", [True, False])
def test_bnb_nf4_checkpoint_loads_the_weights_it_describes(quant_tiny_dir, tmp_path, nested):
    config, tensors = read_checkpoint(quant_tiny_dir)
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": nested}
    g = torch.Generator().manual_seed(11)
    out, float_weights = {}, {}
    for name in _linear_tensors(tensors):
        n, k = tensors[name].shape
        parts, float_weights[name[: -len(".weight")]] = _bnb_tensor(n, k, nested, g)
        out.update({f"{name[: -len('.weight')]}.{s}": t for s, t in parts.items()})
    base = {n: t for n, t in tensors.items() if n not in _linear_tensors(tensors)}
    qdir = write_checkpoint(tmp_path / "bnb", config, dict(base, **out))
    _check_model(qdir, float_weights, base, tmp_path, config)


# ---- AWQ and GPTQ -----------------------------------------------------------------------------------

def _pack_words(nibbles: torch.Tensor) -> torch.Tensor:
    """[..., 8] values 0..15 -> [...] int32 words, value i at bits 4i..4i+3 (written out, no shifts helper)."""
    word = torch.zeros(nibbles.shape[:-1], dtype=torch.int64)
    for i in range(8):
        word += nibbles[..., i].long() * (16**i)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def _awq_tensors(n: int, k: int, group: int, g: torch.Generator):
    codes = torch.randint(0, 16, (k, n), generator=g)  # [K, N], AWQ's orientation
    zeros = torch.randint(0, 16, (k // group, n), generator=g)
    scales = (torch.rand(k // group, n, generator=g) * 0.02).half()
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i holds column 8j + order[i]

    def pack(t):
        cols = t.reshape(t.shape[0], -1, 8)
        return _pack_words(torch.stack([cols[..., order[i]] for i in range(8)], dim=-1))

    weight = ((codes - zeros.repeat_interleave(group, 0)) * scales.float().repeat_interleave(group, 0)).t()
    return {"qweight": pack(codes), "qzeros": pack(zeros), "scales": scales}, weight


def _gptq_tensors(n: int, k: int, group: int, g: torch.Generator, v1: bool):
    codes = torch.randint(0, 16, (k, n), generator=g)
    zeros = torch.randint(1, 16, (k // group, n), generator=g)
    scales = (torch.rand(k // group, n, generator=g) * 0.02).half()
    qweight = _pack_words(codes.reshape(k // 8, 8, n).permute(0, 2, 1))  # rows 8r..8r+7 of column n
    stored = zeros - 1 if v1 else zeros
    qzeros = _pack_words(stored.reshape(k // group, n // 8, 8))
    weight = ((codes - zeros.repeat_interleave(group, 0)) * scales.float().repeat_interleave(group, 0)).t()
    g_idx = (torch.arange(k) // group).to(torch.int32)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}, weight


@pytest.mark.parametrize("fmt,group", [("awq", 64), ("gptq", 32), ("gptq_v2", 64)])
def test_awq_gptq_checkpoints_load_the_weights_they_describe(quant_tiny_dir, tmp_path, fmt, group):
    config, tensors = read_checkpoint(quant_tiny_dir)
    if fmt == "awq":
        config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm",
                                         "zero_point": True}
    else:
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False,
                                         "sym": False, "checkpoint_format": "gptq" if fmt == "gptq" else "gptq_v2"}
    g = torch.Generator().manual_seed(12)
    out, float_weights = {}, {}
    for name in _linear_tensors(tensors):
        n, k = tensors[name].shape
        prefix = name[: -len(".weight")]
        if fmt == "awq":
            parts, float_weights[prefix] = _awq_tensors(n, k, group, g)
        else:
            parts, float_weights[prefix] = _gptq_tensors(n, k, group, g, v1=fmt == "gptq")
        out.update({f"{prefix}.{s}": t for s, t in parts.items()})
    base = {n: t for n, t in tensors.items() if n not in _linear_tensors(tensors)}
    qdir = write_checkpoint(tmp_path / fmt, config, dict(base, **out))
    _check_model(qdir, float_weights, base, tmp_path, config)


def test_gptq_act_order_and_unsupported_configs_are_refused(quant_tiny_dir, tmp_path):
    config, tensors = read_checkpoint(quant_tiny_dir)
    base = {n: t for n, t in tensors.items() if n not in _linear_tensors(tensors)}
    g = torch.Generator().manual_seed(13)
    out = {}
    for name in _linear_tensors(tensors):
        n, k = tensors[name].shape
        parts, _ = _gptq_tensors(n, k, 32, g, v1=True)
        parts["g_idx"] = parts["g_idx"].flip(0)  # a permuted g_idx: act-order
        out.update({f"{name[: -len('.weight')]}.{s}": t for s, t in parts.items()})
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False}
    qdir = write_checkpoint(tmp_path / "actorder", config, dict(base, **out))
    with pytest.raises(UnsupportedModelError, match="act-order"):
        LLM(qdir, num_kv_blocks=16)
    bad = {
        "desc_act": ({"quant_method": "gptq", "bits": 4, "desc_act": True}, "desc_act=false"),
        "3bit": ({"quant_method": "gptq", "bits": 3}, "4-bit"),
        "int8": ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "LLM.int8"),
        "fp4": ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, "nf4"),
        "gemv": ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "GEMM"),
        "other": ({"quant_method": "hqq"}, "supported: awq"),
    }
    for key, (qcfg, message) in bad.items():
        qdir = write_checkpoint(tmp_path / key, dict(config, quantization_config=qcfg), base)
        with pytest.raises(UnsupportedModelError, match=message):
            LLM(qdir, num_kv_blocks=16)
