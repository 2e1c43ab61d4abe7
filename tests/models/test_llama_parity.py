"""Tiny random configs of every Llama-family variant: floorline's logits equal transformers' (fp32)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from floorline.config import ModelConfig  # noqa: E402
from floorline.runner.forward_context import AttentionMetadata, forward_context  # noqa: E402
from floorline.runner.kv_cache_alloc import allocate_kv_cache, bind_kv_cache  # noqa: E402
from floorline.weights.loader import load_model, load_model_config  # noqa: E402
from floorline.weights.resolve import resolve_model  # noqa: E402

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)

VARIANTS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama-tied-mha": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "llama3-rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "llama-linear-rope-bias": ("LlamaConfig", "LlamaForCausalLM", dict(
        attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None, head_dim=32)),
    "qwen2-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3-qknorm": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=False)),
}


def make_checkpoint(tmp_path, variant: str):
    cfg_cls, model_cls, extra = VARIANTS[variant]
    kwargs = dict(BASE, **extra)
    rope_scaling = kwargs.pop("rope_scaling", None)
    theta = kwargs.pop("rope_theta", 10000.0)
    if int(transformers.__version__.split(".")[0]) >= 5:  # v5 takes theta and scaling as rope_parameters
        kwargs["rope_parameters"] = dict(rope_scaling or {"rope_type": "default"}, rope_theta=theta)
    else:
        kwargs.update(rope_theta=theta, rope_scaling=rope_scaling)
    hf_cfg = getattr(transformers, cfg_cls)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(hf_cfg).float().eval()
    with torch.no_grad():  # make biases and norms non-trivial so a missed one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def build_floorline(path, num_blocks: int = 64, block_size: int = 8):
    source = resolve_model(str(path))
    cfg = load_model_config(source)
    model = load_model(source, cfg, torch.float32, torch.device("cpu"))
    bind_kv_cache(model, allocate_kv_cache(cfg, num_blocks, block_size, torch.float32, torch.device("cpu")))
    return model, cfg


def run_tokens(model, token_ids: list[int], start: int, block_size: int = 8) -> torch.Tensor:
    """Runs tokens at positions start.. of one sequence whose blocks are 0, 1, 2, ...; returns logits."""
    n = len(token_ids)
    positions = torch.arange(start, start + n)
    total = start + n
    num_blocks = (total + block_size - 1) // block_size
    meta = AttentionMetadata(
        slot_mapping=positions.clone(),  # block i holds positions [i*bs, (i+1)*bs): slot == position
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([total], dtype=torch.int32),
        block_tables=torch.arange(num_blocks, dtype=torch.int32)[None],
        max_query_len=n,
        max_seq_len=total,
    )
    with torch.inference_mode(), forward_context(meta):
        hidden = model(torch.tensor(token_ids), positions)
        return model.compute_logits(hidden)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_and_decode_logits_match_transformers(tmp_path, variant):
    hf = make_checkpoint(tmp_path, variant)
    model, cfg = build_floorline(tmp_path)
    assert cfg.architecture == VARIANTS[variant][1]
    ids = torch.randint(0, BASE["vocab_size"], (40,)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    # Prefill the first 30 tokens at once, then decode the rest one by one through the cache.
    got = [run_tokens(model, ids[:30], 0)]
    for i in range(30, 40):
        got.append(run_tokens(model, [ids[i]], i))
    got = torch.cat(got)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_config_fields_follow_the_family(tmp_path):
    make_checkpoint(tmp_path, "qwen3-qknorm")
    cfg = load_model_config(resolve_model(str(tmp_path)))
    assert isinstance(cfg, ModelConfig) and cfg.qk_norm and not cfg.qkv_bias and cfg.head_dim == 32
