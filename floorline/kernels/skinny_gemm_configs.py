"""Launch configs of the skinny GEMM: the config type, the tuned tables per GPU and the heuristic.

Configs come from tables keyed by (N, K, M-bucket) that the GEMV sweep fills
(`python -m floorline.bench.kernels --sweep --out f.json`), else from `heuristic_config`; nothing is
autotuned at run time, so start-up stays short and graph capture never benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from floorline.kernels.decode_attention import num_sms_of  # cached SM count; a small one off-GPU
from floorline.kernels.triton_compat import triton

MAX_M = 16
M_BUCKETS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class SkinnyConfig:
    """One launch config. `use_dot=False` (FMA path) is only valid for M == 1."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    use_dot: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Tuned on the GPU by `python -m floorline.bench.kernels --sweep --out f.json` (the sweep prints lines
# to paste here). Keys: (N, K, M-bucket). Shapes missing here use `heuristic_config`.
# Llama-3.1-8B decode shapes, swept on an H100 80GB HBM3 (torch 2.11, triton 3.6), 2026-11-22;
# benchmarks/RESULTS.md has the table.
TUNED_CONFIGS: dict[tuple[int, int, int], SkinnyConfig] = {
    (6144, 4096, 1): SkinnyConfig(block_n=8, block_k=512, split_k=1, num_warps=4, num_stages=1, use_dot=False),
    (6144, 4096, 2): SkinnyConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=6, use_dot=True),
    (6144, 4096, 4): SkinnyConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=6, use_dot=True),
    (6144, 4096, 8): SkinnyConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=6, use_dot=True),
    (6144, 4096, 16): SkinnyConfig(block_n=16, block_k=256, split_k=1, num_warps=2, num_stages=4, use_dot=True),
    (4096, 4096, 1): SkinnyConfig(block_n=8, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    (4096, 4096, 2): SkinnyConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=6, use_dot=True),
    (4096, 4096, 4): SkinnyConfig(block_n=32, block_k=256, split_k=1, num_warps=4, num_stages=4, use_dot=True),
    (4096, 4096, 8): SkinnyConfig(block_n=16, block_k=256, split_k=1, num_warps=2, num_stages=4, use_dot=True),
    (4096, 4096, 16): SkinnyConfig(block_n=16, block_k=256, split_k=1, num_warps=2, num_stages=4, use_dot=True),
    (28672, 4096, 1): SkinnyConfig(block_n=16, block_k=1024, split_k=1, num_warps=8, num_stages=2, use_dot=False),
    (28672, 4096, 2): SkinnyConfig(block_n=64, block_k=256, split_k=1, num_warps=8, num_stages=3, use_dot=True),
    (28672, 4096, 4): SkinnyConfig(block_n=64, block_k=256, split_k=1, num_warps=8, num_stages=3, use_dot=True),
    (28672, 4096, 8): SkinnyConfig(block_n=64, block_k=256, split_k=1, num_warps=8, num_stages=3, use_dot=True),
    (28672, 4096, 16): SkinnyConfig(block_n=64, block_k=256, split_k=1, num_warps=8, num_stages=3, use_dot=True),
    (4096, 14336, 1): SkinnyConfig(block_n=8, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    (4096, 14336, 2): SkinnyConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    (4096, 14336, 4): SkinnyConfig(block_n=32, block_k=128, split_k=2, num_warps=4, num_stages=6, use_dot=True),
    (4096, 14336, 8): SkinnyConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=6, use_dot=True),
    (4096, 14336, 16): SkinnyConfig(block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=6, use_dot=True),
    (128256, 4096, 1): SkinnyConfig(block_n=16, block_k=1024, split_k=1, num_warps=8, num_stages=2, use_dot=False),
    (128256, 4096, 2): SkinnyConfig(block_n=16, block_k=256, split_k=1, num_warps=2, num_stages=4, use_dot=True),
    (128256, 4096, 4): SkinnyConfig(block_n=32, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=True),
    (128256, 4096, 8): SkinnyConfig(block_n=16, block_k=256, split_k=1, num_warps=2, num_stages=4, use_dot=True),
    (128256, 4096, 16): SkinnyConfig(block_n=32, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=True),
}

