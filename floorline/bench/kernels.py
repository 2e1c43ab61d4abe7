"""GPU kernel benchmark: the skinny decode GEMM vs cuBLAS at Llama-3.1-8B decode shapes.

    python -m floorline.bench.kernels --quick              # default configs only (GPU test routine)
    python -m floorline.bench.kernels --sweep --out f.json # small config sweep; best configs to JSON

Every config is first checked against `F.linear` in bf16 (relative error < 1e-2, NaN fails). Times are
medians over CUDA-graph replays of back-to-back launches that rotate over enough weight copies to
exceed L2, so every launch streams its weights from HBM (as in decode, which replays graphs too).
The read bandwidth the percentages refer to is measured in the same run (`.sum()` of 2 GiB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from floorline.kernels.decode_attention import num_sms_of
from floorline.kernels.skinny_gemm import skinny_gemm_triton
from floorline.kernels.skinny_gemm_configs import SkinnyConfig, auto_split_k, get_config, m_bucket

SHAPES: dict[str, tuple[int, int]] = {  # name -> (K, N) of Llama-3.1-8B at tensor parallelism 1
    "qkv": (4096, 6144),
    "o_proj": (4096, 4096),
    "gate_up": (4096, 28672),
    "down": (14336, 4096),
    "lm_head": (4096, 128256),
}
M_VALUES = (1, 2, 4, 8, 16)
MAX_REL_ERROR = 1e-2
MIN_LAUNCHES_PER_GRAPH = 24
REPLAYS = 25


def _fma(block_n: int, block_k: int, warps: int, stages: int) -> SkinnyConfig:
    return SkinnyConfig(block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages, use_dot=False)


def _dot(block_n: int, block_k: int, warps: int, stages: int) -> SkinnyConfig:
    return SkinnyConfig(block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages, use_dot=True)


def base_candidates(m: int) -> list[SkinnyConfig]:
    """Phase-1 configs (split-K filled in per shape). One list per path, so compiles are shared by shapes."""
    dot = [_dot(32, 256, 4, 4), _dot(16, 256, 2, 4), _dot(64, 128, 4, 4), _dot(32, 512, 4, 3),
           _dot(64, 256, 8, 3), _dot(16, 512, 4, 3), _dot(32, 128, 4, 6)]
    if m > 1:
        return dot
    fma = [_fma(16, 512, 4, 1), _fma(16, 512, 4, 3), _fma(8, 512, 4, 1), _fma(8, 512, 4, 3),
           _fma(32, 256, 4, 3), _fma(16, 1024, 8, 2)]
    return fma + dot[:2]


def split_variants(best: SkinnyConfig, n: int, k: int) -> list[SkinnyConfig]:
    """Phase 2: the best phase-1 config at other split counts (at most 3)."""
    k_blocks = -(-k // best.block_k)
    splits = [s for s in (1, 2, 4, 8) if s != best.split_k and k_blocks // s >= 1]
    return [dataclasses.replace(best, split_k=s) for s in splits[:3]]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp32; NaN/inf give inf so they never pass."""
    if not bool(torch.isfinite(out).all()):
        return math.inf
    err = ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
    return err if math.isfinite(err) else math.inf


def time_per_call(calls: list[Callable[[], object]]) -> float:
    """Median seconds per call, from CUDA-graph replays of the calls repeated back to back."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture wants
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    seq = calls * max(1, -(-MIN_LAUNCHES_PER_GRAPH // len(calls)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in seq:
            c()
    graph.replay()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPLAYS)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    ms = statistics.median(s.elapsed_time(e) for s, e in events)
    del graph
    return ms / 1e3 / len(seq)


def read_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Streaming read bandwidth in bytes/s: `.sum()` of an fp32 tensor of `nbytes`, median of 10."""
    t = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    for _ in range(3):
        t.sum()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        t.sum()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del t
    return nbytes / statistics.median(times)


