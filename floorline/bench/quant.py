"""GPU benchmark: quantized decode GEMVs vs their byte floor and vs the bf16 skinny GEMM (Llama-3.1-8B shapes).

    python -m floorline.bench.quant                      # default configs, M = 1, 4, 16
    python -m floorline.bench.quant --sweep              # small config sweep; prints TUNED_CONFIGS lines

With bitsandbytes importable, `bnb-nf4` rows time bitsandbytes' own NF4 on the same weights
(floorline/bench/bnb.py) and a last table gives floorline's NF4 speed-up over it.

Every format is first checked against its reference (dequantize, fp32 matmul): the GEMV at each M,
the fused SiLU-and-mul operand (down projection), and the prefill path (dequantize + cuBLAS, 64 rows);
relative error >= 1e-2 or NaN fails the row and the run. Times are medians over CUDA-graph replays
of back-to-back launches rotating over enough weight copies to exceed L2 (as in bench.kernels), so
every launch streams its weights from HBM. The floor of a row is (weight bytes as stored: codes plus
scales + x + y) / the read bandwidth measured in the same run. "per token" sums 32 layers of
qkv + o + gate_up + down, plus the bf16 LM head (never quantized) once. `down` runs as decode runs it:
on gate | up ([M, 2K]), the launcher fusing the SiLU-and-mul or running the activation kernel first,
except for bitsandbytes and FP8 W8A8, whose GEMVs take a plain x (their rows leave it out).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from floorline.bench import bnb
from floorline.kernels.activation import silu_and_mul
from floorline.bench.kernels import SHAPES, read_bandwidth, rel_error, split_variants, time_per_call
from floorline.kernels.quant_configs import FORMATS as QUANT_FORMATS
from floorline.kernels.quant_configs import DOT_MAX_M, MAX_M, QuantGemvConfig, get_config, quant_m_bucket
from floorline.kernels.decode_attention import num_sms_of
from floorline.kernels.skinny_gemm import skinny_gemm_triton
from floorline.kernels.skinny_gemm_configs import auto_split_k

LAYER_SHAPES = ("qkv", "o_proj", "gate_up", "down")
NUM_LAYERS = 32
FORMATS = ("bf16", "int8", "fp8", "int4", "nf4", "nf4-gather", "nf4-select", "fp8-w8a8", "bnb-nf4")
DEFAULT_FORMATS = ("bf16", "int8", "fp8", "int4", "nf4", "fp8-w8a8", "bnb-nf4")  # the slow NF4 lookups on request
NF4_LOOKUP = {"nf4": None, "nf4-gather": "gather", "nf4-select": "select"}  # None: the kernel's default (shfl)
MAX_REL_ERROR = 1e-2
UNFUSED = ("bnb-nf4", "fp8-w8a8")  # formats whose GEMV takes no fused SiLU-and-mul operand


@dataclasses.dataclass
class Row:
    fmt: str
    shape: str
    k: int
    n: int
    m: int
    nbytes: int
    seconds: float = math.inf
    config: str = ""
    failure: str = ""
    best: QuantGemvConfig | None = None  # the sweep's winner, if it beat the default


def _method(fmt: str):
    from floorline.quant.fp8 import Fp8Method
    from floorline.quant.int4 import Int4Method
    from floorline.quant.int8 import Int8Method
    from floorline.quant.nf4 import Nf4Method

    if fmt == "int8":
        return Int8Method()
    if fmt == "int4":
        return Int4Method()
    if fmt in NF4_LOOKUP:
        m = Nf4Method()
        m.lookup = NF4_LOOKUP[fmt]
        return m
    return Fp8Method(w8a8=fmt == "fp8-w8a8")


def build_layers(fmt: str, k: int, n: int, device: torch.device, l2_bytes: int, dtype: torch.dtype = torch.bfloat16):
    """Weight copies of one format (enough bytes to defeat L2) and the float source of the first."""
    from floorline.layers.linear import Linear

    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    if fmt == "bnb-nf4":
        first = bnb.BnbLayer(w)
        nbytes = first.nbytes()
        return [first] + [bnb.BnbLayer(w) for _ in range(max(1, -(-3 * l2_bytes // nbytes)) - 1)], w, nbytes
    if fmt == "bf16":
        first = Linear(k, [n], dtype=dtype, device=device)
        first.load(0, "weight", w)
    else:
        first = Linear(k, [n], dtype=dtype, device=device, quant_method=_method(fmt))
        first.load(0, "weight", w)
        first.finish_loading()
    # what a launch reads: codes, scales and the per-row state kept as buffers (NF4's row_base, ...); int4's
    # row_params is its M = 1 kernels' copy of the scales and zeros, read instead of them, the same bytes
    nbytes = sum(t.numel() * t.element_size() for name, t in [*first.named_parameters(), *first.named_buffers()]
                 if name != "row_params")
    copies = [first] + [copy.deepcopy(first) for _ in range(max(1, -(-3 * l2_bytes // nbytes) - 1))]
    return copies, w, nbytes


def k_unit(kernel_fmt: str, layer) -> int:
    """The K granularity `get_config` takes for a format's layer: int4's group, NF4's block, 16 for 8-bit."""
    return {"int4": getattr(layer.quant_method, "group", 128), "nf4": 64}.get(kernel_fmt, 16)


