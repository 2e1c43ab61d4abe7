"""Launch each decode GEMV once inside a CUDA profiler range, for Nsight Compute (ncu) to read its counters.

    ncu --clock-control none --profile-from-start off --csv --page details \
        --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
        python scripts/profile_gemvs.py --formats int4,nf4 > details.csv
    ncu --clock-control none --profile-from-start off --kernel-name regex:int4 --section SourceCounters \
        --import-source no -o src python scripts/profile_gemvs.py --formats int4
    ncu --import src.ncu-rep --page source --csv --print-source sass > src.csv     # stalls per SASS line
    python scripts/profile_gemvs.py --formats int4 --shapes down \
        --config block_n=8,block_k=2048,split_k=2,num_warps=2,num_stages=2    # one config more, 2 stages

Weights are random, of Llama-3.1-8B's shapes (`bench.kernels.SHAPES`); every launch is run twice before the
range (Triton compiles outside it), and the launches print their order as `CASE` lines, which match ncu's
kernel IDs. `--clock-control none` leaves the clocks alone (the device library's METHOD.md asks for that);
ncu flushes the caches before each profiled launch, so the weights come from HBM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

FORMATS = ("bf16", "int8", "fp8", "int4", "nf4")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default="bf16,int4,nf4,int8,fp8", help="comma-separated: bf16, int8, fp8, int4, nf4")
    p.add_argument("--shapes", nargs="+", default=["qkv", "o_proj", "gate_up", "down"])
    p.add_argument("--config", action="append", default=[],
                   help="FIELD=VALUE,...: a QuantGemvConfig to launch too (repeatable; scripts/time_quant_configs.py's syntax)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_gemvs: needs a CUDA GPU (none is visible)", file=sys.stderr)
        return 2
    from floorline.bench.kernels import SHAPES
    from floorline.bench.quant import _call, build_layers, parse_config

    try:
        configs = [parse_config(c) for c in a.config]
    except (ValueError, TypeError) as e:  # TypeError: a required field (block_n, block_k) is missing
        print(f"profile_gemvs: --config {e}", file=sys.stderr)
        return 2
    fmts = [f.strip() for f in a.formats.split(",") if f.strip()]
    bad = [s for s in a.shapes if s not in SHAPES] + [f for f in fmts if f not in FORMATS]
    if bad:
        print(f"profile_gemvs: unknown shape(s) or format(s) {bad}; accepted shapes: {', '.join(SHAPES)}; "
              f"formats: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    runs = []
    for fmt in fmts:
        for shape in a.shapes:
            k, n = SHAPES[shape]
            layer = build_layers(fmt, k, n, device, 1)[0][0]
            x = torch.randn(1, k, device=device).to(torch.bfloat16)
            runs.append((f"{fmt} {shape} default", lambda l=layer, x=x, f=fmt: _call(f, l, x)))
            for cfg in configs if fmt != "bf16" else ():
                runs.append((f"{fmt} {shape} {cfg}", lambda l=layer, x=x, f=fmt, c=cfg: _call(f, l, x, c)))
    for name, launch in runs:
        try:
            launch()
            launch()
        except ValueError as e:  # a config the kernel's checks refuse
            print(f"profile_gemvs: {name}: {e}", file=sys.stderr)
            return 2
    torch.cuda.synchronize()
    for i, (name, _) in enumerate(runs):
        print(f"CASE {i} {name}")
    torch.cuda.profiler.start()
    for _, launch in runs:
        launch()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
