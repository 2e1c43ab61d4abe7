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
    t = sub.add_parser("throughput", help="many requests at once (or at a Poisson rate): tokens/s and latencies")
    add_engine_args(t)
    t.add_argument("--num-requests", type=int, default=1000)
    t.add_argument("--input-len", default="200:1000", help="prompt length range lo:hi (uniform)")
    t.add_argument("--output-len", default="100:500", help="output length range lo:hi (uniform)")
    t.add_argument("--request-rate", type=float, default=None, help="requests per second (default: all at once)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--profile-steps", type=int, default=0, help="profile this many steps (from step 100)")
    t.add_argument("--json", default=None)
    _add_serve_args(sub.add_parser("serve", help="streaming clients at a Poisson request rate against a live server"))


def _add_serve_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--url", default="http://127.0.0.1:8000", help="server root (default http://127.0.0.1:8000)")
    s.add_argument("--endpoint", default="completions", choices=["completions", "chat"])
    s.add_argument("--model", default=None, help="model id to send (default: the first in /v1/models)")
    s.add_argument("--num-prompts", type=int, default=100)
    s.add_argument("--request-rate", type=float, default=float("inf"),
                   help="mean requests/s of the Poisson arrivals (default inf: all at once)")
    s.add_argument("--seed", type=int, default=0, help="seeds the arrival times and the prompts")
    s.add_argument("--input-len", type=int, default=32, help="words per prompt")
    s.add_argument("--output-len", type=int, default=64, help="tokens per request (max_tokens, EOS ignored)")
    s.add_argument("--max-concurrency", type=int, default=None)
    s.add_argument("--api-key", default=None)
    s.add_argument("--json", default=None, help="also write the summary as JSON to this file")


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
    if ns.bench == "throughput":
        return _run_throughput(ns)
    if ns.bench == "serve":
        return _run_serve(ns)
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


def _parse_range(text: str, flag: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":")) if ":" in text else (int(text), int(text))
    except ValueError:
        raise FloorlineError(f"{flag} takes lo:hi or a single integer, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise FloorlineError(f"{flag} needs 1 <= lo <= hi, got {text!r}")
    return lo, hi


def _run_throughput(ns: argparse.Namespace) -> int:
    from floorline.bench.throughput import make_workload, run_throughput
    from floorline.engine.engine import LLMEngine

    if ns.num_requests < 1:
        raise FloorlineError(f"--num-requests must be >= 1, got {ns.num_requests}")
    if ns.request_rate is not None and not ns.request_rate > 0:
        raise FloorlineError(f"--request-rate must be > 0, got {ns.request_rate}")
    in_range, out_range = _parse_range(ns.input_len, "--input-len"), _parse_range(ns.output_len, "--output-len")
    from dataclasses import replace

    args = engine_args_from(ns)
    if args.max_model_len is None:
        args = replace(args, max_model_len=in_range[1] + out_range[1] + 16)
    engine = LLMEngine(args)
    work = make_workload(ns.num_requests, in_range, out_range, engine.model_config.vocab_size, ns.seed)
    r = run_throughput(engine, work, ns.request_rate, ns.seed, profile_steps=ns.profile_steps)
    cfg = engine.model_config
    print(f"# floorline bench throughput — {time.strftime('%Y-%m-%d')}")
    print(f"# command: {_command()}")
    print(f"# device: {_device_name(engine.device)} | model: {cfg.name} | dtype: {str(engine.dtype).removeprefix('torch.')}"
          f" | max seqs {args.max_num_seqs} | step tokens {args.max_num_batched_tokens} | KV blocks {engine.num_blocks}"
          f" | async scheduling {'on' if engine.async_scheduling else 'off'} | cuda graphs "
          f"{'on' if engine.runner.graphs else 'off'}")
    if engine.memory_reserve:
        graphs = engine.runner.graphs
        taken = f" (capture took {graphs.pool_bytes / 1e9:.2f} GB)" if graphs is not None else ""
        print("# kept out of the KV pool: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in engine.memory_reserve.items())
              + taken)
    rate = f"{ns.request_rate}/s (Poisson)" if ns.request_rate else "all at once"
    print(f"# {r.num_requests} requests, {rate}; input {ns.input_len}, output {ns.output_len} tokens, seed {ns.seed}")
    print(f"output tokens/s {r.output_tokens_per_s:10.1f} | total tokens/s {r.total_tokens_per_s:10.1f} | "
          f"duration {r.duration_s:.1f} s | {r.output_tokens} output, {r.prompt_tokens} prompt tokens")
    for name, p in (("TTFT ms", r.ttft_ms), ("TPOT ms", r.tpot_ms)):
        print(f"{name:8} p50 {p['p50']:9.1f} | p90 {p['p90']:9.1f} | p99 {p['p99']:9.1f}")
    busy = "-" if r.gpu_busy_share is None else f"{100 * (1 - r.gpu_busy_share):.1f}%"
    print(f"peak KV usage {100 * r.peak_kv_usage:.1f}% | preemptions {r.num_preemptions} | host {r.host_ms_per_step:.2f} "
          f"ms/step | device idle {busy}")
    if r.host_s_by_phase:
        print("host " + _host_phases(r))
    if r.kernel_ms_per_step:
        print("kernels per profiled step (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in r.kernel_ms_per_step.items()))
        for name, cls, ms in r.top_kernels:
            print(f"  {ms:8.3f} ms  {cls:17} {name}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"command": _command(), "device": _device_name(engine.device), **r.as_dict()}, f, indent=2)
    return 0


def _host_phases(r) -> str:
    """Host ms per step of each loop phase; a launch's ms are per launch of its kind (graph / eager)."""
    per_step = [f"{k} {v * 1e3 / max(r.num_steps, 1):.2f}" for k, v in r.host_s_by_phase.items()
                if not k.startswith("launch_")]
    launches = [f"{kind} {r.host_s_by_phase.get('launch_' + kind, 0.0) * 1e3 / n:.2f} x {n}"
                for kind, n in sorted(r.steps_by_kind.items())]
    return "ms/step: " + ", ".join(per_step) + " | launch ms (inputs, forward, sampling): " + ", ".join(launches)


def _run_serve(ns: argparse.Namespace) -> int:
    import asyncio

    from floorline.bench.serve import BenchConfig, bench_config_dict, format_table, run_bench, summarize

    for flag, value in (("--num-prompts", ns.num_prompts), ("--input-len", ns.input_len),
                        ("--output-len", ns.output_len), ("--max-concurrency", ns.max_concurrency or 1)):
        if value < 1:
            raise FloorlineError(f"{flag} must be >= 1, got {value}")
    if not ns.request_rate > 0:
        raise FloorlineError(f"--request-rate must be > 0 (inf: all at once), got {ns.request_rate}")
    cfg = BenchConfig(url=ns.url, num_prompts=ns.num_prompts, request_rate=ns.request_rate, seed=ns.seed,
                      input_len=ns.input_len, output_len=ns.output_len, endpoint=ns.endpoint, model=ns.model,
                      max_concurrency=ns.max_concurrency, api_key=ns.api_key)
    results, duration, model = asyncio.run(run_bench(cfg))
    summary = summarize(results, duration)
    print(format_table(cfg, model, summary, _command()))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"command": _command(), "config": bench_config_dict(cfg), "model": model, **summary}, f,
                      indent=2)
    return 0 if summary["completed"] else 1


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
