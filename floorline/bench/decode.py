"""`floorline bench decode`: time per token of batch-b decode at given contexts, against the floor."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from floorline.bench.timing import median_replay_ms
from floorline.engine.engine import EngineArgs, LLMEngine
from floorline.sampling_params import SamplingParams


@dataclass
class DecodeRow:
    context: int
    batch: int
    ms_per_step: float  # median wall time of one engine step (host work included)
    tokens_per_s: float  # batch / step time
    gpu_ms: float | None  # median GPU time of the decode forward alone (graph replay), if graphs are on
    achieved_gbs: float | None  # bytes the floor counts / step time
    floor_ms: float | None
    ratio: float | None  # ms_per_step / floor_ms
    peak_mem_gb: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _floor_ms(engine: LLMEngine, context: int, batch: int, bandwidth: float | None) -> tuple[float, float] | None:
    """(floor ms, bytes per step) at this context, or None without a bandwidth."""
    if bandwidth is None:
        return None
    from floorline.analysis.floor import decode_floor
    from floorline.analysis.formats import engine_formats, engine_head_format
    from floorline.analysis.gpus import GPUSpec, present_gpu_spec

    if engine.device.type == "cuda":
        gpu = present_gpu_spec(engine.device.index or 0, bandwidth)
    else:
        gpu = GPUSpec("cpu", bandwidth, 0.0, None, None, None)
    weight_format, kv_format = engine_formats(engine.model, engine.dtype)
    result = decode_floor(engine.model_config, gpu, context, batch, weight_format=weight_format,
                          kv_format=kv_format, bandwidth=bandwidth, bandwidth_source="measured",
                          lm_head_format=engine_head_format(engine.model))
    return result.memory_time_s * 1e3, result.total_bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graph_gpu_ms(engine: LLMEngine, batch: int, repeats: int) -> float | None:
    """GPU time of one decode forward: replays of the captured graph timed with CUDA events."""
    graphs = engine.runner.graphs
    if graphs is None or engine.device.type != "cuda":
        return None
    bucket = next(b for b in graphs.buckets if b >= batch)
    return median_replay_ms(graphs.graphs[bucket], repeats)


def bench_context(engine: LLMEngine, context: int, batch: int, steps: int, warmup: int,
                  bandwidth: float | None, seed: int = 0) -> DecodeRow:
    """Prefills `batch` random prompts of `context` tokens, then times `steps` decode steps."""
    rng = random.Random(seed + context)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=warmup + steps + 2, ignore_eos=True)
    ids = [engine.add_request([rng.randrange(vocab) for _ in range(context)], params) for _ in range(batch)]
    sched = engine.scheduler
    while any(len(sched.get_request(r).output_token_ids) == 0 for r in ids):  # prefill (chunked)
        engine.step()
    for _ in range(warmup):
        engine.step()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    # No synchronization inside the loop: with async scheduling a step overlaps the next one, so
    # the time between consecutive returns of step() is the steady-state time per token.
    _sync(engine.device)
    stamps = [time.perf_counter()]
    for _ in range(steps):
        engine.step()  # returns once this step's sampled ids are on the host
        stamps.append(time.perf_counter())
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    gpu_ms = _graph_gpu_ms(engine, batch, repeats=max(steps // 2, 5))
    for r in ids:
        engine.abort_request(r)
    engine.step()  # lets the runner drop the aborted requests
    ms = statistics.median(times) * 1e3
    floor = _floor_ms(engine, context + warmup + steps // 2, batch, bandwidth)
    peak = torch.cuda.max_memory_allocated(engine.device) / 1e9 if engine.device.type == "cuda" else None
    return DecodeRow(
        context=context, batch=batch, ms_per_step=ms, tokens_per_s=batch / (ms / 1e3), gpu_ms=gpu_ms,
        achieved_gbs=(floor[1] / (ms / 1e3) / 1e9) if floor else None,
        floor_ms=floor[0] if floor else None, ratio=(ms / floor[0]) if floor else None, peak_mem_gb=peak,
    )


def build_bench_engine(args: EngineArgs, contexts: list[int], batch: int, steps: int, warmup: int) -> LLMEngine:
    """An engine sized for the longest context: enough KV blocks for every sequence, graphs for `batch`."""
    longest = max(contexts) + steps + warmup + 8
    blocks = batch * (-(-longest // args.block_size)) + 8
    from dataclasses import replace

    args = replace(args, max_model_len=args.max_model_len or longest, max_num_seqs=batch,
                   num_kv_blocks=args.num_kv_blocks or blocks, enable_prefix_caching=False,
                   max_num_batched_tokens=max(args.max_num_batched_tokens, 8192))
    return LLMEngine(args)
