"""Launch plumbing and device helpers shared by the quantized GEMV kernels (quant_w8, quant_int4, quant_nf4).

The kernels follow `skinny_gemm`: one program owns BLOCK_N output rows and walks K in BLOCK_K steps
(a multiple of the format's group), reading the packed weights once and dequantizing in registers;
M == 1 takes an FMA path, M in 2..64 a tensor-core dot path, split-K fills the SMs on short grids.
The 4-bit formats also have persistent M == 1 kernels (configs with `programs_per_sm`): a fixed grid
whose programs each own one K tile, load its x once, and walk row tiles with a stride.
Configs come from a table keyed by (format, N, K, M-bucket) that `python -m floorline.bench.quant
--sweep` prints, else from `heuristic_config`; nothing is autotuned at run time.

Prefill (M > DOT_MAX_M) dequantizes the whole weight into a per-device buffer and runs cuBLAS on it: the
dequantization reads the packed bytes once and writes 2 bytes a weight, small next to a GEMM of
hundreds of rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from floorline.errors import FloorlineError
from floorline.kernels.decode_attention import num_sms_of
from floorline.kernels.skinny_gemm import DOT_BLOCK_M, _dot, _epilogue, _operand  # noqa: F401 (DOT_BLOCK_M re-exported)
from floorline.kernels.skinny_gemm_configs import M_BUCKETS, MAX_M, SkinnyConfig, auto_split_k, m_bucket  # noqa: F401
from floorline.kernels.tickets import tickets
from floorline.kernels.triton_compat import tl, triton

FORMATS = ("int8", "fp8", "int4", "nf4")
DOT_MIN_K = 128  # 4-bit dot paths: one tl.dot per slot of BLOCK_K / 8 columns, which must be >= 16
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The dot paths also serve 17..DOT_MAX_M rows (decode batches past 16, which would otherwise dequantize
# the whole weight every step), on x tiles of up to 64 rows; their M-buckets extend M_BUCKETS.
DOT_MAX_M = 64
DOT_M_BUCKETS = (32, 64)

@dataclass(frozen=True)
class QuantGemvConfig(SkinnyConfig):
    """The bf16 skinny GEMM's launch config (block_k counts weights, a multiple of the format's group),
    plus the persistent M = 1 kernels' fields: `programs_per_sm` > 0 launches that many programs per SM,
    each owning one K tile (split = K / block_k) and walking row tiles; `prefetch` loads the next row
    tile's weights while the current one is summed; `half2` runs the persistent loop in packed fp16x2
    (`quant_half2`) for fp16 / bf16 activations; `pairs` runs the 4-bit dot paths that build their operands
    from the words in registers (`quant_pairs`; fp16 / bf16 activations, groups of >= 64). The three are
    4-bit options: the 8-bit launcher refuses them (`check_config`'s `four_bit`)."""

    programs_per_sm: int = 0
    prefetch: bool = False
    half2: bool = False
    pairs: bool = False

    @property
    def persistent(self) -> bool:
        """Whether this config launches a persistent M = 1 kernel (the dot path never does)."""
        return self.programs_per_sm > 0 and not self.use_dot


# (format, N, K, M-bucket) -> config: the lines `python -m floorline.bench.quant --sweep` prints.
# Llama-3.1-8B decode shapes, swept on an NVIDIA H200 (torch 2.11, triton 3.6), 2026-12-01 (int8/fp8 M > 1:
# first sweep; 4-bit M > 1: sixth session, the pair dots; every M = 1 entry: later sessions' sweeps, with the
# persistent 4-bit kernels).
# Shapes and M-buckets missing here take `heuristic_config`. benchmarks/quant_h200_notes.md has the tables.
TUNED_CONFIGS: dict[tuple[str, int, int, int], QuantGemvConfig] = {
    ('int8', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('int8', 6144, 4096, 4): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 28672, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('int8', 28672, 4096, 4): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 28672, 4096, 16): QuantGemvConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 4096, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('int8', 4096, 14336, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('int8', 4096, 14336, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 4096, 14336, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('fp8', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    ('fp8', 4096, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('fp8', 28672, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('fp8', 4096, 14336, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('fp8', 4096, 14336, 4): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('fp8', 4096, 14336, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('nf4', 6144, 4096, 16): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    # int4 M > 1: the pair dots, 64 rows, 3 stages (sixth session, 2026-12-01, M = 4 / 16 sweeps; the same split
    # count won both buckets, and buckets 2 and 8 take it too)
    **{('int4', n, k, b): QuantGemvConfig(block_n=64, block_k=128, split_k=split, num_warps=4, num_stages=3,
                                          use_dot=True, pairs=True)
       for n, k, split in ((6144, 4096, 4), (4096, 4096, 8), (28672, 4096, 2), (4096, 14336, 8)) for b in (2, 4, 8, 16)},
    # NF4 M > 1: the pair dots on 2 warps (mma.sync), except qkv at 8..16 rows, where the first dot path won
    **{('nf4', n, k, b): QuantGemvConfig(block_n=64, block_k=128, split_k=split, num_warps=2, num_stages=3,
                                         use_dot=True, pairs=True)
       for n, k, split, buckets in ((6144, 4096, 4, (2, 4)), (4096, 4096, 4, (2, 4, 8, 16)),
                                    (28672, 4096, 2, (2, 4, 8, 16)), (4096, 14336, 8, (2, 4, 8, 16))) for b in buckets},
    ('nf4', 6144, 4096, 8): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    # 17..64 rows (decode batches past 16), every format on its dot paths (seventh session, 2026-12-01, the M = 32 / 64
    # sweep; 4-bit: the pair dots won at 32 rows, the first dot path at 64)
    ('int8', 6144, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int8', 6144, 4096, 64): QuantGemvConfig(block_n=128, block_k=64, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 4096, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int8', 4096, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int8', 28672, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=3, use_dot=True),
    ('int8', 28672, 4096, 64): QuantGemvConfig(block_n=128, block_k=64, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    ('int8', 4096, 14336, 32): QuantGemvConfig(block_n=128, block_k=128, split_k=8, num_warps=4, num_stages=3, use_dot=True),
    ('int8', 4096, 14336, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=8, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 6144, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 6144, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 4096, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 4096, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 28672, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 28672, 4096, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=1, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 4096, 14336, 32): QuantGemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('fp8', 4096, 14336, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=8, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 6144, 4096, 32): QuantGemvConfig(block_n=128, block_k=128, split_k=4, num_warps=8, num_stages=3, use_dot=True, pairs=True),
    ('int4', 6144, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 4096, 4096, 32): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True, pairs=True),
    ('int4', 4096, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 28672, 4096, 32): QuantGemvConfig(block_n=128, block_k=128, split_k=1, num_warps=8, num_stages=3, use_dot=True, pairs=True),
    ('int4', 28672, 4096, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=1, num_warps=4, num_stages=3, use_dot=True),
    ('int4', 4096, 14336, 32): QuantGemvConfig(block_n=128, block_k=128, split_k=8, num_warps=8, num_stages=3, use_dot=True, pairs=True),
    ('int4', 4096, 14336, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=8, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 6144, 4096, 32): QuantGemvConfig(block_n=128, block_k=64, split_k=8, num_warps=4, num_stages=3, use_dot=True, pairs=True),
    ('nf4', 6144, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 4096, 4096, 32): QuantGemvConfig(block_n=128, block_k=128, split_k=8, num_warps=2, num_stages=3, use_dot=True, pairs=True),
    ('nf4', 4096, 4096, 64): QuantGemvConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 28672, 4096, 32): QuantGemvConfig(block_n=128, block_k=128, split_k=2, num_warps=2, num_stages=3, use_dot=True, pairs=True),
    ('nf4', 28672, 4096, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=1, num_warps=4, num_stages=3, use_dot=True),
    ('nf4', 4096, 14336, 32): QuantGemvConfig(block_n=128, block_k=64, split_k=8, num_warps=4, num_stages=3, use_dot=True, pairs=True),
    ('nf4', 4096, 14336, 64): QuantGemvConfig(block_n=128, block_k=128, split_k=4, num_warps=8, num_stages=3, use_dot=True),
    # the LM head (`--lm-head-quantization`), M = 1 (sixth session's sweep)
    ('int8', 128256, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('fp8', 128256, 4096, 1): QuantGemvConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=4, use_dot=False),
    ('int4', 128256, 4096, 1): QuantGemvConfig(block_n=4, block_k=4096, split_k=1, num_warps=1, num_stages=1, use_dot=False, programs_per_sm=12, prefetch=False, half2=True),
    # M = 1 4-bit: the persistent kernels where they won (third H200 session, 2026-12-01, runs 2-3; the fp16x2
    # "half2" entries and int4 o_proj from the fourth session's sweeps, same day, runs 1-2)
    ('int4', 6144, 4096, 1): QuantGemvConfig(block_n=2, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=8, prefetch=True, half2=True),
    ('int4', 4096, 4096, 1): QuantGemvConfig(block_n=4, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=8, prefetch=False),
    ('int4', 28672, 4096, 1): QuantGemvConfig(block_n=4, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=10, prefetch=False, half2=True),
    ('int4', 4096, 14336, 1): QuantGemvConfig(block_n=8, block_k=2048, split_k=2, num_warps=2, num_stages=1, use_dot=False),
    ('nf4', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False, programs_per_sm=5, prefetch=False),
    ('nf4', 4096, 4096, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False, programs_per_sm=6, prefetch=False),
    ('nf4', 28672, 4096, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=8, prefetch=False, half2=True),
    ('nf4', 4096, 14336, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False),
}


def _base_config(fmt: str, n: int, k: int, m: int) -> QuantGemvConfig:
    """Untuned defaults. 4-bit M = 1 tiles are long in K: each thread's x elements serve all its rows.
    Where one 4096-wide tile covers K, the persistent kernel (x loaded once per program) won every shape
    of the H200 sweep; longer K keeps the K loop: a persistent split-K (one ticket a program, 2048-wide
    K tiles) measured 16.7 us against 14.7 for the int4 down projection (too few row tiles a program), and
15.7 with its partials summed in one load (`_persistent_reduce`)."""
    if m > MAX_M:  # 128-row tiles of the (first) dot paths: most frequent among the H200's 64-row winners
        return QuantGemvConfig(block_n=128, block_k=128, num_warps=4, num_stages=3, use_dot=True)
    if m > 1 and fmt in ("int4", "nf4"):  # the pair dots: the H200 sweeps' most frequent winners (64 rows, 3 stages;
        # NF4 on 2 warps, which takes mma.sync instead of wgmma)
        return QuantGemvConfig(block_n=64, block_k=128, num_warps=4 if fmt == "int4" else 2, num_stages=3,
                               use_dot=True, pairs=True)
    if m > 1:
        return QuantGemvConfig(block_n=32, block_k=256, num_warps=4, num_stages=3, use_dot=True)
    if fmt in ("int8", "fp8"):  # 1 byte a weight: bf16's 512-wide tiles hold the same bytes at 1024
        if n >= 16384:  # the H200 winner at both tall shapes (gate_up, the LM head: 118 us against 179 for
            # the earlier n16 k1024 w8 st2)
            return QuantGemvConfig(block_n=16, block_k=512, num_warps=4, num_stages=4)
        return QuantGemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=3)
    if k <= 4096 and fmt == "int4":  # the fp16x2 loop: it won the long shape (gate_up) and tied qkv
        return QuantGemvConfig(block_n=4, block_k=4096, num_warps=2, num_stages=1, programs_per_sm=10, half2=True)
    if k <= 4096:  # NF4's loop is bound by its shuffles, which fp16x2 does not reduce
        return QuantGemvConfig(block_n=4, block_k=4096, num_warps=2, num_stages=1, programs_per_sm=8)
    return QuantGemvConfig(block_n=8, block_k=4096, num_warps=4, num_stages=1)


def heuristic_config(fmt: str, n: int, k: int, m: int, k_unit: int, num_sms: int = 132) -> QuantGemvConfig:
    """Default config: tiles shrunk to small problems, block_k a multiple of `k_unit`, split-K to fill SMs."""
    base = _base_config(fmt, n, k, m)
    unit = max(k_unit, DOT_MIN_K) if base.use_dot and fmt in ("int4", "nf4") else k_unit
    block_k = max(unit, min(base.block_k, triton.next_power_of_2(k)))
    block_n = max(16 if base.use_dot else 1, min(base.block_n, triton.next_power_of_2(n)))
    split = auto_split_k(n, k, block_n, block_k, num_sms)
    return dataclasses.replace(base, block_n=block_n, block_k=block_k, split_k=split)


def _load_env_configs() -> None:
    """Once per process: FLOORLINE_QUANT_CONFIGS=path (the JSON of `bench.quant --sweep --out`) over the table."""
    global _ENV_LOADED
    if not _ENV_LOADED:
        _ENV_LOADED = True
        path = os.environ.get("FLOORLINE_QUANT_CONFIGS")
        if path:
            try:
                load_tuned_configs(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise FloorlineError(
                    f"FLOORLINE_QUANT_CONFIGS={path}: cannot use it ({type(e).__name__}: {e}); expected the "
                    "JSON that `python -m floorline.bench.quant --sweep --out FILE` writes") from e


_ENV_LOADED = False


def quant_m_bucket(m: int) -> int:
    """The config table's M-bucket of m rows: M_BUCKETS, then DOT_M_BUCKETS for 17..DOT_MAX_M."""
    return m_bucket(m) if m <= MAX_M else next(b for b in DOT_M_BUCKETS if b >= m)


def get_config(fmt: str, n: int, k: int, m: int, k_unit: int, device: torch.device | str = "cuda") -> QuantGemvConfig:
    """The tuned table entry for (format, N, K, M-bucket), else the heuristic."""
    _load_env_configs()
    tuned = TUNED_CONFIGS.get((fmt, n, k, quant_m_bucket(m)))
    if tuned is not None and (tuned.use_dot or m == 1):
        return tuned
    return heuristic_config(fmt, n, k, m, k_unit, num_sms_of(torch.device(device)))


def set_tuned_config(fmt: str, n: int, k: int, bucket: int, config: QuantGemvConfig) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"quantized GEMV: format must be one of {FORMATS}, got {fmt!r}")
    if bucket not in M_BUCKETS + DOT_M_BUCKETS:
        raise ValueError(f"quantized GEMV: M-bucket must be one of {M_BUCKETS + DOT_M_BUCKETS}, got {bucket}")
    if bucket > 1 and not config.use_dot:
        raise ValueError("quantized GEMV: the FMA path (use_dot=False) handles M == 1 only")
    TUNED_CONFIGS[(fmt, n, k, bucket)] = config


def load_tuned_configs(path: str | Path) -> int:
    """Loads the JSON `python -m floorline.bench.quant --sweep --out f.json` writes; returns the count."""
    entries = json.loads(Path(path).read_text())["configs"]
    fields = {f.name for f in dataclasses.fields(QuantGemvConfig)}
    for e in entries:  # files written before a field existed take its default
        set_tuned_config(e["format"], e["n"], e["k"], e["m_bucket"],
                         QuantGemvConfig(**{f: e["config"][f] for f in fields if f in e["config"]}))
    return len(entries)


def check_config(cfg: QuantGemvConfig, m: int, k_unit: int, name: str, dot_min_k: int = 32,
                 four_bit: bool = False) -> None:
    """Raises a ValueError naming what `cfg` gets wrong for this launch; `four_bit`: the format has the
    persistent, fp16x2 and pair kernels (programs_per_sm, half2, pairs)."""
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
    if not four_bit and (cfg.programs_per_sm or cfg.half2 or cfg.pairs):  # never silently ignored
        raise ValueError(f"{name}: the 8-bit formats have no persistent, fp16x2 or pair kernels; configs take "
                         f"programs_per_sm=0, half2=False, pairs=False (got {cfg})")
    if cfg.pairs and not cfg.use_dot:
        raise ValueError(f"{name}: pairs is an option of the dot path (use_dot=True, 2..{DOT_MAX_M} rows)")
    if cfg.persistent and cfg.num_stages != 1:  # 2-3 stages doubled the H200 times
        raise ValueError(f"{name}: the persistent kernels (programs_per_sm > 0) take num_stages = 1, got "
                         f"{cfg.num_stages}")


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


@dataclass
class PersistentGeometry:
    """Grid of a persistent M = 1 launch: `programs` = splits x programs per split; `reduce` the
    constexprs of `_persistent_reduce`'s partial tiles (split count and row tiles a load, powers of two)."""

    programs: int
    tiles: int
    splits: int
    ws: torch.Tensor
    tickets: torch.Tensor
    reduce: dict


REDUCE_ELEMENTS = 2048  # partials `_persistent_reduce` loads at once (a few registers a thread)


def persistent_geometry(cfg: QuantGemvConfig, n: int, k: int, out: torch.Tensor) -> PersistentGeometry:
    tiles = triton.cdiv(n, cfg.block_n)
    splits = triton.cdiv(k, cfg.block_k)
    per_split = max(1, min(tiles, triton.cdiv(cfg.programs_per_sm * num_sms_of(out.device), splits)))
    if splits == 1:
        return PersistentGeometry(per_split, tiles, 1, out, out, dict(SPLITS_P2=1, TILES_AT_ONCE=1))
    splits_p2 = triton.next_power_of_2(splits)
    at_once = min(triton.next_power_of_2(triton.cdiv(tiles, per_split)),
                  max(1, REDUCE_ELEMENTS // (splits_p2 * cfg.block_n)))
    ws = torch.empty((splits, 1, n), dtype=torch.float32, device=out.device)
    return PersistentGeometry(per_split * splits, tiles, splits, ws, tickets(out.device, tiles, "quant_gemv"),
                              dict(SPLITS_P2=splits_p2, TILES_AT_ONCE=at_once))


def dot_block_m(m: int) -> int:
    """Rows of a dot path's x tile: 16 (tl.dot's least) up to the next power of two of m."""
    return max(DOT_BLOCK_M, triton.next_power_of_2(m))


def half2_ok(cfg: QuantGemvConfig, x: torch.Tensor) -> bool:
    """Whether a persistent launch takes the fp16x2 loop: asked for, and 16-bit activations (fp32 ones
    keep the fp32 loop, whose results their tolerances expect)."""
    return cfg.half2 and x.dtype in (torch.float16, torch.bfloat16)


def unfused_silu(x: torch.Tensor, silu_mul: bool, cfg: QuantGemvConfig) -> tuple[torch.Tensor, bool]:
    """(x, silu_mul) for the launch: the SiLU-and-mul stays in the GEMV's x loads only in the persistent
    M = 1 kernels, which load x once per program. The others load x once per row tile, so each tile
    would recompute it; one activation kernel first costs less (H200, down projection at M = 1, same
    config fused / plain: int8 `fma n16 k512 st4` 25.1 / 16.6 us, int4 `fma n8 k4096` 22.6 / 17.3 us;
    the activation kernel adds ~1.3 us)."""
    if silu_mul and not cfg.persistent:
        from floorline.kernels.activation import silu_and_mul

        return silu_and_mul(x), False
    return x, silu_mul


def operand(x: torch.Tensor, k: int, silu_mul: bool, name: str) -> torch.Tensor:
    """Checks x [M, K] (or [M, 2K] gate | up with `silu_mul`) and returns it with a unit last stride."""
    width = 2 * k if silu_mul else k
    if x.dim() != 2 or x.shape[1] != width:
        raise ValueError(f"{name}: x must be [M, {width}] for a weight of {k} input features, got {tuple(x.shape)}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{name}: x must be float16/bfloat16/float32, got {x.dtype}")
    if not 1 <= x.shape[0] <= DOT_MAX_M:
        raise ValueError(f"{name}: the GEMV takes 1 <= M <= {DOT_MAX_M} rows, got {x.shape[0]}")
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


# Device helpers of the quantized GEMV kernels. Triton inlines them into each kernel; they were
# factored out of quant_int4 / quant_nf4 / quant_w8 without changing the sm_90 code those compile to.


@triton.jit
def _load_x(ptrs, mask, K, X_SILU_MUL: tl.constexpr, MASKED: tl.constexpr = True):
    """x elements (with `X_SILU_MUL`, silu(gate) * up of x [M, 2K]); MASKED=False: no predication."""
    return _operand(ptrs, None, mask, K, MASKED, X_SILU_MUL, False)


@triton.jit
def _split_tile(k_limit, k_blocks_per_split, N, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(tile, split, k_start, k_end, rn, rn_w) of a K-loop program on a (tiles, splits) grid: its rows rn,
    clamped to N - 1 in rn_w (past-N rows re-read row N - 1: unmasked loads, masked stores), and its
    split's K range, cut at k_limit."""
    tile = tl.program_id(0)
    split = tl.program_id(1)
    k_start = split * k_blocks_per_split * BLOCK_K
    k_end = tl.minimum(k_limit, k_start + k_blocks_per_split * BLOCK_K)
    rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    return tile, split, k_start, k_end, rn, tl.minimum(rn, N - 1)


@triton.jit
def _join_slots(w0, w1, w2, w3, w4, w5, w6, w7):
    """Eight [..] tensors -> [.., 2, 2, 2] with slot 4a + 2b + c at [.., a, b, c] (a register-only join).

    Each join appends its pair as the new last dimension, so the outermost join picks c.
    """
    return tl.join(tl.join(tl.join(w0, w4), tl.join(w2, w6)), tl.join(tl.join(w1, w5), tl.join(w3, w7)))


@triton.jit
def _slot_dot_pointers(q_ptr, x_ptr, rn64, M, stride_qn, stride_xm, k_start, NB: tl.constexpr, GW: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """4-bit dot path: word pointers [BN, NB, GW] (row, group, word), x pointers [BM, BK], the x tile's
    column offsets [1, BK] and row mask [BM, 1] at k_start."""
    rj = tl.arange(0, GW)
    woff = tl.arange(0, NB)[:, None] * GW + rj[None, :]  # [NB, GW]
    q_ptrs = q_ptr + rn64[:, None, None] * stride_qn + (k_start // 8 + woff)[None, :, :]
    rm = tl.arange(0, BLOCK_M)
    xoff = tl.arange(0, BLOCK_K)[None, :]
    x_ptrs = x_ptr + rm[:, None] * stride_xm + k_start + xoff
    return q_ptrs, x_ptrs, xoff, (rm < M)[:, None]


@triton.jit
def _slot_dot_load(q_ptrs, x_ptrs, group_ok, m_mask, k, xoff, K, EVEN_K: tl.constexpr):
    """4-bit dot path, the tile at k: words [BN, NB, GW] as uint32 (groups past the end, `group_ok` [NB]
    false, read as 0 unless EVEN_K) and x [BM, BK]."""
    if EVEN_K:
        w = tl.load(q_ptrs, eviction_policy="evict_first")
        xs = _load_x(x_ptrs, m_mask, K, False)
    else:
        w = tl.load(q_ptrs, mask=group_ok[None, :, None], other=0, eviction_policy="evict_first")
        xs = _load_x(x_ptrs, m_mask & (k + xoff < K), K, False)
    return w.to(tl.uint32, bitcast=True), xs


@triton.jit
def _slot_dot(acc, xs, w0, w1, w2, w3, w4, w5, w6, w7, BLOCK_N: tl.constexpr, NB: tl.constexpr, GW: tl.constexpr,
              BLOCK_K: tl.constexpr, DOT_IEEE: tl.constexpr):
    """acc + xs W^T, W the tile's eight dequantized slots [BN, NB, GW]: joined in registers and permuted to
    column order [BN, BK] on their way to the dot operand layout, rounded to x's dtype, one tl.dot."""
    wt = _join_slots(w0, w1, w2, w3, w4, w5, w6, w7)
    wt = tl.permute(tl.reshape(wt, (BLOCK_N, NB, GW, 8)), (0, 1, 3, 2))  # to column order
    wt = tl.reshape(wt, (BLOCK_N, BLOCK_K)).to(xs.dtype)
    return _dot(xs, tl.trans(wt), acc, DOT_IEEE)


@triton.jit
def _slot_dot_epilogue(acc, rn, M, N, out_ptr, ws_ptr, cnt_ptr, tile, split, num_splits, BLOCK_M: tl.constexpr,
                       SPLIT: tl.constexpr):
    """Stores the dot path's [BM, BN] tile (rows < M, columns < N), through split-K partials with SPLIT."""
    rm = tl.arange(0, BLOCK_M)
    c_offs = rm[:, None] * N + rn[None, :]
    mask = (rm < M)[:, None] & (rn[None, :] < N)
    _epilogue(acc, c_offs, rn[None, :], mask, out_ptr, out_ptr, ws_ptr, cnt_ptr, tile, split,
              num_splits, N, M * N, False, SPLIT)


@triton.jit
def _slot_x(x_ptrs, kx, K, S: tl.constexpr, GW: tl.constexpr, EVEN_K: tl.constexpr, X_SILU_MUL: tl.constexpr):
    """fp32 x elements of slot S (columns kx + S * GW), zero past K."""
    if EVEN_K:
        return _load_x(x_ptrs + S * GW, None, K, X_SILU_MUL, False).to(tl.float32)
    return _load_x(x_ptrs + S * GW, kx + S * GW < K, K, X_SILU_MUL).to(tl.float32)


@triton.jit
def _slot_xs(x_ptrs, kx, K, GW: tl.constexpr, EVEN_K: tl.constexpr, X_SILU_MUL: tl.constexpr):
    """The eight slots' fp32 x elements (`_slot_x` for S = 0..7), as a tuple."""
    return (_slot_x(x_ptrs, kx, K, 0, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 1, GW, EVEN_K, X_SILU_MUL),
            _slot_x(x_ptrs, kx, K, 2, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 3, GW, EVEN_K, X_SILU_MUL),
            _slot_x(x_ptrs, kx, K, 4, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 5, GW, EVEN_K, X_SILU_MUL),
            _slot_x(x_ptrs, kx, K, 6, GW, EVEN_K, X_SILU_MUL), _slot_x(x_ptrs, kx, K, 7, GW, EVEN_K, X_SILU_MUL))


@triton.jit
def _persistent_store(out, rn, N, out_ptr, ws_ptr, split, SPLIT: tl.constexpr):
    """Persistent M = 1 kernels, one row tile's result: the output, or with SPLIT its fp32 partial
    (summed by `_persistent_reduce` once every split of the program's rows is done)."""
    if SPLIT:
        tl.store(ws_ptr + split * N + rn, out, mask=rn < N)
    else:
        tl.store(out_ptr + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)


@triton.jit
def _persistent_reduce(out_ptr, ws_ptr, cnt_ptr, group, num_tiles, step, num_splits, N, BLOCK_N: tl.constexpr,
                       SPLITS_P2: tl.constexpr, TILES_AT_ONCE: tl.constexpr):
    """After its last row tile: the programs of one row group (one per split, all walking the same
    tiles) take one ticket each, and the last sums the group's partials (deterministic: a fixed tree
    over the splits).

    One ticket per program, not per tile: a ticket is a round trip to L2 that the program waits for.
    The partials are read as [TILES_AT_ONCE, SPLITS_P2, BLOCK_N] tiles, all loads in flight together:
    a loop of one load per split and tile made the last program wait ~one L2 round trip for each
    (about 38 of them on the down projection), the tail that left the split kernels behind the K loop."""
    tl.debug_barrier()  # every thread's partials issued before the (release) ticket
    ticket = tl.atomic_add(cnt_ptr + group, 1, sem="acq_rel", scope="gpu")
    if ticket == num_splits - 1:
        ri = tl.arange(0, TILES_AT_ONCE)[:, None]
        rs = tl.arange(0, SPLITS_P2)[None, :, None]
        rb = tl.arange(0, BLOCK_N)[None, :]
        for first in range(group, num_tiles, step * TILES_AT_ONCE):
            rn = (first + ri * step) * BLOCK_N + rb  # [T, BN]
            ok = (first + ri * step < num_tiles) & (rn < N)
            parts = tl.load(ws_ptr + rs * N + rn[:, None, :], mask=ok[:, None, :] & (rs < num_splits), other=0.0,
                            cache_modifier=".cg")  # from L2, where the other SMs' partials are
            tl.store(out_ptr + rn, tl.sum(parts, axis=1).to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(cnt_ptr + group, 0)  # ready for the next launch (or graph replay)


@triton.jit
def _row_words(q_ptr, rn_w, stride_qn, woff, g_ok, EVEN_K: tl.constexpr, tile=None, num_tiles=None):
    """Persistent M = 1 kernels: words [.., NB, BN, 4] (uint32) of rows rn_w at word offsets woff [.., NB, 1, 4];
    groups (blocks) where g_ok [NB, 1] is false read 0 unless EVEN_K; with `tile`, nothing is read unless
    tile < num_tiles (a prefetch past the program's last tile)."""
    ptrs = q_ptr + rn_w.to(tl.int64)[None, None, :, None] * stride_qn + woff
    if tile is not None:
        ok = woff * 0 + tile < num_tiles  # as a tensor: a scalar mask is not one
        if not EVEN_K:
            ok = ok & g_ok[None, :, :, None]
        w = tl.load(ptrs, mask=ok, other=0, eviction_policy="evict_first")
    elif EVEN_K:
        w = tl.load(ptrs, eviction_policy="evict_first")
    else:
        w = tl.load(ptrs, mask=g_ok[None, :, :, None], other=0, eviction_policy="evict_first")
    return w.to(tl.uint32, bitcast=True)
