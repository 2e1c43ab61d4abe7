"""Decode with the residual add and RMSNorm fused into the GEMVs equals the unfused model.

The fused path runs only where the Triton GEMV does (CUDA, 1..16 rows); here the interpreter stands
in for the GPU by letting the GEMV take CPU tensors, in fp16 (the interpreter's bf16 is broken).
"""

from __future__ import annotations

import pytest
import torch

import floorline.kernels.skinny_gemm as sg
from floorline.runner.kv_cache_alloc import allocate_kv_cache, bind_kv_cache
from floorline.weights.loader import load_model, load_model_config
from floorline.weights.resolve import resolve_model
from tests.models.test_llama_parity import BASE, make_checkpoint, run_tokens


def _decode_logits(model, ids: list[int], prompt: int) -> torch.Tensor:
    out = [run_tokens(model, ids[:prompt], 0)[-1:]]
    for i in range(prompt, len(ids)):
        out.append(run_tokens(model, [ids[i]], i))
    return torch.cat(out).float()


@pytest.mark.parametrize("variant", ["llama", "llama-linear-rope-bias"])
def test_fused_norm_and_residual_match_unfused(tmp_path, monkeypatch, variant):
    make_checkpoint(tmp_path, variant)
    source = resolve_model(str(tmp_path))
    cfg = load_model_config(source)
    model = load_model(source, cfg, torch.float16, torch.device("cpu"))
    bind_kv_cache(model, allocate_kv_cache(cfg, 64, 8, torch.float16, torch.device("cpu")))
    with torch.no_grad():  # larger weights: every sublayer (and its norm) moves the logits visibly
        for p in model.parameters():
            p.mul_(4) if p.dim() == 2 else None
    ids = torch.randint(0, BASE["vocab_size"], (20,)).tolist()
    unfused = _decode_logits(model, ids, 17)  # 17-token prefill (cuBLAS-shaped, unfused) + 3 decode steps

    fused_calls = []
    real = sg.skinny_gemm_triton

    def counting(x, w, bias=None, **kw):
        if kw.get("residual") is not None:  # the producers also apply the next norm's weight but the last
            fused_calls.append(("residual", kw.get("out_norm_weight") is not None))
        elif kw.get("norm_ss") is not None:  # so their consumers read a prescaled operand
            fused_calls.append(("norm", kw.get("prescaled")))
        return real(x, w, bias, **kw)

    monkeypatch.setattr(sg, "triton_supported", sg.shape_supported)  # CPU tensors take the Triton path
    monkeypatch.setattr(sg, "skinny_gemm_triton", counting)
    monkeypatch.setattr("floorline.quant.base.skinny_gemm_triton", counting)
    fused = _decode_logits(model, ids, 17)
    # Per decode step and layer: qkv (norm), o_proj (residual), gate_up (norm), down (residual); only the
    # first layer's qkv takes a plain operand (the embedding's norm has no producing GEMV), and the last
    # layer's down has no next norm to apply (the final norm feeds the LM head).
    layer0 = [("residual", True), ("norm", True), ("residual", True)]
    layer1 = [("norm", True), ("residual", True), ("norm", True), ("residual", False)]
    assert fused_calls == (layer0 + layer1) * 3
    torch.testing.assert_close(fused, unfused, atol=2e-2, rtol=2e-2)
    assert (fused.argmax(-1) == unfused.argmax(-1)).all()
