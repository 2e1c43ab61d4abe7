"""`floorline bench decode|kernels`: benchmark commands that print a table with the command and GPU."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch

from floorline.cli import COMMANDS, add_engine_args, engine_args_from
from floorline.errors import FloorlineError


def _add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True)
    d = sub.add_parser("decode", help="batch-b decode time per token at several contexts, vs the floor")
    add_engine_args(d)
    d.add_argument("--contexts", default="2048,4096,8192,16384", help="comma-separated context lengths")
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--steps", type=int, default=64, help="timed decode steps per context")
    d.add_argument("--warmup", type=int, default=8)
    d.add_argument("--bandwidth", type=float, default=None,
                   help="read bandwidth in GB/s for the floor (default on CUDA: measured in this run)")
    d.add_argument("--json", default=None, help="also write the rows as JSON to this file")


def _parse_contexts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FloorlineError(f"--contexts takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise FloorlineError(f"--contexts needs positive integers, got {text!r}")
    return values


def _run(ns: argparse.Namespace) -> int:
    if ns.bench == "decode":
        return _run_decode(ns)
    raise FloorlineError(f"unknown benchmark {ns.bench!r}")


def _run_decode(ns: argparse.Namespace) -> int:
    from floorline.bench.decode import bench_context, build_bench_engine

    contexts = _parse_contexts(ns.contexts)
    if ns.batch < 1:
        raise FloorlineError(f"--batch must be >= 1, got {ns.batch}")
    engine = build_bench_engine(engine_args_from(ns), contexts, ns.batch, ns.steps, ns.warmup)
    bandwidth = ns.bandwidth * 1e9 if ns.bandwidth else None
    if bandwidth is None and engine.device.type == "cuda":
        from floorline.analysis.gpus import measure_read_bandwidth

        bandwidth = measure_read_bandwidth(engine.device)
    rows = [bench_context(engine, c, ns.batch, ns.steps, ns.warmup, bandwidth) for c in contexts]
    _print_decode(ns, engine, bandwidth, rows)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"command": _command(), "device": _device_name(engine.device), "rows": [r.as_dict() for r in rows],
                       "startup_s": engine.startup_times, "bandwidth_gbs": bandwidth / 1e9 if bandwidth else None}, f,
                      indent=2)
    return 0


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _command() -> str:
    return "floorline " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_decode(ns, engine, bandwidth, rows) -> None:
    cfg = engine.model_config
    st = engine.startup_times
    print(f"# floorline bench decode — {time.strftime('%Y-%m-%d')}")
    print(f"# command: {_command()}")
    print(f"# device: {_device_name(engine.device)} | model: {cfg.name} ({cfg.architecture}) | dtype: "
          f"{str(engine.dtype).removeprefix('torch.')} | batch: {ns.batch} | load: {ns.load_format} | "
          f"cuda graphs: {'on' if engine.runner.graphs else 'off'}")
    print(f"# start-up: total {st.get('total', 0):.1f} s (weights {st.get('weights', 0):.1f} s, graph capture "
          f"{st.get('graph_capture', 0):.1f} s) | read bandwidth: "
          f"{_fmt(bandwidth / 1e9 if bandwidth else None, '.0f')} GB/s")
    header = f"{'context':>8} {'ms/token':>9} {'tok/s':>8} {'gpu ms':>7} {'GB/s':>7} {'floor ms':>9} {'ratio':>6} {'peak GB':>8}"
    print(header)
    for r in rows:
        print(f"{r.context:>8} {r.ms_per_step:>9.3f} {r.tokens_per_s:>8.1f} {_fmt(r.gpu_ms, '7.3f'):>7} "
              f"{_fmt(r.achieved_gbs, '7.0f'):>7} {_fmt(r.floor_ms, '9.3f'):>9} {_fmt(r.ratio, '6.3f'):>6} "
              f"{_fmt(r.peak_mem_gb, '8.2f'):>8}")


COMMANDS["bench"] = (_add_args, _run)
