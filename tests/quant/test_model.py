"""The tiny model in every format: generation, the GEMV path inside the model, `floorline quantize`
round trips, dummy weights, and the errors bad input gets."""

from __future__ import annotations

import math

import pytest
import torch

from floorline.api import LLM
from floorline.cli import main
from floorline.errors import FloorlineError, UnsupportedModelError
from floorline.quant import packed
from floorline.sampling_params import SamplingParams
from tests.quant.conftest import VOCAB, copy_with_config, model_logits

FORMATS = ("int8", "int4", "nf4", "fp8")
IDS = [5, 17, 3, 99, 140, 7, 61, 8, 200, 1, 42, 13]
# Relative logit error bounds, ~1.5x what the (seeded) tiny model shows: its random layers amplify the
# weight error (int8 0.8%, fp8 2.6%, 4-bit ~10% relative) about threefold.
LOGIT_ERROR = {"int8": 0.04, "fp8": 0.15, "int4": 0.5, "nf4": 0.5}


@pytest.fixture(scope="module")
def float_logits(quant_tiny_dir):
    return model_logits(LLM(quant_tiny_dir, num_kv_blocks=16).engine.model, IDS)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_generates_and_stays_close_to_float(quant_tiny_dir, float_logits, fmt):
    llm = LLM(quant_tiny_dir, quantization=fmt, num_kv_blocks=32, max_num_seqs=4)
    assert _rel(model_logits(llm.engine.model, IDS), float_logits) < LOGIT_ERROR[fmt]
    outs = llm.generate([IDS, IDS[:5]], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outs] == [6, 6]
    assert all(0 <= t < VOCAB for o in outs for t in o.outputs[0].token_ids)
    solo = llm.generate([IDS[:5]], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    assert solo[0].outputs[0].token_ids == outs[1].outputs[0].token_ids  # batching changes nothing


@pytest.mark.parametrize("fmt", FORMATS)
def test_gemv_kernels_inside_the_model_match_the_reference_path(quant_tiny_dir, monkeypatch, fmt):
    """Rows <= 16 take the Triton GEMV (here in the interpreter), fused SiLU-and-mul included."""
    model = LLM(quant_tiny_dir, quantization=fmt, num_kv_blocks=16).engine.model
    ref = model_logits(model, IDS)
    monkeypatch.setattr(packed, "gemv_wanted", lambda x: 1 <= x.shape[0] <= 16)
    torch.testing.assert_close(model_logits(model, IDS), ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_row_fuses_the_norms_and_residual_adds_and_matches_the_reference_path(quant_tiny_dir,
                                                                                     monkeypatch, fmt):
    """One row (a decode step's shape): the GEMVs add the residual and the next norm's weight in their
    epilogues and 1/rms after their loops, so only the first layer's norm (after the embedding) and the
    final one stay kernels."""
    import floorline.layers.norm as norm_module

    model = LLM(quant_tiny_dir, quantization=fmt, num_kv_blocks=16).engine.model
    ref = model_logits(model, IDS[:1])
    norms = []
    real = norm_module.rms_norm
    monkeypatch.setattr(norm_module, "rms_norm", lambda *a, **kw: norms.append(1) or real(*a, **kw))
    monkeypatch.setattr(packed, "gemv_wanted", lambda x: 1 <= x.shape[0] <= 16)
    torch.testing.assert_close(model_logits(model, IDS[:1]), ref, rtol=2e-4, atol=2e-4)
    assert len(norms) == 2  # unfused: one add + norm kernel a sublayer, 2 x 2 + 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_dot_paths_for_17_to_64_rows_inside_the_model_match_the_reference_path(quant_tiny_dir, monkeypatch, fmt):
    """A 40-row forward with every Linear on its GEMV's dot paths (in the interpreter, fp32) as decode
    steps of 17..64 rows run them, against the dequantize + matmul path."""
    model = LLM(quant_tiny_dir, quantization=fmt, num_kv_blocks=16).engine.model
    ids = [(5 * i + 2) % VOCAB for i in range(40)]
    ref = model_logits(model, ids)
    monkeypatch.setattr(packed, "gemv_wanted", lambda x: 1 <= x.shape[0] <= packed.DOT_MAX_M)
    torch.testing.assert_close(model_logits(model, ids), ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_command_round_trip_gives_the_same_logits(quant_tiny_dir, tmp_path, fmt, capsys):
    out = tmp_path / f"tiny-{fmt}"
    assert main(["quantize", "--model", quant_tiny_dir, "--quantization", fmt, "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    on_load = model_logits(LLM(quant_tiny_dir, quantization=fmt, num_kv_blocks=16).engine.model, IDS)
    reloaded = LLM(str(out), num_kv_blocks=16)
    layer = reloaded.engine.model.layers[0].self_attn.qkv_proj
    assert layer.quant_method.name == fmt and not hasattr(layer, "weight")  # stored quantized, not re-quantized
    assert torch.equal(model_logits(reloaded.engine.model, IDS), on_load)
    # asking for the format it has is accepted; asking for another is refused
    LLM(str(out), num_kv_blocks=16, quantization=fmt)
    with pytest.raises(FloorlineError, match="already quantized"):
        LLM(str(out), num_kv_blocks=16, quantization="int8" if fmt != "int8" else "nf4")


def test_quantize_refuses_existing_output_and_keeps_no_partial_directory(quant_tiny_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "file").write_text("x")
    assert main(["quantize", "--model", quant_tiny_dir, "--quantization", "int4", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad"
    assert main(["quantize", "--model", str(tmp_path / "missing"), "--quantization", "int4", "--output", str(bad)]) == 2
    assert not bad.exists() and not any(p.name.startswith(".bad") for p in tmp_path.iterdir())


def test_dummy_weights_with_quantization(quant_tiny_dir):
    for fmt in FORMATS:
        llm = LLM(quant_tiny_dir, quantization=fmt, load_format="dummy", num_kv_blocks=16)
        logits = model_logits(llm.engine.model, IDS[:4])
        assert bool(torch.isfinite(logits).all()), fmt  # fp8: random bytes' NaN codes were made finite


def test_bad_quantization_requests_get_clear_errors(quant_tiny_dir, tmp_path, capsys):
    with pytest.raises(FloorlineError, match="unknown quantization 'int3'; accepted: none, int8, int4"):
        LLM(quant_tiny_dir, quantization="int3", num_kv_blocks=16)
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedModelError, match="fp8-w8a8 needs FP8 tensor cores.*CPU.*--quantization fp8"):
            LLM(quant_tiny_dir, quantization="fp8-w8a8", num_kv_blocks=16)
        assert main(["generate", "--model", quant_tiny_dir, "--quantization", "fp8-w8a8", "-n", "2"]) == 2
        assert "compute capability >= 9.0" in capsys.readouterr().err
    weird = copy_with_config(quant_tiny_dir, tmp_path / "weird", quantization_config={"quant_method": "eetq"})
    with pytest.raises(UnsupportedModelError, match="'eetq' is not supported; supported: awq"):
        LLM(weird, num_kv_blocks=16)
    assert main(["generate", "--model", weird, "-n", "2"]) == 2
    assert "not supported" in capsys.readouterr().err


def test_fp8_auto_falls_back_to_weight_only_off_hopper(quant_tiny_dir):
    llm = LLM(quant_tiny_dir, quantization="fp8", num_kv_blocks=16)
    method = llm.engine.model.layers[0].mlp.down_proj.quant_method
    assert method.name == "fp8" and method.w8a8 == (torch.cuda.is_available()
                                                    and torch.cuda.get_device_capability() >= (9, 0))
    assert math.isfinite(float(model_logits(llm.engine.model, IDS).sum()))


def test_quantized_cpu_path_needs_no_triton(quant_tiny_dir):
    """The CPU path runs the PyTorch references only: a CPU-only install (no Triton) quantizes and runs."""
    import subprocess
    import sys

    code = f'''
import builtins
real_import = builtins.__import__
def no_triton(name, *args, **kwargs):
    if name == "triton" or name.startswith("triton."):
        raise ImportError("Triton is not installed")
    return real_import(name, *args, **kwargs)
builtins.__import__ = no_triton
from floorline.api import LLM, SamplingParams
for q in {FORMATS!r}:
    out = LLM({quant_tiny_dir!r}, quantization=q, num_kv_blocks=16).generate(
        [[1, 2, 3]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    print(q, len(out[0].outputs[0].token_ids))
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [x for q in FORMATS for x in (q, "2")]
