"""GPU datasheet table (bandwidth, memory, dense tensor rates), name lookup, and a read-bandwidth probe.

Rates are the datasheet's dense figures (NVIDIA lists most tensor rates "with sparsity";
those are halved here). GeForce cards run fp16/bf16 with fp32 accumulation at half their
fp16-accumulate rate; the fp32-accumulate figure is the one a bf16 matmul gets, so it is used.
Memory is the datasheet figure read as decimal GB (1e9 bytes): a little below what some
boards report (an "80GB" H100 reports ~85.5e9 bytes), which keeps plans on the safe side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from floorline.errors import FloorlineError

_T = 1e12  # TFLOPS / TB/s -> per second


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: datasheet bandwidth and memory, dense tensor-core peaks (None: no such unit)."""

    name: str
    bandwidth: float  # bytes/s, datasheet
    memory_bytes: float
    bf16_flops: float | None  # dense bf16/fp16 tensor FLOP/s (fp32 accumulate)
    fp8_flops: float | None
    int8_ops: float | None
    aliases: tuple[str, ...] = ()

    def peak_rate(self, compute: str) -> float | None:
        """FLOP/s for a matmul run as `compute` ("bf16", "fp8", "int8"); falls back to bf16.

        A format without its own tensor unit on this GPU (fp8 on an A100) is dequantized and
        multiplied in bf16, so the bf16 rate is what it gets.
        """
        rate = {"bf16": self.bf16_flops, "fp8": self.fp8_flops, "int8": self.int8_ops}.get(compute)
        return rate if rate is not None else self.bf16_flops


def _gpu(name: str, tbs: float, gb: float, bf16: float | None, fp8: float | None, int8: float | None,
         *aliases: str) -> GPUSpec:
    return GPUSpec(name, tbs * _T, gb * 1e9, bf16 and bf16 * _T, fp8 and fp8 * _T, int8 and int8 * _T,
                   aliases)


# name, TB/s, GB, dense bf16 TFLOPS, dense fp8 TFLOPS, dense int8 TOPS, aliases (also CUDA device names)
GPUS: tuple[GPUSpec, ...] = (
    _gpu("L4", 0.300, 24, 121, 242, 242, "l4"),
    _gpu("L40S", 0.864, 48, 362, 733, 733, "l40s"),
    _gpu("A10", 0.600, 24, 125, None, 250, "a10"),
    _gpu("A100 40GB", 1.555, 40, 312, None, 624, "a100 40gb", "a100-sxm4-40gb", "a100 sxm 40gb",
         "a100-pcie-40gb", "a100 pcie 40gb"),
    _gpu("A100 80GB", 2.039, 80, 312, None, 624, "a100", "a100 80gb", "a100 sxm", "a100-sxm4-80gb",
         "a100 sxm 80gb", "a100 80gb sxm"),
    _gpu("A100 80GB PCIe", 1.935, 80, 312, None, 624, "a100 pcie", "a100 80gb pcie", "a100-pcie-80gb"),
    _gpu("H100 PCIe", 2.0, 80, 756, 1513, 1513, "h100 pcie", "h100-pcie", "h100 pcie 80gb"),
    _gpu("H100 SXM", 3.35, 80, 989, 1979, 1979, "h100", "h100 sxm", "h100-sxm", "h100 sxm5",
         "h100 80gb hbm3", "h100-sxm5-80gb"),
    _gpu("H200", 4.8, 141, 989, 1979, 1979, "h200", "h200 sxm", "h200 141gb"),
    # HGX/DGX B200 board: 180 GB HBM3e per GPU at 8 TB/s (first announced as 192 GB)
    _gpu("B200", 8.0, 180, 2250, 4500, 4500, "b200"),
    _gpu("RTX 3090", 0.936, 24, 71, None, 284, "rtx 3090", "3090"),
    _gpu("RTX 4090", 1.008, 24, 165.2, 330.3, 660.6, "rtx 4090", "4090"),
    _gpu("RTX 5090", 1.792, 32, 209.5, 419, 838, "rtx 5090", "5090"),
    # Jetson AGX Orin 64GB: the GPU's share of the 275 sparse TOPS is 170 (the rest is the DLAs)
    _gpu("Jetson AGX Orin 64GB", 0.2048, 64, 42.5, None, 85, "orin", "agx orin", "jetson agx orin",
         "jetson agx orin 64gb", "orin 64gb", "orin nvgpu"),
)


