"""The memory planner: dense and MoE (DeepSeek-V3, Mixtral) numbers and wording."""

import json
from pathlib import Path

import pytest

from floorline.analysis.plan import activation_bytes, plan
from floorline.analysis.shapes import summarize_hf_config

CONFIGS = Path(__file__).resolve().parents[2] / "floorline" / "configs"


def _cfg(name):
    return json.loads((CONFIGS / f"{name}.json").read_text())


def test_llama8b_plan_bf16():
    p = plan(summarize_hf_config(_cfg("llama-3.1-8b"), "llama-3.1-8b"), ["h100", "l4"])
    assert p.weight_bytes == 8_030_261_248 * 2
    assert round(p.weight_bytes / 1e9, 2) == 16.06
    assert p.kv_bytes_per_token == 131072
    h100, l4 = p.gpus
    acts = activation_bytes(summarize_hf_config(_cfg("llama-3.1-8b")))
    assert h100.kv_budget_bytes == pytest.approx(80e9 * 0.9 - p.weight_bytes - acts)
    blocks = int(h100.kv_budget_bytes // (131072 * 16))
    assert h100.max_context == 131072 and h100.max_context_capped
    assert h100.seqs_at_max_context == blocks // (131072 // 16)
    assert h100.seqs_at_4k == blocks // 256
    assert h100.fit == "yes" and h100.gpus_needed == 1
    l4_blocks = int(l4.kv_budget_bytes // (131072 * 16))
    assert l4.max_context == l4_blocks * 16 < 131072 and not l4.max_context_capped
    assert l4.seqs_at_max_context == 0
    assert h100.floor.context == 4096


def test_plan_int4_fp8_and_does_not_fit():
    p = plan(_cfg("llama-3.3-70b"), ["rtx4090", "h200"], "int4", "fp8")
    assert p.kv_bytes_per_token == 80 * 2 * 8 * 128 * 1
    rtx, h200 = p.gpus
    assert rtx.fit == "no" and not rtx.fits and rtx.max_context == 0 and rtx.gpus_needed >= 2
    assert h200.fit == "yes"


def test_deepseek_v3_moe_plan():
    shape = summarize_hf_config(_cfg("deepseek-v3"), "deepseek-v3")
    # by hand: MLA attention, 3 dense MLP layers, 58 MoE layers of 256 routed + 1 shared expert
    h, n = 7168, 128
    attn = h * 1536 + 1536 * n * 192 + h * 576 + 512 * n * 256 + n * 128 * h
    expert = 3 * h * 2048
    vectors = 61 * (2 * h + 512 + 1536) + 58 * 256 + h
    total = 61 * attn + 3 * 3 * h * 18432 + 58 * (257 * expert + 256 * h) + 2 * 129280 * h + vectors
    read = 61 * attn + 3 * 3 * h * 18432 + 58 * (9 * expert + 256 * h) + 129280 * h + vectors
    assert shape.total_params() == total
    assert shape.params_read_per_token() == read
    assert 665e9 < total < 675e9 and 36e9 < read < 38e9
    assert shape.experts_read(1) == pytest.approx(8)
    assert 200 < shape.experts_read(256) < 256
    p = plan(shape, ["h200"], "fp8")
    assert p.kv_bytes_per_token == 61 * (512 + 64) * 2  # MLA: latent + RoPE key per layer
    assert "all 256 experts stay resident: memory for 671B parameters; each token reads 37B" in p.params_text
    assert p.gpus[0].fit == "no" and p.gpus[0].gpus_needed == 6
    # the floor reads the active experts only
    assert p.gpus[0].floor.weight_bytes < 40e9


def test_mixtral_style_moe():
    d = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
         "num_experts_per_tok": 2, "max_position_embeddings": 32768}
    s = summarize_hf_config(d, "mixtral")
    attn = 2 * 4096 * 4096 + 2 * 4096 * 1024
    expert = 3 * 4096 * 14336
    vectors = 32 * 2 * 4096 + 4096
    assert s.total_params() == 32 * (attn + 8 * expert + 8 * 4096) + 2 * 32000 * 4096 + vectors
    assert s.params_read_per_token() == 32 * (attn + 2 * expert + 8 * 4096) + 32000 * 4096 + vectors
    assert "all 8 experts stay resident" in plan(s, ["h100"]).params_text