def parse_config(text: str) -> QuantGemvConfig:
    """'block_n=8,block_k=2048,half2=1,...' -> QuantGemvConfig: the `--config` syntax of the GPU tools in
    scripts/ (integers; booleans as 0 / 1; fields left out keep their defaults)."""
    fields = [f.name for f in dataclasses.fields(QuantGemvConfig)]
    values = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in fields or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"{item!r}: expected FIELD=INTEGER with FIELD one of {', '.join(fields)}")
        values[name.strip()] = int(value)
    bools = {f.name for f in dataclasses.fields(QuantGemvConfig) if isinstance(f.default, bool)}
    return QuantGemvConfig(**{k: bool(v) if k in bools else v for k, v in values.items()})


def _prefill_path(fmt: str, x: torch.Tensor, dequant: bool) -> bool:
    """Whether `_call` takes x the prefill way: more rows than the GEMV takes (bf16: cuBLAS past MAX_M),
    or, with `dequant`, every quantized row count (dequantize, then cuBLAS)."""
    if fmt == "bf16":
        return x.shape[0] > MAX_M
    if fmt in ("bnb-nf4", "fp8-w8a8"):
        return False  # their own kernels at every M
    return dequant or x.shape[0] > DOT_MAX_M


def _call(fmt: str, layer, x: torch.Tensor, cfg: QuantGemvConfig | None = None, silu_mul: bool = False,
          dequant: bool = False):
    """One GEMV of `fmt` as decode runs it, or the prefill way where `_prefill_path` says so."""
    if _prefill_path(fmt, x, dequant):
        x = silu_and_mul(x) if silu_mul else x
        return F.linear(x, layer.weight) if fmt == "bf16" else layer.quant_method.matmul(layer, x)
    if fmt == "bf16":
        return skinny_gemm_triton(x, layer.weight, silu_mul=silu_mul)
    if fmt == "bnb-nf4":
        return layer(x)
    if fmt == "fp8-w8a8":
        from floorline.quant.fp8 import w8a8_matmul

        return w8a8_matmul(x, layer.qweight, layer.scale)
    method = layer.quant_method
    if cfg is None:
        return method.gemv(layer, x, silu_mul)
    return _gemv_with_config(fmt, layer, x, cfg, silu_mul)


def _gemv_with_config(fmt: str, layer, x: torch.Tensor, cfg: QuantGemvConfig, silu_mul: bool = False):
    from floorline.kernels.quant_int4 import int4_gemv_triton
    from floorline.kernels.quant_nf4 import nf4_gemv_triton
    from floorline.kernels.quant_w8 import w8_gemv_triton

    method = layer.quant_method
    if fmt in ("int8", "fp8"):
        return w8_gemv_triton(x, layer.qweight, layer.scale, fmt == "fp8", silu_mul=silu_mul, config=cfg)
    if fmt == "int4":
        return int4_gemv_triton(x, layer.qweight, layer.scales, layer.zeros, layer.in_features, method.group,
                                silu_mul=silu_mul, config=cfg, row_params=getattr(layer, "row_params", None))
    return nf4_gemv_triton(x, layer.qweight, layer.absmax, method._nested(layer), layer.code, silu_mul=silu_mul,
                           config=cfg, lookup=method.lookup)