# Where an H200 sweep (2026-12-01, M = 1, `--sweep --m 1`) found a faster config than the H100 table's:
# gate_up 58.5 -> 55.8 us, lm_head 246.0 -> 235.9 us; qkv, o_proj and down kept theirs.
H200_CONFIGS: dict[tuple[int, int, int], SkinnyConfig] = {
    (28672, 4096, 1): SkinnyConfig(block_n=8, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
    (128256, 4096, 1): SkinnyConfig(block_n=16, block_k=512, split_k=1, num_warps=4, num_stages=3, use_dot=False),
}


@functools.lru_cache(maxsize=None)
def _is_h200(device_index: int) -> bool:
    return "H200" in torch.cuda.get_device_name(device_index)


def _tuned(key: tuple[int, int, int], device: torch.device) -> SkinnyConfig | None:
    """The table entry for `key`: the H200's own where it has one (on an H200), else the H100 table's."""
    if device.type == "cuda" and key in H200_CONFIGS:
        if _is_h200(device.index if device.index is not None else torch.cuda.current_device()):
            return H200_CONFIGS[key]
    return TUNED_CONFIGS.get(key)


def m_bucket(m: int) -> int:
    """Smallest bucket of M_BUCKETS that holds m rows."""
    return next(b for b in M_BUCKETS if b >= m)


def check_tiles(cfg: SkinnyConfig, m: int, name: str, dot_min_k: int = 16) -> None:
    """Raises a ValueError naming what `cfg`'s tiles get wrong for an M-row launch (the checks every
    GEMV's configs share; the quantized formats add theirs in `quant_configs.check_config`)."""
    if not cfg.use_dot and m != 1:
        raise ValueError(f"{name}: the FMA path (use_dot=False) handles M == 1 only, got M = {m}")
    for field in ("block_n", "block_k", "num_warps"):
        v = getattr(cfg, field)
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name}: {field} must be a power of two, got {v}")
    if cfg.use_dot and (cfg.block_n < 16 or cfg.block_k < dot_min_k):
        raise ValueError(f"{name}: the dot path needs block_n >= 16 and block_k >= {dot_min_k}")


def auto_split_k(n: int, k: int, block_n: int, block_k: int, num_sms: int) -> int:
    """Doubles the split count while the grid has fewer programs than SMs and splits keep >= 2 K blocks.

    One program per SM with a few tiles in flight each already saturates HBM; fewer programs leave SMs
    (and their outstanding loads) unused, which is what hurts small-N layers.
    """
    tiles = triton.cdiv(n, block_n)
    k_blocks = triton.cdiv(k, block_k)
    split = 1
    while tiles * split < num_sms and k_blocks // (split * 2) >= 2:
        split *= 2
    return split


def heuristic_config(n: int, k: int, m: int, num_sms: int = 132) -> SkinnyConfig:
    """Default when the table has no entry: FMA path for M == 1, tensor-core path above, split-K to fill SMs."""
    if m == 1:  # the H100 sweep's winners: long K tiles; wider programs for very tall matrices
        if n >= 16384:
            base = SkinnyConfig(block_n=16, block_k=1024, num_warps=8, num_stages=2, use_dot=False)
        else:
            base = SkinnyConfig(block_n=8, block_k=512, num_warps=4, num_stages=3, use_dot=False)
    else:
        base = SkinnyConfig(block_n=32, block_k=256, num_warps=4, num_stages=4, use_dot=True)
    # Small problems (tests, tiny models): shrink tiles to the problem instead of masking most of them.
    block_k = max(16, min(base.block_k, triton.next_power_of_2(k)))
    block_n = max(16 if base.use_dot else 1, min(base.block_n, triton.next_power_of_2(n)))
    split = auto_split_k(n, k, block_n, block_k, num_sms)
    return dataclasses.replace(base, block_n=block_n, block_k=block_k, split_k=split)


def get_config(n: int, k: int, m: int, device: torch.device | str = "cuda") -> SkinnyConfig:
    """The config `skinny_gemm` launches for this shape: the tuned table entry, else the heuristic."""
    tuned = _tuned((n, k, m_bucket(m)), torch.device(device))
    if tuned is not None and (tuned.use_dot or m == 1):
        return tuned
    return heuristic_config(n, k, m, num_sms_of(torch.device(device)))


def set_tuned_config(n: int, k: int, bucket: int, config: SkinnyConfig) -> None:
    """Registers a config for (N, K, M-bucket), overriding the heuristic."""
    if bucket not in M_BUCKETS:
        raise ValueError(f"skinny_gemm: M-bucket must be one of {M_BUCKETS}, got {bucket}")
    if bucket > 1 and not config.use_dot:
        raise ValueError("skinny_gemm: the FMA path (use_dot=False) handles M == 1 only")
    TUNED_CONFIGS[(n, k, bucket)] = config


def load_tuned_configs(path: str | Path) -> int:
    """Loads the JSON the benchmark writes (`--out`) into the table; returns the number of entries."""
    entries = json.loads(Path(path).read_text())["configs"]
    fields = {f.name for f in dataclasses.fields(SkinnyConfig)}
    for e in entries:
        set_tuned_config(e["n"], e["k"], e["m_bucket"], SkinnyConfig(**{f: e["config"][f] for f in fields}))
    return len(entries)
