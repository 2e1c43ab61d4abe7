"""scripts/time_quant_configs.py: its config syntax and what it refuses before it needs a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from floorline.kernels.quant_configs import QuantGemvConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "time_quant_configs.py"


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("time_quant_configs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_fields_parse_with_booleans_as_0_or_1(tool):
    cfg = tool.parse_config("block_n=8,block_k=2048,split_k=2,num_warps=2,num_stages=1,half2=1,prefetch=0")
    assert cfg == QuantGemvConfig(8, 2048, 2, 2, 1, half2=True, prefetch=False)
    assert cfg.half2 is True and cfg.prefetch is False


def test_needs_a_gpu(tool, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tool.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("args,says", [(["--config", "block_n=8,bogus=1"], "'bogus=1': expected FIELD=INTEGER"),
                                       (["--config", "block_n=x"], "'block_n=x': expected FIELD=INTEGER"),
                                       (["--config", "half2=1"], "missing 2 required positional arguments"),
                                       (["--shapes", "ffn"], "unknown shape(s) ['ffn']")])
def test_bad_arguments_are_named(tool, monkeypatch, capsys, args, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the checks come before any launch
    assert tool.main(args) == 2
    assert says in capsys.readouterr().err
