"""Time chosen quantized-GEMV launch configs against the table's default, one shape at a time (M = 1).

    python scripts/time_quant_configs.py --format int4 --shapes down \
        --config block_n=8,block_k=2048,split_k=2,num_warps=2,num_stages=1,half2=1 \
        --config block_n=8,block_k=2048,split_k=2,num_warps=2,num_stages=1

Each config is a comma-separated list of `QuantGemvConfig` fields (the rest keep their defaults). A config
is first checked against the default config's output (relative error < 1e-2), then timed as
`floorline.bench.quant` times its rows: CUDA-graph replays of back-to-back launches over weight copies
that exceed L2, `down` on gate | up as decode runs it. The default is timed first and again last, which
shows the run's drift. Prints a markdown table. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", default="int4", choices=("int8", "fp8", "int4", "nf4"))
    p.add_argument("--shapes", nargs="+", default=["down"])
    p.add_argument("--config", action="append", default=[], help="FIELD=VALUE,...: a config to time (repeatable)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("time_quant_configs: needs a CUDA GPU (none is visible)", file=sys.stderr)
        return 2
    from floorline.bench.kernels import SHAPES, rel_error, time_per_call
    from floorline.bench.quant import _call, build_layers, k_unit, parse_config
    from floorline.kernels.quant_configs import get_config

    bad = [s for s in a.shapes if s not in SHAPES]
    try:
        configs = [parse_config(c) for c in a.config]
    except (ValueError, TypeError) as e:  # TypeError: a required field (block_n, block_k) is missing
        print(f"time_quant_configs: --config {e}", file=sys.stderr)
        return 2
    if bad:
        print(f"time_quant_configs: unknown shape(s) {bad}; accepted: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 << 20)
    rows = []
    for shape in a.shapes:
        k, n = SHAPES[shape]
        layers, _, _ = build_layers(a.format, k, n, dev, l2)
        silu = shape == "down"
        x = torch.randn(1, 2 * k if silu else k, device=dev).to(torch.bfloat16)
        want = _call(a.format, layers[0], x, silu_mul=silu)

        def timed(cfg=None):
            return time_per_call([lambda l=l: _call(a.format, l, x, cfg, silu_mul=silu) for l in layers]) * 1e6

        rows.append((shape, f"default: {get_config(a.format, n, k, 1, k_unit(a.format, layers[0]), dev)}",
                     f"{timed():.1f}"))
        for cfg in configs:
            try:
                err = rel_error(_call(a.format, layers[0], x, cfg, silu_mul=silu), want)
            except ValueError as e:  # a config the launcher's checks refuse
                rows.append((shape, str(cfg), f"refused: {e}"))
                continue
            rows.append((shape, str(cfg), f"{timed(cfg):.1f}" if err < 1e-2 else f"check failed ({err:.1e})"))
        rows.append((shape, "default again", f"{timed():.1f}"))
        del layers
        torch.cuda.empty_cache()
    print("| shape | config | us |\n| --- | --- | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