def _reference_weight(fmt: str, layer, w: torch.Tensor) -> torch.Tensor:
    if fmt == "bnb-nf4":
        return layer.dequantize()
    return w.float() if fmt == "bf16" else layer.quant_method.dequantize_ref(layer)


def check_format(fmt: str, layer, w: torch.Tensor, ms: tuple[int, ...]) -> list[str]:
    """Relative errors against the reference; returns the failures."""
    failures = []
    ref_w = _reference_weight(fmt, layer, w)
    k = layer.in_features
    # 80 rows: prefill (the dequantized weight, or W8A8, or bitsandbytes, and cuBLAS)
    cases = [(m, False) for m in ms] + [(4, True)] + ([(80, False)] if fmt != "bf16" else [])
    for m, silu in cases:
        x = torch.randn(m, 2 * k if silu else k, device=w.device).to(w.dtype)
        if fmt in UNFUSED and silu:
            continue
        out = _call(fmt, layer, x, silu_mul=silu)
        xr = silu_and_mul(x) if silu else x
        if fmt == "fp8-w8a8":
            from floorline.quant.fp8 import w8a8_ref

            ref = w8a8_ref(xr, layer.qweight, layer.scale)
        else:
            ref = F.linear(xr.float(), ref_w)
        err = rel_error(out, ref)
        if not err < MAX_REL_ERROR:
            failures.append(f"{fmt} K={k} N={layer.out_features} M={m}{' silu_mul' if silu else ''}: "
                            f"relative error {err:.3g}")
    return failures


