"""scripts/sass_count.py: the offline sm_90 instruction counts the quantized-kernel notes cite."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
    pytest.skip("this triton has no bundled cuobjdump", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sass_count.py"


def test_counts_the_fp8_gemv_loop():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a real compile, not the interpreter
    run = subprocess.run([sys.executable, str(SCRIPT), "w8", "--fp8"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("registers"))
    assert "for 64 weights a thread" in line  # 16 rows x 512 weights over 128 threads
    assert 2.0 < float(line.split(" a weight")[0].rsplit(": ", 1)[1]) < 10.0
    assert "FFMA" in run.stdout
    # the loop's 16-byte loads (here the pipeline's cp.async copies) are listed by their positions in its body
    loads = ast.literal_eval(run.stdout.split("16-byte loads at loop positions ", 1)[1].splitlines()[0])
    body = int(line.split(" instructions for")[0].rsplit(" ", 1)[1])
    assert loads and all(0 <= i < body for i in loads) and loads == sorted(loads)
