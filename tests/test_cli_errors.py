"""Bad input through the CLI: one clear line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from floorline.cli import main

TINY = dict(architectures=["LlamaForCausalLM"], vocab_size=32, hidden_size=16, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def write_tiny(path, config=None, drop: str | None = None, extra: str | None = None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or TINY))
    h, i = TINY["hidden_size"], TINY["intermediate_size"]
    tensors = {"model.embed_tokens.weight": torch.randn(32, h), "model.norm.weight": torch.ones(h),
               "lm_head.weight": torch.randn(32, h)}
    p = "model.layers.0"
    tensors |= {f"{p}.input_layernorm.weight": torch.ones(h), f"{p}.post_attention_layernorm.weight": torch.ones(h),
                f"{p}.self_attn.q_proj.weight": torch.randn(h, h), f"{p}.self_attn.k_proj.weight": torch.randn(8, h),
                f"{p}.self_attn.v_proj.weight": torch.randn(8, h), f"{p}.self_attn.o_proj.weight": torch.randn(h, h),
                f"{p}.mlp.gate_proj.weight": torch.randn(i, h), f"{p}.mlp.up_proj.weight": torch.randn(i, h),
                f"{p}.mlp.down_proj.weight": torch.randn(h, i)}
    if drop:
        del tensors[drop]
    if extra:
        tensors[extra] = torch.zeros(3)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def gen(path, *more: str) -> list[str]:
    return ["generate", "--model", str(path), "--device", "cpu", "-n", "2", *more]


def test_missing_path_says_where_it_looked(capsys, tmp_path):
    code, err = run_cli(capsys, *gen(tmp_path / "nope"))
    assert code == 2 and "not found" in err and str(tmp_path / "nope") in err and "shipped configs" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_unsupported_architecture_lists_supported(capsys, tmp_path):
    write_tiny(tmp_path, dict(TINY, architectures=["GPT2LMHeadModel"]))
    code, err = run_cli(capsys, *gen(tmp_path))
    assert code == 2 and "GPT2LMHeadModel" in err and "LlamaForCausalLM" in err and "Qwen3ForCausalLM" in err


def test_truncated_safetensors(capsys, tmp_path):
    write_tiny(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    code, err = run_cli(capsys, *gen(tmp_path))
    assert code == 2 and "model.safetensors" in err and "Traceback" not in err


def test_garbage_safetensors(capsys, tmp_path):
    write_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 7)
    code, err = run_cli(capsys, *gen(tmp_path))
    assert code == 2 and "not a valid safetensors file" in err


def test_missing_and_unexpected_tensors(capsys, tmp_path):
    write_tiny(tmp_path / "a", drop="model.layers.0.mlp.up_proj.weight")
    code, err = run_cli(capsys, *gen(tmp_path / "a"))
    assert code == 2 and "lacks" in err and "up_proj" in err
    write_tiny(tmp_path / "b", extra="model.layers.0.mystery.weight")
    code, err = run_cli(capsys, *gen(tmp_path / "b"))
    assert code == 2 and "mystery" in err


def test_wrong_shape(capsys, tmp_path):
    write_tiny(tmp_path, dict(TINY, intermediate_size=48))
    code, err = run_cli(capsys, *gen(tmp_path))
    assert code == 2 and "shape" in err


def test_corrupt_and_truncated_gguf(capsys, tmp_path):
    from floorline.weights.bundled import bundled_model_path

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTGGUF" + b"\x00" * 64)
    code, err = run_cli(capsys, *gen(bad))
    assert code == 2 and "GGUF" in err
    short = tmp_path / "short.gguf"
    with open(bundled_model_path(), "rb") as src:
        short.write_bytes(src.read(5_000_000))
    code, err = run_cli(capsys, *gen(short))
    assert code == 2 and "short.gguf" in err and "Traceback" not in err


def test_prompt_longer_than_context(capsys):
    code, err = run_cli(capsys, "generate", "word " * 300, "--max-model-len", "128", "--device", "cpu")
    assert code == 2 and "128" in err and "prompt" in err


def test_shipped_config_needs_dummy(capsys):
    code, err = run_cli(capsys, "generate", "--model", "llama-3.1-8b", "--device", "cpu")
    assert code == 2 and "--load-format dummy" in err


def test_invalid_sampling_value(capsys):
    code, err = run_cli(capsys, "generate", "hi", "--temperature", "-1", "--device", "cpu")
    assert code == 2 and "temperature" in err


@pytest.mark.skipif(shutil.which("floorline") is None, reason="console script not installed")
def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(["floorline", "generate", "--model", str(tmp_path / "missing")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not found" in proc.stderr


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "floorline.cli", "generate", "--model", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr
