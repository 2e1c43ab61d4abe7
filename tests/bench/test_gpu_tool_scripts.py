"""scripts/profile_gemvs.py and scripts/time_quant_configs.py: what they refuse before they need a GPU (the
launches themselves run on the device), and their config syntax (`bench.quant.parse_config`)."""

from __future__ import annotations

import pytest
import torch

from floorline.bench.quant import parse_config
from floorline.kernels.quant_configs import QuantGemvConfig


@pytest.mark.parametrize("name", ["profile_gemvs", "time_quant_configs"])
def test_needs_a_gpu(script, monkeypatch, capsys, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert script(name).main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("name,args,says", [
    ("profile_gemvs", ["--formats", "int3"], "unknown shape(s) or format(s) ['int3']"),
    ("profile_gemvs", ["--shapes", "ffn"], "accepted shapes: qkv, o_proj, gate_up, down, lm_head"),
    ("profile_gemvs", ["--config", "8,2048,x"], "--config '8': expected FIELD=INTEGER"),
    ("profile_gemvs", ["--config", "num_warps=2"], "missing 2 required positional arguments"),
    ("time_quant_configs", ["--config", "block_n=8,bogus=1"], "'bogus=1': expected FIELD=INTEGER"),
    ("time_quant_configs", ["--config", "block_n=x"], "'block_n=x': expected FIELD=INTEGER"),
    ("time_quant_configs", ["--config", "half2=1"], "missing 2 required positional arguments"),
    ("time_quant_configs", ["--shapes", "ffn"], "unknown shape(s) ['ffn']"),
])
def test_bad_arguments_are_named(script, monkeypatch, capsys, name, args, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the checks come before any launch
    assert script(name).main(args) == 2
    assert says in capsys.readouterr().err


def test_config_fields_parse_with_booleans_as_0_or_1():
    cfg = parse_config("block_n=8,block_k=2048,split_k=2,num_warps=2,num_stages=1,half2=1,prefetch=0")
    assert cfg == QuantGemvConfig(8, 2048, 2, 2, 1, half2=True, prefetch=False)
    assert cfg.half2 is True and cfg.prefetch is False