def sweep_candidates(fmt: str, m: int, k: int = 4096) -> list[QuantGemvConfig]:
    four_bit = fmt in ("int4", "nf4")
    if m > MAX_M:  # 17+ rows: wider row tiles share each x tile more
        tiles = ((64, 128, 4, 3), (128, 128, 8, 3), (64, 256, 4, 3), (128, 64, 4, 4), (32, 256, 4, 4),
                 (128, 128, 4, 3))
        pairs = ((64, 128, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (64, 256, 4, 3), (128, 64, 4, 3),
                 (256, 128, 8, 3)) + (((64, 128, 2, 3), (128, 128, 2, 3)) if fmt == "nf4" else ())
    elif m > 1 and four_bit:
        tiles = ((32, 256, 4, 3), (64, 256, 4, 3), (32, 512, 4, 3), (64, 128, 4, 4), (128, 256, 8, 3))
        # the pair dots (quant_pairs); their winners' split counts come from `split_variants`
        pairs = ((64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 4, 2), (128, 128, 4, 3), (64, 256, 4, 3),
                 (64, 128, 2, 3)) + (((64, 64, 4, 3), (128, 64, 4, 3), (128, 128, 2, 3), (32, 128, 2, 3),
                                      (64, 256, 2, 3)) if fmt == "nf4" else ())
    elif m > 1:
        tiles = ((32, 256, 4, 4), (16, 256, 2, 4), (64, 128, 4, 4), (32, 512, 4, 3), (64, 256, 8, 3))
        pairs = ()
    if m > 1:
        return ([QuantGemvConfig(bn, bk, 1, w, s, True, pairs=True) for bn, bk, w, s in pairs if four_bit]
                + [QuantGemvConfig(bn, bk, 1, w, s, True) for bn, bk, w, s in tiles])
    if four_bit:  # long K tiles: lanes along K, rows per thread (kernels/quant_int4.py)
        tiles = ((16, 4096, 4, 1), (8, 4096, 4, 1))
        # persistent kernels (rows, K tile, warps, programs per SM, prefetch, fp16x2); 2 warps on a 4096 tile
        # give each thread two groups (half the cross-lane sums a weight); the fp16x2 loop ("h2") holds x in
        # half the registers, which leaves room for more programs
        persistent = [(16, 4096, 4, 5, False, False), (8, 4096, 4, 6, False, False), (4, 4096, 2, 8, False, False),
                      (4, 4096, 2, 8, False, True), (4, 4096, 2, 10, False, True), (4, 4096, 2, 12, False, True),
                      (8, 4096, 2, 8, False, True), (8, 4096, 2, 10, False, True), (4, 4096, 2, 8, True, True),
                      (2, 4096, 2, 8, True, True), (2, 4096, 2, 10, True, True), (4, 4096, 1, 12, False, True),
                      (4, 4096, 1, 16, False, True),
                      # as many programs as fit an SM at once (offline sm_90 registers, 64K a SM): NF4 n16 w4 takes
                      # 167 registers (3 programs; the table's x5 runs in two waves), n8 w4 96 (5; the table: x6)
                      (16, 4096, 4, 3, False, False), (8, 4096, 4, 5, False, False),
                      # split in two 2048-wide K tiles (half the x registers; the partials summed in one load a
                      # row group, `_persistent_reduce`)
                      (2, 2048, 2, 12, True, True), (4, 2048, 2, 12, False, True), (4, 2048, 2, 16, False, True),
                      (4, 2048, 1, 16, False, True), (8, 2048, 2, 10, False, True)]
        splits, half2_splits = (), ()
        if k > 4096:  # the K loop with 2-warp tiles (two groups a thread), pipelined or not, at given splits
            tiles += ((4, 4096, 2, 1), (8, 4096, 2, 1), (8, 2048, 2, 1))
            splits = ((8, 2048, 2, 1, 2), (8, 1024, 2, 1, 2), (8, 1024, 1, 1, 2), (8, 2048, 2, 2, 2),
                      (8, 1024, 2, 2, 2), (4, 2048, 2, 1, 4), (16, 1024, 2, 1, 2), (8, 1024, 2, 3, 2))
            if fmt == "int4":  # its K loop in fp16x2 (rows, K tile, warps, splits); NF4's would add shuffles
                half2_splits = ((8, 2048, 2, 2), (8, 1024, 1, 4), (4, 2048, 1, 2), (16, 2048, 4, 2))
            # persistent split-K: one 2048-wide K tile a program (x loaded once), one ticket a program
            persistent = [(4, 2048, 2, 8, False, True), (4, 2048, 2, 10, False, True), (8, 2048, 2, 8, False, True),
                          (4, 2048, 1, 16, False, True), (2, 2048, 2, 8, True, True), (4, 2048, 2, 16, False, True),
                          (8, 2048, 2, 12, False, True),
                          (4, 4096, 2, 8, False, True), (4, 2048, 2, 8, False, False),
                          (4, 2048, 2, 8, True, True), (2, 2048, 2, 12, True, True), (8, 2048, 2, 8, True, True),
                          (4, 4096, 2, 10, True, True), (16, 2048, 4, 4, False, False), (8, 4096, 2, 6, False, True),
                          (4, 2048, 2, 12, False, True)]
        return ([QuantGemvConfig(bn, bk, 1, w, s, False) for bn, bk, w, s in tiles]
                + [QuantGemvConfig(bn, bk, sk, w, s, False) for bn, bk, w, s, sk in splits]
                + [QuantGemvConfig(bn, bk, sk, w, 1, False, half2=True) for bn, bk, w, sk in half2_splits]
                + [QuantGemvConfig(bn, bk, 1, w, 1, False, pps, pf, h2) for bn, bk, w, pps, pf, h2 in persistent])
    tiles = ((16, 512, 4, 3), (8, 512, 4, 3), (16, 1024, 8, 2), (32, 256, 4, 3), (32, 512, 8, 3), (8, 1024, 4, 2),
             (8, 1024, 4, 3), (16, 512, 4, 4), (16, 256, 4, 4), (16, 512, 8, 3), (32, 256, 8, 4))
    return [QuantGemvConfig(bn, bk, 1, w, s, False) for bn, bk, w, s in tiles]


def bench_shape(fmt: str, name: str, ms: tuple[int, ...], device: torch.device, l2: int, sweep: bool,
                deadline: float, kn: tuple[int, int] | None = None,
                dtype: torch.dtype = torch.bfloat16, dequant: bool = False) -> tuple[list[Row], list[str]]:
    """Checks, then times one format at one shape (`kn` overrides the Llama shape `name`; `dequant`: the
    quantized formats' prefill path at every M)."""
    k, n = kn or SHAPES[name]
    layers, w, nbytes = build_layers(fmt, k, n, device, l2, dtype)
    failures = check_format(fmt, layers[0], w, ms)
    rows = []
    silu = name == "down" and fmt not in UNFUSED  # the down projection as decode runs it
    for m in ms:
        xk = 2 * k if silu else k
        row = Row(fmt, name, k, n, m, nbytes + w.element_size() * m * (xk + n))
        if failures:
            row.failure = "check failed"
            rows.append(row)
            continue
        x = torch.randn(m, xk, device=device).to(dtype)
        calls = [lambda l=l, x=x: _call(fmt, l, x, silu_mul=silu, dequant=dequant) for l in layers]
        if fmt == "bnb-nf4":
            row.seconds, how = bnb.time_calls(calls, time_per_call)
            row.config = f"bitsandbytes {bnb.version()} matmul_4bit, timed by {how}"
        else:
            row.seconds = time_per_call(calls)
        kernel_fmt = "nf4" if fmt in NF4_LOOKUP else fmt
        if _prefill_path(fmt, x, dequant):
            row.config = "cuBLAS" if fmt == "bf16" else "dequantize + cuBLAS"
        elif kernel_fmt in QUANT_FORMATS:
            row.config = _short(get_config(kernel_fmt, n, k, m, k_unit(kernel_fmt, layers[0]), device))
            if sweep:
                _sweep(row, fmt, kernel_fmt, layers, x, silu, device, deadline)
        rows.append(row)
        print(f"  {fmt:<10} {name:<8} M={m:<2} {row.seconds * 1e6:8.1f} us", flush=True)
    del layers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, failures


def _sweep(row: Row, fmt: str, kernel_fmt: str, layers: list, x: torch.Tensor, silu: bool, device: torch.device,
           deadline: float) -> None:
    """Times the sweep's candidates for `row` (each checked against the default config first), printing
    every one; the fastest goes into `row` when it beats the default, and the winner of the K-loop
    kernels is tried again at other split counts."""
    m, n, k = row.m, row.n, row.k
    sms = num_sms_of(device)
    cands = [c if c.split_k > 1 else dataclasses.replace(c, split_k=auto_split_k(n, k, c.block_n, c.block_k, sms))
             for c in sweep_candidates(kernel_fmt, m, k)]  # a candidate's own split count stands
    want = _call(fmt, layers[0], x, silu_mul=silu)  # the default config's result
    tried = set()
    while cands and time.monotonic() <= deadline:
        cand = cands.pop(0)
        if cand in tried:
            continue
        tried.add(cand)
        try:
            # within the reference check's tolerance of the default (fp16x2 loops round differently)
            if not rel_error(_call(fmt, layers[0], x, cand, silu), want) < MAX_REL_ERROR:
                continue
            secs = time_per_call([lambda l=l, c=cand: _call(fmt, l, x, c, silu) for l in layers])
        except Exception as e:  # noqa: BLE001 - a config the compiler rejects is skipped
            print(f"    {fmt} {row.shape} M={m} {_short(cand)}: {type(e).__name__}", flush=True)
            continue
        print(f"    {fmt} {row.shape} M={m} {_short(cand)}: {secs * 1e6:.1f} us", flush=True)
        if secs < row.seconds:
            row.seconds, row.config, row.best = secs, _short(cand) + " (swept)", cand
            print(f"    ({kernel_fmt!r}, {n}, {k}, {quant_m_bucket(m)}): {cand!r},", flush=True)
            if not cand.persistent:  # persistent kernels take one K tile per split
                cands += split_variants(cand, n, k)


def _short(c: QuantGemvConfig) -> str:
    if c.use_dot:
        kind = "dot pairs" if c.pairs else "dot"
    elif c.persistent:
        kind = (f"persistent x{c.programs_per_sm}" + (" pf" if c.prefetch else "") + (" h2" if c.half2 else "")
                + (" early" if c.early_launch else ""))
    else:
        kind = "fma"
    return f"{kind} n{c.block_n} k{c.block_k} s{c.split_k} w{c.num_warps} st{c.num_stages}"


def write_json(rows: list[Row], path: str) -> None:
    """The swept winners, in the format `load_tuned_configs` (and FLOORLINE_QUANT_CONFIGS) reads."""
    entries = [dict(format=r.fmt, n=r.n, k=r.k, m_bucket=quant_m_bucket(r.m), config=r.best.as_dict(),
                    us=round(r.seconds * 1e6, 2))
               for r in rows if r.best is not None and r.fmt in QUANT_FORMATS]  # not nf4-gather / -select
    with open(path, "w") as f:
        json.dump({"configs": entries}, f, indent=1)


def print_tables(rows: list[Row], bw: float, lm_head: dict[int, float]) -> None:
    bf16 = {(r.shape, r.m): r.seconds for r in rows if r.fmt == "bf16"}
    head = (f"{'format':<10} {'shape':<8} {'K':>6} {'N':>6} {'M':>3} {'MB':>7} {'floor us':>9} {'us':>8} "
            f"{'GB/s':>6} {'x floor':>7} {'vs bf16':>7}  config")
    print(head)
    print("-" * len(head))
    for r in rows:
        floor = r.nbytes / bw
        if r.failure:
            print(f"{r.fmt:<10} {r.shape:<8} {r.k:>6} {r.n:>6} {r.m:>3} {r.nbytes / 1e6:>7.1f} {floor * 1e6:>9.1f} "
                  f"{'FAILED':>8}")
            continue
        speed = bf16.get((r.shape, r.m), math.nan) / r.seconds
        print(f"{r.fmt:<10} {r.shape:<8} {r.k:>6} {r.n:>6} {r.m:>3} {r.nbytes / 1e6:>7.1f} {floor * 1e6:>9.1f} "
              f"{r.seconds * 1e6:>8.1f} {r.nbytes / r.seconds / 1e9:>6.0f} {r.seconds / floor:>7.2f} "
              f"{speed:>6.2f}x  {r.config}")
    print(f"\nper token: {NUM_LAYERS} layers x (qkv + o_proj + gate_up + down) + bf16 lm_head")
    print(f"{'format':<10} {'M':>3} {'ms':>8} {'floor ms':>9} {'x floor':>7} {'vs bf16':>7}")
    fmts = list(dict.fromkeys(r.fmt for r in rows))
    ms = sorted({r.m for r in rows})
    totals, floors = {}, {}
    for fmt in fmts:
        for m in ms:
            sel = [r for r in rows if r.fmt == fmt and r.m == m and r.shape in LAYER_SHAPES]
            if len(sel) != len(LAYER_SHAPES) or any(r.failure for r in sel):
                continue
            totals[(fmt, m)] = NUM_LAYERS * sum(r.seconds for r in sel) + lm_head.get(m, 0.0)
            floors[(fmt, m)] = (NUM_LAYERS * sum(r.nbytes for r in sel)
                                + SHAPES["lm_head"][0] * SHAPES["lm_head"][1] * 2) / bw
    for (fmt, m), t in totals.items():  # after the loop: bf16 need not come first in --formats
        fl = floors[(fmt, m)]
        speed = totals.get(("bf16", m), math.nan) / t
        print(f"{fmt:<10} {m:>3} {t * 1e3:>8.3f} {fl * 1e3:>9.3f} {t / fl:>7.2f} {speed:>6.2f}x")
    print_bnb_ratios(rows, totals)


def print_bnb_ratios(rows: list[Row], totals: dict[tuple[str, int], float]) -> None:
    """floorline NF4 against bitsandbytes NF4, same shapes and M, same run."""
    ours = {(r.shape, r.m): r.seconds for r in rows if r.fmt == "nf4" and not r.failure}
    theirs = {(r.shape, r.m): r for r in rows if r.fmt == "bnb-nf4" and not r.failure}
    keys = [key for key in theirs if key in ours]
    if not keys:
        return
    print(f"\nfloorline nf4 vs {theirs[keys[0]].config}")
    print(f"{'shape':<8} {'M':>3} {'nf4 us':>8} {'bnb us':>8} {'bnb / nf4':>9}")
    for shape, m in keys:
        b = theirs[(shape, m)].seconds
        print(f"{shape:<8} {m:>3} {ours[(shape, m)] * 1e6:>8.1f} {b * 1e6:>8.1f} {b / ours[(shape, m)]:>8.2f}x")
    for m in sorted({m for _, m in keys}):
        if ("nf4", m) in totals and ("bnb-nf4", m) in totals:
            b, f = totals[("bnb-nf4", m)], totals[("nf4", m)]
            print(f"per token M={m}: nf4 {f * 1e3:.3f} ms, bnb {b * 1e3:.3f} ms, bnb / nf4 {b / f:.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m floorline.bench.quant", description=__doc__.splitlines()[0])
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--shapes", nargs="+", choices=LAYER_SHAPES, default=list(LAYER_SHAPES))
    p.add_argument("--m", nargs="+", type=int, default=[1, 4, 16],
                   help=f"row counts, 1..{DOT_MAX_M} (past {MAX_M}: the quantized dot paths, bf16 cuBLAS)")
    p.add_argument("--dequant", action="store_true",
                   help="time the quantized formats' prefill path (dequantize + cuBLAS) at every M instead")
    p.add_argument("--sweep", action="store_true", help="also time a few configs per row; prints table lines")
    p.add_argument("--budget-s", type=float, default=300.0, help="sweep time budget")
    p.add_argument("--out", help="with --sweep: write the winners as JSON (load with FLOORLINE_QUANT_CONFIGS=path)")
    args = p.parse_args(argv)
    if args.out and not args.sweep:
        print("floorline.bench.quant: --out writes the sweep's winners; add --sweep", file=sys.stderr)
        return 2
    if args.dequant and args.sweep:
        print("floorline.bench.quant: --sweep tunes the GEMVs, --dequant times the prefill path; pick one",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("floorline.bench.quant: needs a CUDA GPU (none is visible)", file=sys.stderr)
        return 2
    fmts = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS] + [str(m) for m in args.m if not 1 <= m <= DOT_MAX_M]
    if bad:
        print(f"floorline.bench.quant: unknown format or M out of 1..{DOT_MAX_M}: {', '.join(bad)}",
              file=sys.stderr)
        return 2
    from floorline.quant.fp8 import w8a8_supported

    device = torch.device("cuda", torch.cuda.current_device())
    if "fp8-w8a8" in fmts and not w8a8_supported(device):
        print("skipping fp8-w8a8: needs compute capability >= 9.0", file=sys.stderr)
        fmts.remove("fp8-w8a8")
    if "bnb-nf4" in fmts and not bnb.available():
        print("skipping bnb-nf4: bitsandbytes is not importable", file=sys.stderr)
        fmts.remove("bnb-nf4")
    import triton

    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    bw = read_bandwidth(device)
    header = (f"GPU {torch.cuda.get_device_name(device)} | torch {torch.__version__} | triton {triton.__version__} | "
              f"activations bf16 | measured read bandwidth {bw / 1e9:.0f} GB/s\n"
              "times: median per launch over CUDA-graph replays, weights rotated past L2; floor = bytes / read BW")
    print(header, flush=True)
    deadline = time.monotonic() + args.budget_s
    rows, failures = [], []
    for fmt in fmts:
        for name in args.shapes:
            r, f = bench_shape(fmt, name, tuple(args.m), device, l2, args.sweep, deadline, dequant=args.dequant)
            rows += r
            failures += f
    lm_rows, _ = bench_shape("bf16", "lm_head", tuple(args.m), device, l2, False, deadline)
    lm_head = {r.m: r.seconds for r in lm_rows}
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print("  " + f)
    if args.sweep and args.out:
        write_json(rows, args.out)
    print()
    print(header)
    print_tables(rows, bw, lm_head)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