def _norm(name: str) -> str:
    """Lower case, vendor words dropped, only letters and digits: 'NVIDIA H100-SXM' -> 'h100sxm'."""
    s = name.lower()
    for word in ("nvidia", "geforce", "tesla"):
        s = s.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", s)


_BY_ALIAS: dict[str, GPUSpec] = {}
for _spec in GPUS:
    for _alias in (_spec.name, *_spec.aliases):
        _BY_ALIAS[_norm(_alias)] = _spec


_SUFFIX = re.compile(r"(sxm\d*|pcie|\d+gb|hbm\d*e?|gddr\d*x?)*")


def known_gpu_names() -> list[str]:
    return [g.name for g in GPUS]


def lookup_gpu(name: str) -> GPUSpec:
    """Finds a GPU by a forgiving name ('h100', 'H100-SXM', 'NVIDIA H100 80GB HBM3' -> H100 SXM)."""
    key = _norm(name)
    if key in _BY_ALIAS:
        return _BY_ALIAS[key]
    # A longer spelling of a known name ('h100 sxm5 80gb hbm3'): the longest alias that is a
    # prefix followed only by memory/package words, and not one that merely shares leading
    # digits ('a10' must not match 'a100'); 'h100 nvl' is a different board and stays unknown.
    best = ""
    for alias in _BY_ALIAS:
        if alias and key.startswith(alias) and len(alias) > len(best):
            rest = key[len(alias):]
            if _SUFFIX.fullmatch(rest) and not (alias[-1].isdigit() and rest[:1].isdigit()):
                best = alias
    if best:
        return _BY_ALIAS[best]
    raise FloorlineError(f"unknown GPU {name!r}; known: {', '.join(known_gpu_names())}")


def detect_gpu(device_index: int = 0) -> GPUSpec | None:
    """The table entry for the present CUDA GPU, or None (no CUDA, or a GPU not in the table)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        return lookup_gpu(torch.cuda.get_device_name(device_index))
    except FloorlineError:
        return None


def present_gpu_spec(device_index: int = 0, bandwidth: float | None = None) -> GPUSpec:
    """The present GPU as a GPUSpec; a GPU missing from the table gets its real memory size,
    the given (measured) bandwidth and unknown compute rates."""
    import torch

    if not torch.cuda.is_available():
        raise FloorlineError("no CUDA GPU is available (torch.cuda.is_available() is False)")
    spec = detect_gpu(device_index)
    if spec is not None:
        return spec
    props = torch.cuda.get_device_properties(device_index)
    return GPUSpec(torch.cuda.get_device_name(device_index), bandwidth or float("nan"),
                   float(props.total_memory), None, None, None)


def measure_read_bandwidth(device=None, num_bytes: int = 4 << 30, repeats: int = 20, warmup: int = 10) -> float:
    """Streaming-read bandwidth of a CUDA device in bytes/s: the fastest of `repeats` full reductions.

    The fastest, not the median: a probe slowed by clocks still ramping up (seen: 2.97 against
    3.08 TB/s on one H100 in two runs) would lower the floor and flatter every ratio to it.

    A sum over a buffer much larger than L2 reads every byte once and writes one number, so its
    time is read bandwidth. The buffer shrinks to a quarter of free memory (never below 2 GB
    unless the device has less) so the probe runs next to a loaded model.
    """
    import torch

    if not torch.cuda.is_available():
        raise FloorlineError("measuring bandwidth needs a CUDA GPU; none is available")
    device = torch.device(device if device is not None else "cuda")
    free, _ = torch.cuda.mem_get_info(device)
    size = min(num_bytes, max(2 << 30, free // 4), int(free * 0.8))
    numel = size // 4
    x = torch.rand(numel, dtype=torch.float32, device=device)
    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        x.sum()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    del x
    torch.cuda.empty_cache()
    return numel * 4 / min(times)
