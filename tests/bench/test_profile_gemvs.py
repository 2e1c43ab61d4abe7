"""scripts/profile_gemvs.py: what it refuses before it needs a GPU (the launches themselves run on the device)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "profile_gemvs.py"


@pytest.fixture
def profile_gemvs():
    spec = importlib.util.spec_from_file_location("profile_gemvs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_needs_a_gpu(profile_gemvs, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profile_gemvs.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("args,says", [(["--formats", "int3"], "unknown shape(s) or format(s) ['int3']"),
                                       (["--shapes", "ffn"], "accepted shapes: qkv, o_proj, gate_up, down, lm_head"),
                                       (["--config", "8,2048,x"], "--config takes BLOCK_N,BLOCK_K,SPLIT_K")])
def test_bad_arguments_are_named(profile_gemvs, monkeypatch, capsys, args, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the checks come before any launch
    assert profile_gemvs.main(args) == 2
    assert says in capsys.readouterr().err
