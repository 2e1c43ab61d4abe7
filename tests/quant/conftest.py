"""Fixtures of the quantization tests: a tiny random Llama checkpoint whose shapes exercise the formats
(K = 128 and 192: whole and padded int4 groups, several NF4 nested groups per shard), and helpers to
write checkpoints and read a model's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from floorline.runner.forward_context import AttentionMetadata, forward_context

VOCAB = 211


@pytest.fixture(scope="session")
def quant_tiny_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("quant-tiny-llama")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   eos_token_id=None, bos_token_id=None)
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def read_checkpoint(model_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    d = Path(model_dir)
    return json.loads((d / "config.json").read_text()), load_file(str(d / "model.safetensors"))


def write_checkpoint(out: Path, config: dict, tensors: dict[str, torch.Tensor]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    return str(out)


def copy_with_config(src: str, out: Path, **changes) -> str:
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return str(out)


LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@torch.inference_mode()
def model_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Logits [n, vocab] of one sequence, prefilled in one forward (KV blocks 1..)."""
    n = len(ids)
    blocks = list(range(1, -(-n // 16) + 1))
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([blocks[p // 16] * 16 + p % 16 for p in range(n)]),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
        block_tables=torch.tensor([blocks], dtype=torch.int32), max_query_len=n, max_seq_len=n)
    with forward_context(meta):
        return model.compute_logits(model(torch.tensor(ids), torch.arange(n)))


# The NF4 code, typed here independently of floorline's table.
NF4_TABLE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])


def expected_linear_weights(model, name_of_shard) -> dict[str, torch.Tensor]:
    """Float weight of every Linear of a floorline model, merged from per-checkpoint-name weights."""
    out = {}
    for i, layer in enumerate(model.layers):
        for merged, names in (("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj")),
                              ("self_attn.o_proj", ("o_proj",)),
                              ("mlp.gate_up_proj", ("gate_proj", "up_proj")), ("mlp.down_proj", ("down_proj",))):
            group = merged.split(".")[0]
            out[f"{i}.{merged}"] = torch.cat([name_of_shard[f"model.layers.{i}.{group}.{n}"] for n in names])
    return out
