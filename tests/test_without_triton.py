"""A CPU-only install has no Triton: the engine, the CLI and every kernel module still import and run."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TRITON = '''
import builtins
real_import = builtins.__import__
def no_triton(name, *args, **kwargs):
    if name == "triton" or name.startswith("triton."):
        raise ImportError("Triton is not installed")
    return real_import(name, *args, **kwargs)
builtins.__import__ = no_triton
'''

RUN = '''
import importlib, pkgutil
import floorline.kernels
for mod in pkgutil.iter_modules(floorline.kernels.__path__):
    importlib.import_module("floorline.kernels." + mod.name)
import floorline.cli
floorline.cli.build_parser()
from floorline.api import LLM, SamplingParams
llm = LLM(device="cpu")
out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=4))[0]
print("TOKENS", len(out.outputs[0].token_ids))
'''


def test_cpu_engine_runs_without_triton():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TRITON + RUN], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TOKENS 4" in proc.stdout
