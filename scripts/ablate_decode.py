"""Time a decode step with pieces of it removed: what each piece costs inside the real step.

    python scripts/ablate_decode.py noattn -- bench decode --model llama-3.1-8b --load-format dummy \
        --contexts 2048 --quantization int4
    python scripts/ablate_decode.py no-6144.4096,nonorm -- bench decode ...   # several at once

Removing a kernel changes the numbers the model computes (garbage tokens), never the shapes, so the
step's timing stays meaningful: its drop is the piece's cost inside the step, overlap and launch
gaps included. Variants:

* `base`: nothing removed (the baseline);
* `noattn`: no decode attention (q passes through); `nokv`: no rotary + KV-cache write;
* `nonorm`: no add + RMSNorm kernels (the formats that run them; bf16 fuses them into the GEMVs);
* `no-N.K`: no quantized GEMV of that shape (out N, in K; the down projection's SiLU goes with it).
"""

from __future__ import annotations

import re
import sys

import torch


def _no_quantized_gemv(n: int, k: int) -> None:
    import floorline.quant.fp8, floorline.quant.int4, floorline.quant.int8, floorline.quant.nf4  # noqa: F401, E401
    from floorline.quant.packed import PackedMethod

    for cls in {PackedMethod, *_subclasses(PackedMethod)}:
        if "gemv" not in vars(cls):
            continue
        orig = vars(cls)["gemv"]

        def gemv(self, layer, x, silu_mul, _orig=orig):
            if layer.out_features == n and layer.in_features == k:
                return torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
            return _orig(self, layer, x, silu_mul)

        cls.gemv = gemv


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]


def apply(variant: str) -> None:
    """Patches the engine's modules for one variant; a ValueError names the accepted ones."""
    if variant == "noattn":
        import floorline.layers.attention as attention

        attention.paged_attention = lambda q, *a, **k: q
    elif variant == "nokv":
        import floorline.layers.attention as attention

        attention.rotary_and_cache_write = lambda *a, **k: None
    elif variant == "nonorm":
        import floorline.layers.norm as norm

        norm.rms_norm = lambda x, w, eps, residual=None: x if residual is None else (x, residual)
    elif shape := re.fullmatch(r"no-(\d+)\.(\d+)", variant):
        _no_quantized_gemv(int(shape[1]), int(shape[2]))
    elif variant != "base":
        raise ValueError(f"unknown variant {variant!r}; accepted: base, noattn, nokv, nonorm, no-N.K "
                         "(e.g. no-6144.4096)")


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        print("usage: ablate_decode.py VARIANT[,VARIANT...] -- CLI ARGS (see the docstring)", file=sys.stderr)
        return 2
    try:
        for v in argv[0].split(","):
            apply(v)
    except ValueError as e:
        print(f"ablate_decode: {e}", file=sys.stderr)
        return 2
    from floorline.cli import main as cli_main

    return cli_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