@dataclasses.dataclass
class Row:
    shape: str
    k: int
    n: int
    m: int
    nbytes: int
    cublas_s: float
    best: SkinnyConfig | None = None
    best_s: float = math.inf
    tried: list[tuple[SkinnyConfig, float]] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    cut_short: bool = False  # the time budget ran out before every candidate was timed


def short(c: SkinnyConfig) -> str:
    return f"{'dot' if c.use_dot else 'fma'} n{c.block_n} k{c.block_k} s{c.split_k} w{c.num_warps} st{c.num_stages}"


def _try_config(cfg: SkinnyConfig, x: torch.Tensor, weights: list[torch.Tensor], ref: torch.Tensor) -> tuple[float, str]:
    """(seconds per call, "") or (inf, why it was rejected)."""
    try:
        err = rel_error(skinny_gemm_triton(x, weights[0], config=cfg), ref)
        if not err < MAX_REL_ERROR:
            return math.inf, f"{cfg}: relative error {err:.3g}"
        return time_per_call([lambda w=w: skinny_gemm_triton(x, w, config=cfg) for w in weights]), ""
    except Exception as exc:  # noqa: BLE001 - a config the compiler or the GPU rejects is skipped
        return math.inf, f"{cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def bench_shape(name: str, k: int, n: int, ms: tuple[int, ...], sweep: bool, device: torch.device,
                dtype: torch.dtype = torch.bfloat16, deadline: float = math.inf) -> list[Row]:
    """cuBLAS and the default (or best swept) Triton config for one weight shape at each M.

    Past `deadline` (time.monotonic()) a sweep keeps only what it has timed, so a run under an outer
    timeout still prints its table.
    """
    num_sms = num_sms_of(device)
    w_bytes = n * k * dtype.itemsize
    l2 = 0  # off-GPU (tests of this module): two copies
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    copies = max(2, -(-3 * l2 // w_bytes))  # rotation > 3x L2: no launch finds its weights cached
    weights = [torch.randn(n, k, dtype=dtype, device=device) for _ in range(copies)]
    rows = []
    for m in ms:
        x = torch.randn(m, k, dtype=dtype, device=device)
        ref = F.linear(x, weights[0])
        row = Row(name, k, n, m, w_bytes + dtype.itemsize * m * (k + n),
                  time_per_call([lambda w=w, x=x: F.linear(x, w) for w in weights]))
        # The default config goes first: it is what runs today, and what a cut-short row keeps.
        configs = [get_config(n, k, m, device)]
        if sweep:
            configs += [c for c in (dataclasses.replace(c, split_k=auto_split_k(n, k, c.block_n, c.block_k, num_sms))
                                    for c in base_candidates(m)) if c not in configs]
        for phase in (0, 1):
            for cfg in configs:
                if row.best is not None and time.monotonic() > deadline:
                    row.cut_short = True
                    break
                secs, why = _try_config(cfg, x, weights, ref)
                if why:
                    row.failures.append(why)
                    continue
                row.tried.append((cfg, secs))
                print(f"    {name} M={m} {short(cfg)}: {secs * 1e6:.1f} us", flush=True)
                if secs < row.best_s:
                    row.best, row.best_s = cfg, secs
            if not sweep or row.best is None or row.cut_short or phase == 1:
                break
            configs = split_variants(row.best, n, k)
        rows.append(row)
        print(f"  {name} M={m}: cuBLAS {row.cublas_s * 1e6:.1f} us, best Triton {row.best_s * 1e6:.1f} us"
              + (" (time budget hit)" if row.cut_short else ""), flush=True)
    del weights
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_table(rows: list[Row], bw: float) -> None:
    head = (f"{'shape':<8} {'K':>6} {'N':>7} {'M':>3} {'floor us':>9} {'cuBLAS us':>10} {'GB/s':>6} {'%BW':>5} "
            f"{'Triton us':>10} {'GB/s':>6} {'%BW':>5} {'speedup':>7}  config")
    print(head)
    print("-" * len(head))
    for r in rows:
        cb_gbs = r.nbytes / r.cublas_s / 1e9
        line = (f"{r.shape:<8} {r.k:>6} {r.n:>7} {r.m:>3} {r.nbytes / bw * 1e6:>9.1f} {r.cublas_s * 1e6:>10.1f} "
                f"{cb_gbs:>6.0f} {100 * cb_gbs * 1e9 / bw:>5.1f} ")
        if r.best is None:
            line += f"{'FAILED':>10}"
        else:
            gbs = r.nbytes / r.best_s / 1e9
            line += (f"{r.best_s * 1e6:>10.1f} {gbs:>6.0f} {100 * gbs * 1e9 / bw:>5.1f} "
                     f"{r.cublas_s / r.best_s:>6.2f}x  {short(r.best)}" + (" *" if r.cut_short else ""))
        print(line)


def write_json(rows: list[Row], bw: float, path: Path, gpu: str) -> None:
    """The best config per (N, K, M-bucket), in the format `load_tuned_configs` reads."""
    entries = [
        dict(n=r.n, k=r.k, m_bucket=m_bucket(r.m), config=r.best.as_dict(), us=round(r.best_s * 1e6, 2),
             gbps=round(r.nbytes / r.best_s / 1e9, 1), cublas_us=round(r.cublas_s * 1e6, 2),
             tried=[[short(c), round(t * 1e6, 2)] for c, t in r.tried])
        for r in rows if r.best is not None
    ]
    doc = dict(gpu=gpu, read_gbps=round(bw / 1e9, 1), torch=torch.__version__,
               configs=entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)  # never a half-written file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m floorline.bench.kernels", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="default configs only (the default mode)")
    mode.add_argument("--sweep", action="store_true", help="try a small set of configs per shape and M")
    p.add_argument("--out", type=Path, help="write the best configs as JSON here")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--m", nargs="+", type=int, default=list(M_VALUES), help="row counts, 1..16")
    p.add_argument("--budget-s", type=float, default=170.0,
                   help="sweep time budget; past it each remaining row keeps its first timed config")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("floorline.bench.kernels: needs a CUDA GPU (none is visible)", file=sys.stderr)
        return 2
    if any(not 1 <= m <= 16 for m in args.m):
        print(f"floorline.bench.kernels: --m values must be in 1..16, got {args.m}", file=sys.stderr)
        return 2
    import triton

    device = torch.device("cuda", torch.cuda.current_device())
    bw = read_bandwidth(device)
    header = (f"GPU {torch.cuda.get_device_name(device)} | torch {torch.__version__} | triton {triton.__version__} | "
              f"bf16 | measured read bandwidth {bw / 1e9:.0f} GB/s | mode {'sweep' if args.sweep else 'quick'}\n"
              "times: median per launch over CUDA-graph replays, weights rotated past L2; floor = bytes / read BW")
    print(header, flush=True)
    deadline = time.monotonic() + args.budget_s
    rows = []
    for name in args.shapes:
        k, n = SHAPES[name]
        rows += bench_shape(name, k, n, tuple(args.m), args.sweep, device, deadline=deadline)
    failures = [f for r in rows for f in r.failures]
    if failures:
        print(f"\n{len(failures)} config(s) rejected:")
        for f in failures:
            print("  " + f)
    if args.sweep:
        print("\n# paste into TUNED_CONFIGS (or H200_CONFIGS) in floorline/kernels/skinny_gemm_configs.py:")
        for r in rows:
            if r.best is not None:
                print(f"    ({r.n}, {r.k}, {m_bucket(r.m)}): {r.best!r},")
    if args.out:
        write_json(rows, bw, args.out, torch.cuda.get_device_name(device))
        print(f"\nwrote {args.out}")
    # The table comes last so that the tail of the log is the result.
    print()
    print(header)
    print_table(rows, bw)
    if any(r.cut_short for r in rows):
        print("* time budget hit: not every candidate was timed for this row")
    # Quick mode is a test: any default config failing its check fails the run.
    return 1 if (not args.sweep and failures) or any(r.best is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
