"""scripts/ablate_decode.py: the decode-step ablations the quantization notes cite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ablate_decode.py"


def test_unknown_variant_is_refused_with_the_accepted_ones():
    run = subprocess.run([sys.executable, str(SCRIPT), "noattn,bogus", "--", "bench", "decode"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert "unknown variant 'bogus'" in run.stderr and "no-N.K" in run.stderr


def test_no_shape_skips_only_that_quantized_gemv(script, monkeypatch):
    from floorline.quant.packed import PackedMethod

    class Probe(PackedMethod):
        def gemv(self, layer, x, silu_mul):
            return "ran"

    mod = script("ablate_decode")
    for cls in {PackedMethod, *mod._subclasses(PackedMethod)}:  # undone after the test
        if "gemv" in vars(cls):
            monkeypatch.setattr(cls, "gemv", vars(cls)["gemv"])
    mod.apply("no-32.64")
    x = torch.zeros(3, 64)
    skipped = Probe.gemv(None, SimpleNamespace(out_features=32, in_features=64), x, False)
    assert isinstance(skipped, torch.Tensor) and skipped.shape == (3, 32)
    assert Probe.gemv(None, SimpleNamespace(out_features=32, in_features=128), x, False) == "ran"


def test_noattn_passes_q_through(script, monkeypatch):
    import floorline.layers.attention as attention

    monkeypatch.setattr(attention, "paged_attention", attention.paged_attention)
    script("ablate_decode").apply("noattn")
    q = torch.randn(2, 4, 8)
    assert attention.paged_attention(q, None, None) is q
