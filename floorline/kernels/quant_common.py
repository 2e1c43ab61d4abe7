"""Launch plumbing shared by the quantized GEMV kernels (quant_w8, quant_int4, quant_nf4).

The kernels follow `skinny_gemm`: one program owns BLOCK_N output rows and walks K in BLOCK_K steps
(a multiple of the format's group), reading the packed weights once and dequantizing in registers;
M == 1 takes an FMA path, M in 2..16 a tensor-core dot path, split-K fills the SMs on short grids.
Configs come from a table keyed by (format, N, K, M-bucket) that `python -m floorline.bench.quant
--sweep` prints, else from `heuristic_config`; nothing is autotuned at run time.

Prefill (M > 16) dequantizes the whole weight into a per-device buffer and runs cuBLAS on it: the
dequantization reads the packed bytes once and writes 2 bytes a weight, small next to a GEMM of
hundreds of rows.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from floorline.kernels.decode_attention import num_sms_of
from floorline.kernels.skinny_gemm import (  # noqa: F401  (DOT_BLOCK_M, MAX_M re-exported to the kernels)
    DOT_BLOCK_M,
    M_BUCKETS,
    MAX_M,
    SkinnyConfig,
    auto_split_k,
    m_bucket,
)
from floorline.kernels.tickets import tickets
from floorline.kernels.triton_compat import triton

FORMATS = ("int8", "fp8", "int4", "nf4")
DOT_MIN_K = 128  # 4-bit dot paths: one tl.dot per slot of BLOCK_K / 8 columns, which must be >= 16
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The quantized kernels take the bf16 skinny GEMM's launch configs: the same fields and meaning,
# except that block_k counts weights (not bytes) and is a multiple of the format's group.
QuantGemvConfig = SkinnyConfig


# (format, N, K, M-bucket) -> config: the lines `python -m floorline.bench.quant --sweep` prints.
# Llama-3.1-8B decode shapes, swept on an NVIDIA H200 (torch 2.11, triton 3.6), 2026-12-01 (int8/fp8 and
# int4 M = 1: first sweep; int4 M > 1: second; nf4: third, same kernel code as the second). Shapes and
# M-buckets missing here take `heuristic_config`. benchmarks/quant_h200_notes.md has the tables.
TUNED_CONFIGS: dict[tuple[str, int, int, int], QuantGemvConfig] = {
    ('int8', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('int8', 6144, 4096, 4): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 28672, 4096, 1): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('int8', 28672, 4096, 4): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 28672, 4096, 16): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 4096, 14336, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 4096, 14336, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('fp8', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('fp8', 4096, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('fp8', 28672, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('fp8', 4096, 14336, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('fp8', 4096, 14336, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('fp8', 4096, 14336, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('int4', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('int4', 4096, 4096, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('int4', 28672, 4096, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('int4', 28672, 4096, 16): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 4096, 14336, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('int4', 4096, 14336, 16): QuantGemvConfig(block_n=32, block_k=256, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 4096, 14336, 4): QuantGemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 6144, 4096, 4): QuantGemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 28672, 4096, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('nf4', 28672, 4096, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=4, use_dot=True),
    ('nf4', 28672, 4096, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=4, use_dot=True),
    ('nf4', 4096, 14336, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('nf4', 4096, 14336, 16): QuantGemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 4096, 14336, 4): QuantGemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 4096, 4096, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('nf4', 4096, 4096, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=8, num_warps=4, num_stages=4, use_dot=True),
    ('nf4', 4096, 4096, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=8, num_warps=4, num_stages=4, use_dot=True),
    ('nf4', 6144, 4096, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    ('nf4', 6144, 4096, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('nf4', 6144, 4096, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
}


def _base_config(fmt: str, n: int, m: int) -> QuantGemvConfig:
    """Untuned defaults. 4-bit M = 1 tiles are long in K so that each thread holds 8-16 rows of the same
    x elements (x is loaded and converted once per thread for all of them)."""
    if m > 1:
        return QuantGemvConfig(block_n=32, block_k=256, num_warps=4, num_stages=3, use_dot=True)
    if fmt in ("int8", "fp8"):  # 1 byte a weight: bf16's 512-wide tiles hold the same bytes at 1024
        if n >= 16384:
            return QuantGemvConfig(block_n=16, block_k=1024, num_warps=8, num_stages=2)
        return QuantGemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=3)
    return QuantGemvConfig(block_n=16, block_k=4096, num_warps=4, num_stages=1)  # the H200 sweep's M = 1 winner


def heuristic_config(fmt: str, n: int, k: int, m: int, k_unit: int, num_sms: int = 132) -> QuantGemvConfig:
    """Default config: tiles shrunk to small problems, block_k a multiple of `k_unit`, split-K to fill SMs."""
    base = _base_config(fmt, n, m)
    unit = max(k_unit, DOT_MIN_K) if base.use_dot and fmt in ("int4", "nf4") else k_unit
    block_k = max(unit, min(base.block_k, triton.next_power_of_2(k)))
    block_n = max(16 if base.use_dot else 1, min(base.block_n, triton.next_power_of_2(n)))
    split = auto_split_k(n, k, block_n, block_k, num_sms)
    return dataclasses.replace(base, block_n=block_n, block_k=block_k, split_k=split)


def get_config(fmt: str, n: int, k: int, m: int, k_unit: int, device: torch.device | str = "cuda") -> QuantGemvConfig:
    """The tuned table entry for (format, N, K, M-bucket), else the heuristic."""
    tuned = TUNED_CONFIGS.get((fmt, n, k, m_bucket(m)))
    if tuned is not None and (tuned.use_dot or m == 1):
        return tuned
    return heuristic_config(fmt, n, k, m, k_unit, num_sms_of(torch.device(device)))


def set_tuned_config(fmt: str, n: int, k: int, bucket: int, config: QuantGemvConfig) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"quantized GEMV: format must be one of {FORMATS}, got {fmt!r}")
    if bucket not in M_BUCKETS:
        raise ValueError(f"quantized GEMV: M-bucket must be one of {M_BUCKETS}, got {bucket}")
    if bucket > 1 and not config.use_dot:
        raise ValueError("quantized GEMV: the FMA path (use_dot=False) handles M == 1 only")
    TUNED_CONFIGS[(fmt, n, k, bucket)] = config


def load_tuned_configs(path: str | Path) -> int:
    """Loads the JSON `python -m floorline.bench.quant --sweep --out f.json` writes; returns the count."""
    entries = json.loads(Path(path).read_text())["configs"]
    fields = {f.name for f in dataclasses.fields(QuantGemvConfig)}
    for e in entries:
        set_tuned_config(e["format"], e["n"], e["k"], e["m_bucket"],
                         QuantGemvConfig(**{f: e["config"][f] for f in fields}))
    return len(entries)


def check_config(cfg: QuantGemvConfig, m: int, k_unit: int, name: str, dot_min_k: int = 32) -> None:
    if not cfg.use_dot and m != 1:
        raise ValueError(f"{name}: the FMA path (use_dot=False) handles M == 1 only, got M = {m}")
    for field in ("block_n", "block_k", "num_warps"):
        v = getattr(cfg, field)
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name}: {field} must be a power of two, got {v}")
    if cfg.block_k % k_unit:
        raise ValueError(f"{name}: block_k must be a multiple of {k_unit}, got {cfg.block_k}")
    if cfg.use_dot and (cfg.block_n < 16 or cfg.block_k < dot_min_k):
        raise ValueError(f"{name}: the dot path needs block_n >= 16 and block_k >= {dot_min_k}")


@dataclass
class Geometry:
    """Grid and split-K buffers of one launch."""

    tiles: int
    splits: int
    blocks_per_split: int
    ws: torch.Tensor  # [splits, M, N] fp32 partials, or a dummy
    tickets: torch.Tensor  # int32 counters, or a dummy


def geometry(cfg: QuantGemvConfig, m: int, n: int, k: int, out: torch.Tensor) -> Geometry:
    tiles = triton.cdiv(n, cfg.block_n)
    k_blocks = triton.cdiv(k, cfg.block_k)
    per_split = triton.cdiv(k_blocks, max(1, min(cfg.split_k, k_blocks)))
    splits = triton.cdiv(k_blocks, per_split)  # no empty splits
    if splits == 1:
        return Geometry(tiles, 1, per_split, out, out)  # dummies: SPLIT=False never touches them
    ws = torch.empty((splits, m, n), dtype=torch.float32, device=out.device)
    return Geometry(tiles, splits, per_split, ws, tickets(out.device, tiles, "quant_gemv"))


def operand(x: torch.Tensor, k: int, silu_mul: bool, name: str) -> torch.Tensor:
    """Checks x [M, K] (or [M, 2K] gate | up with `silu_mul`) and returns it with a unit last stride."""
    width = 2 * k if silu_mul else k
    if x.dim() != 2 or x.shape[1] != width:
        raise ValueError(f"{name}: x must be [M, {width}] for a weight of {k} input features, got {tuple(x.shape)}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{name}: x must be float16/bfloat16/float32, got {x.dtype}")
    if not 1 <= x.shape[0] <= MAX_M:
        raise ValueError(f"{name}: the GEMV takes 1 <= M <= {MAX_M} rows, got {x.shape[0]}")
    return x if x.stride(1) == 1 else x.contiguous()


_BUFFERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # replaced buffers stay alive: a captured graph may still read them


def dequant_buffer(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A flat buffer of at least `numel` elements shared by every layer on `device` (one stream: layers
    run one after another, so each overwrites the previous layer's weights only after it was used)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _BUFFERS.get((device, dtype))
    if buf is not None and buf.numel() >= numel:
        return buf
    fresh = torch.empty(numel, dtype=dtype, device=device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return fresh  # from the graph's pool and owned by it; never cached (DecodeGraphs warms up first)
    if buf is not None:
        _RETIRED.append(buf)
    _BUFFERS[(device, dtype)] = fresh
    return fresh
