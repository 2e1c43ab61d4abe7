"""The analytic decode floor, checked against hand-computed numbers."""

import json
from pathlib import Path

import pytest

from floorline.analysis.floor import decode_floor
from floorline.analysis.shapes import summarize_hf_config, summarize_model_config
from floorline.config import ModelConfig
from floorline.errors import FloorlineError

CONFIGS = Path(__file__).resolve().parents[2] / "floorline" / "configs"


def _llama8b() -> ModelConfig:
    return ModelConfig.from_hf_dict(json.loads((CONFIGS / "llama-3.1-8b.json").read_text()), "llama-3.1-8b")


# Llama-3.1-8B by hand: hidden 4096, 32 layers, 32 heads, 8 KV heads of 128, MLP 14336, vocab 128256
H, L, INTER, V = 4096, 32, 14336, 128256
LINEAR_PER_LAYER = H * H + 2 * H * (8 * 128) + H * H + 3 * H * INTER  # q, k, v, o, gate/up/down
READ_PARAMS = L * (LINEAR_PER_LAYER + 2 * H) + H + V * H  # + norms, final norm, LM head; no input embedding
KV_PER_TOKEN = L * 2 * 8 * 128 * 2


def test_llama8b_parameters_and_kv():
    cfg = _llama8b()
    assert cfg.num_parameters() * 2 / 1e9 == pytest.approx(16.06, abs=0.005)
    assert READ_PARAMS + V * H == cfg.num_parameters()
    assert KV_PER_TOKEN == 131072


@pytest.mark.parametrize("context,expected_ms", [(2048, 5.30), (16384, 5.96)])
def test_llama8b_floor_at_2_88_tbs(context, expected_ms):
    r = decode_floor(_llama8b(), "h100", context, 1, "bf16", "bf16", bandwidth=2.88e12)
    hand = (2 * READ_PARAMS + KV_PER_TOKEN * context) / 2.88e12
    assert r.weight_bytes == 2 * READ_PARAMS
    assert r.kv_bytes == KV_PER_TOKEN * context
    assert r.floor_s == pytest.approx(hand, rel=1e-12)
    assert round(r.floor_s * 1e3, 2) == expected_ms
    assert r.bound == "memory" and r.bandwidth_source == "given"
    assert r.tokens_per_s == pytest.approx(1 / hand)


def test_flops_and_compute_time():
    r = decode_floor(_llama8b(), "h100", 4096, batch=8)
    matmul = 2 * (READ_PARAMS - (L * 2 * H + H)) * 8  # norms are not multiplied
    attn = 4 * L * 32 * 128 * 4096 * 8
    assert r.flops == matmul + attn
    assert r.compute_time_s == pytest.approx((matmul + attn) / 989e12)
    assert r.bandwidth == 3.35e12 and r.bandwidth_source == "datasheet"


def test_compute_bound_at_large_batch():
    r = decode_floor(_llama8b(), "l4", 128, batch=1024)
    assert r.bound == "compute" and r.floor_s == r.compute_time_s


def test_tied_head_counts_once():
    cfg = ModelConfig.from_hf_dict(json.loads((CONFIGS / "llama-3.2-1b.json").read_text()), "llama-3.2-1b")
    r = decode_floor(cfg, "h100", 1)
    assert r.weight_bytes == 2 * cfg.num_parameters()  # the embedding is read once, as the head


def test_quantized_head_rule():
    cfg = _llama8b()
    int4 = decode_floor(cfg, "h100", 1, weight_format="int4")
    assert int4.lm_head_format == "bf16"
    q4k = decode_floor(cfg, "h100", 1, weight_format="q4_k")
    assert q4k.lm_head_format == "Q4_K"
    assert q4k.weight_bytes == pytest.approx((READ_PARAMS - L * 2 * H - H) * 4.5 / 8 + 2 * (L * 2 * H + H))


def test_shapes_from_dict_match_model_config():
    for path in CONFIGS.glob("*.json"):
        d = json.loads(path.read_text())
        if d["model_type"] == "deepseek_v3":
            continue
        cfg = ModelConfig.from_hf_dict(d, path.stem)
        assert summarize_hf_config(d, path.stem).total_params() == cfg.num_parameters(), path.stem
        assert summarize_model_config(cfg).total_params() == cfg.num_parameters(), path.stem


def test_bad_inputs():
    cfg = _llama8b()
    with pytest.raises(FloorlineError, match="200000.*131072"):
        decode_floor(cfg, "h100", 200000)
    with pytest.raises(FloorlineError, match="unknown GPU"):
        decode_floor(cfg, "v100", 2048)
    with pytest.raises(FloorlineError, match="batch"):
        decode_floor(cfg, "h100", 2048, batch=0)
