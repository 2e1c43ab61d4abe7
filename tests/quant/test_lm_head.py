"""`--lm-head-quantization`: the LM head stored quantized, tied or not, in the weights' format or another;
its checkpoint round trip and the errors a request it cannot honour gets."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from floorline.api import LLM
from floorline.cli import main
from floorline.errors import FloorlineError
from floorline.layers.linear import Linear
from tests.quant.conftest import copy_with_config, model_logits, read_checkpoint

FORMATS = ("int8", "int4", "nf4", "fp8")
IDS = [5, 17, 3, 99, 140, 7, 61, 8, 200, 1, 42, 13]
# the tiny model's head alone, quantized: relative error of its logits for the same hidden states
HEAD_ERROR = {"int8": 0.01, "fp8": 0.05, "int4": 0.15, "nf4": 0.15}


@torch.inference_mode()
def _head_check(model, float_weight: torch.Tensor, fmt: str) -> None:
    """The head is a quantized Linear in `fmt` whose logits are its dequantized weight's, close to float."""
    proj = model.lm_head.proj
    assert isinstance(proj, Linear) and proj.quant_method.name == fmt
    hidden = torch.randn(5, float_weight.shape[1], dtype=float_weight.dtype)
    logits = model.compute_logits(hidden)
    dequantized = F.linear(hidden.float(), proj.quant_method.dequantize_ref(proj).float())
    torch.testing.assert_close(logits, dequantized, rtol=2e-2, atol=2e-2)
    exact = F.linear(hidden.float(), float_weight.float())
    err = float((logits - exact).norm() / exact.norm())
    assert 0 < err < HEAD_ERROR[fmt]  # quantized (not the float weight), and only as far off as the format


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_lm_head_is_quantized_on_request(quant_tiny_dir, fmt):
    _, tensors = read_checkpoint(quant_tiny_dir)
    llm = LLM(quant_tiny_dir, quantization=fmt, lm_head_quantization=fmt, num_kv_blocks=16)
    _head_check(llm.engine.model, tensors["lm_head.weight"], fmt)
    assert LLM(quant_tiny_dir, quantization=fmt, num_kv_blocks=16).engine.model.lm_head.proj is None  # opt-in


def test_the_head_may_take_another_format_than_the_weights(quant_tiny_dir):
    _, tensors = read_checkpoint(quant_tiny_dir)
    model = LLM(quant_tiny_dir, quantization="int4", lm_head_quantization="int8", num_kv_blocks=16).engine.model
    _head_check(model, tensors["lm_head.weight"], "int8")
    assert model.layers[0].mlp.down_proj.quant_method.name == "int4"
    from floorline.eval.perplexity import quantization_label

    assert quantization_label(model) == "int4"  # the weights' format: the head (LMHead.proj) is left out
    model.lm_head.proj.prefix = "renamed"  # found as the LMHead's Linear, not by its name
    assert quantization_label(model) == "int4"


def test_a_tied_head_quantizes_the_embedding_which_stays_float(quant_tiny_dir, tmp_path):
    tied = copy_with_config(quant_tiny_dir, tmp_path / "tied", tie_word_embeddings=True)
    _, tensors = read_checkpoint(tied)
    model = LLM(tied, quantization="int4", lm_head_quantization="int4", num_kv_blocks=16).engine.model
    _head_check(model, tensors["model.embed_tokens.weight"], "int4")
    assert torch.equal(model.embed_tokens.weight, tensors["model.embed_tokens.weight"].to(model.embed_tokens.weight))


@pytest.mark.parametrize("fmt,head", [("int4", "int4"), ("int4", "int8"), ("fp8", "int8")])
def test_quantize_writes_the_quantized_head_and_loads_it_back(quant_tiny_dir, tmp_path, fmt, head):
    out = tmp_path / f"tiny-{fmt}-head-{head}"
    assert main(["quantize", "--model", quant_tiny_dir, "--quantization", fmt, "--lm-head-quantization", head,
                 "--output", str(out)]) == 0
    cfg, tensors = read_checkpoint(out)
    assert cfg["quantization_config"]["lm_head"] == head and "lm_head.weight" not in tensors
    on_load = LLM(quant_tiny_dir, quantization=fmt, lm_head_quantization=head, num_kv_blocks=16).engine.model
    reloaded = LLM(str(out), num_kv_blocks=16).engine.model
    proj = reloaded.lm_head.proj
    assert proj.quant_method.name == head and not hasattr(proj, "weight")  # stored quantized, not re-quantized
    assert torch.equal(model_logits(reloaded, IDS), model_logits(on_load, IDS))


def test_requests_the_lm_head_flag_cannot_honour_get_clear_errors(quant_tiny_dir, tmp_path, capsys):
    with pytest.raises(FloorlineError, match="--lm-head-quantization needs --quantization"):
        LLM(quant_tiny_dir, lm_head_quantization="int8", num_kv_blocks=16)
    assert main(["generate", "--model", quant_tiny_dir, "--lm-head-quantization", "int8", "-n", "2"]) == 2
    assert "--lm-head-quantization needs --quantization" in capsys.readouterr().err
    assert main(["generate", "--model", quant_tiny_dir, "--quantization", "int4", "--lm-head-quantization", "int3",
                 "-n", "2"]) == 2
    assert "unknown LM head quantization 'int3'; accepted: none, int8, int4, nf4, fp8" in capsys.readouterr().err
    out = tmp_path / "nf4-head"
    assert main(["quantize", "--model", quant_tiny_dir, "--quantization", "nf4", "--lm-head-quantization", "nf4",
                 "--output", str(out)]) == 2
    assert "bitsandbytes format" in capsys.readouterr().err and not out.exists()
    plain = tmp_path / "int4-plain"  # a quantized checkpoint whose head is 16-bit
    assert main(["quantize", "--model", quant_tiny_dir, "--quantization", "int4", "--output", str(plain)]) == 0
    assert "lm_head" not in json.loads((plain / "config.json").read_text())["quantization_config"]
    with pytest.raises(FloorlineError, match="already quantized and its LM head is stored as it is"):
        LLM(str(plain), lm_head_quantization="int8", num_kv_blocks=16)
    bad = copy_with_config(str(plain), tmp_path / "bad-head", quantization_config={
        "quant_method": "floorline", "format": "int4", "group_size": 128, "lm_head": "int2"})
    with pytest.raises(FloorlineError, match="LM head format 'int2' is not supported; supported: int8"):
        LLM(bad, num_kv_blocks=16)
