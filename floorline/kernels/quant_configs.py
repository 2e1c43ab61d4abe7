"""Launch configs of the quantized GEMVs: the config type, the tuned table, the heuristic and the checks.

Configs come from a table keyed by (format, N, K, M-bucket) that `python -m floorline.bench.quant
--sweep` prints (FLOORLINE_QUANT_CONFIGS=f.json loads such a file over it), else from
`heuristic_config`; nothing is autotuned at run time. The M-buckets are the skinny GEMM's 1..16 plus
32 and 64 for the dot paths' 17..DOT_MAX_M rows. A swept entry replaces the table's whole entry: the
sweep times GEMVs alone and never sets `early_launch`, so pasting its winners drops that field.
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
from floorline.kernels.skinny_gemm_configs import M_BUCKETS, MAX_M, SkinnyConfig, auto_split_k, check_tiles, m_bucket
from floorline.kernels.triton_compat import triton

FORMATS = ("int8", "fp8", "int4", "nf4")
DOT_MIN_K = 128  # 4-bit dot paths: one tl.dot per slot of BLOCK_K / 8 columns, which must be >= 16
# The dot paths also serve 17..DOT_MAX_M rows (decode batches past 16, which would otherwise dequantize
# the whole weight every step), on x tiles of up to 64 rows; their M-buckets extend M_BUCKETS.
DOT_MAX_M = 64
DOT_M_BUCKETS = (32, 64)

@dataclass(frozen=True)
class QuantGemvConfig(SkinnyConfig):
    """The bf16 skinny GEMM's launch config (block_k counts weights, a multiple of the format's group),
    plus the persistent M = 1 kernels' fields: `programs_per_sm` > 0 launches that many programs per SM,
    each owning one K tile (split = K / block_k) and walking row tiles; `prefetch` loads the next row
    tile's weights while the current one is summed; `half2` runs the persistent loop (and int4's M = 1 K
    loops, with num_stages > 1 `quant_int4_stream`'s pipelined one; NF4's has no such form, where fp16x2
    would add shuffles) in packed fp16x2 (`quant_half2`) for fp16 / bf16 activations (fp32 ones keep the
    fp32 loop); `check_config` refuses `prefetch` and `half2` on kernels without them; `pairs` runs the 4-bit dot paths that build their operands
    from the words in registers (`quant_pairs`; fp16 / bf16 activations, groups of >= 64); `early_launch`:
    the persistent kernel lets its successor launch as it starts (PDL's `gdc_launch_dependents`; the
    8-bit GEMV always does). `programs_per_sm`, `half2`, `pairs` and `early_launch` are 4-bit options: the
    8-bit launcher refuses them (`check_config`'s `four_bit`). Isolated GEMV timings cannot see
    `early_launch`: it is set from end-to-end A/Bs."""

    programs_per_sm: int = 0
    prefetch: bool = False
    half2: bool = False
    pairs: bool = False
    early_launch: bool = False

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
    # int4 qkv lets the rotary + KV write launch during it (early_launch; ninth session: 2.167 -> 2.114-2.121 ms)
    ('int4', 6144, 4096, 1): QuantGemvConfig(block_n=2, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=8, prefetch=True, half2=True, early_launch=True),
    ('int4', 4096, 4096, 1): QuantGemvConfig(block_n=4, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=8, prefetch=False),
    ('int4', 28672, 4096, 1): QuantGemvConfig(block_n=4, block_k=4096, split_k=1, num_warps=2, num_stages=1, use_dot=False, programs_per_sm=10, prefetch=False, half2=True),
    # the down projection's K loop in fp16x2 (eleventh session: 13.7-14.1 us against 14.7-15.1 in fp32)
    # the pipelined fp16x2 K loop (quant_int4_stream), fifteenth H200 session: 11.8-11.9 us against 13.1-13.5 alone,
    # 1.90 ms a step against 1.94
    ('int4', 4096, 14336, 1): QuantGemvConfig(block_n=8, block_k=1024, split_k=1, num_warps=2, num_stages=3, use_dot=False, half2=True),
    # NF4 qkv launches early as int4's does (2.737 -> 2.702 ms a step); NF4 o_proj at 5 programs an SM, the most
    # its 96 registers let one wave hold, not 6 (2.686 against 2.700: within the noise) (ninth session, A/Bs)
    ('nf4', 6144, 4096, 1): QuantGemvConfig(block_n=16, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False, programs_per_sm=5, prefetch=False, early_launch=True),
    ('nf4', 4096, 4096, 1): QuantGemvConfig(block_n=8, block_k=4096, split_k=1, num_warps=4, num_stages=1, use_dot=False, programs_per_sm=5, prefetch=False),
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
                 four_bit: bool = False, half2_k_loop: bool = False) -> None:
    """Raises a ValueError naming what `cfg` gets wrong for this launch; `four_bit`: the format has the
    persistent, fp16x2 and pair kernels (programs_per_sm, half2, pairs, early_launch); `half2_k_loop`: its
    M = 1 K loops have an fp16x2 form too (int4's)."""
    check_tiles(cfg, m, name, dot_min_k)
    if cfg.block_k % k_unit:
        raise ValueError(f"{name}: block_k must be a multiple of {k_unit}, got {cfg.block_k}")
    if not four_bit and (cfg.programs_per_sm or cfg.half2 or cfg.pairs or cfg.early_launch):  # never ignored
        raise ValueError(f"{name}: the 8-bit formats have no persistent, fp16x2 or pair kernels; configs take "
                         f"programs_per_sm=0, half2=False, pairs=False, early_launch=False (got {cfg})")
    if cfg.early_launch and not cfg.persistent:
        raise ValueError(f"{name}: early_launch is an option of the persistent M = 1 kernels (programs_per_sm > 0, "
                         f"use_dot=False), got {cfg}")
    if cfg.prefetch and not cfg.persistent:  # the K loops have no prefetch: refused, not ignored
        raise ValueError(f"{name}: prefetch is an option of the persistent M = 1 kernels (programs_per_sm > 0, "
                         f"use_dot=False), got {cfg}")
    if cfg.half2 and not cfg.persistent and not (half2_k_loop and not cfg.use_dot):
        k_loop = " and of this format's M = 1 K loops (use_dot=False)" if half2_k_loop else ""
        raise ValueError(f"{name}: half2 is an option of the persistent M = 1 kernels (programs_per_sm > 0, "
                         f"use_dot=False){k_loop}, got {cfg}")
    if cfg.pairs and not cfg.use_dot:
        raise ValueError(f"{name}: pairs is an option of the dot path (use_dot=True, 2..{DOT_MAX_M} rows)")
    if cfg.persistent and cfg.num_stages != 1:  # 2-3 stages doubled the H200 times
        raise ValueError(f"{name}: the persistent kernels (programs_per_sm > 0) take num_stages = 1, got "
                         f"{cfg.num_stages}")
