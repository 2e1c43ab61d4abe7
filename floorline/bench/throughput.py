"""`floorline bench throughput`: many requests through one engine, all at once or at a Poisson rate.

Prompts are random token ids (lengths drawn uniformly from a range, fixed seed), outputs run to
their drawn length (ignore_eos), so the work is the same on every engine and every run.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

from floorline.engine.engine import LLMEngine
from floorline.sampling_params import SamplingParams


@dataclass
class ThroughputResult:
    num_requests: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    output_tokens_per_s: float
    total_tokens_per_s: float
    ttft_ms: dict[str, float]  # p50/p90/p99
    tpot_ms: dict[str, float]  # time per output token after the first, per request
    peak_kv_usage: float
    num_preemptions: int
    gpu_busy_share: float | None  # time the device was executing steps / wall time
    host_ms_per_step: float  # host work per step outside waiting for the device
    num_steps: int = 0
    host_s_by_phase: dict[str, float] | None = None  # host seconds over the run, by phase (engine.step_stats)
    steps_by_kind: dict[str, int] | None = None  # launched steps: graph replays and eager forwards
    kernel_ms_per_step: dict[str, float] | None = None  # by kernel class, over the profiled steps
    top_kernels: list | None = None  # (name, class, ms per step)

    def as_dict(self) -> dict:
        return asdict(self)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99)}


def make_workload(num_requests: int, input_range: tuple[int, int], output_range: tuple[int, int], vocab: int,
                  seed: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request, reproducible from the seed."""
    rng = random.Random(seed)
    work = []
    for _ in range(num_requests):
        n_in = rng.randint(*input_range)
        work.append(([rng.randrange(vocab) for _ in range(n_in)], rng.randint(*output_range)))
    return work


def run_throughput(engine: LLMEngine, work: list[tuple[list[int], int]], request_rate: float | None = None,
                   seed: int = 0, profile_steps: int = 0, profile_from: int = 100) -> ThroughputResult:
    """Submits the workload (at once, or with exponential gaps at `request_rate` per second) and
    steps the engine until every request finishes. With `profile_steps`, steps `profile_from`..
    run under the PyTorch profiler and the result carries their kernel time by class."""
    profiler, events = None, None
    rng = random.Random(seed + 1)
    arrivals, t = [], 0.0
    for _ in work:
        arrivals.append(t)
        if request_rate:
            t += rng.expovariate(request_rate)
    submit_time: dict[str, float] = {}
    first_token: dict[str, float] = {}
    finish: dict[str, tuple[float, int]] = {}
    num_out: dict[str, int] = {}  # output tokens so far, per unfinished request
    engine.reset_step_stats()
    start = time.perf_counter()
    next_req, peak_kv, steps = 0, 0.0, 0
    while next_req < len(work) or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while next_req < len(work) and arrivals[next_req] <= now:
            prompt, n_out = work[next_req]
            params = SamplingParams(temperature=0.0, max_tokens=n_out, ignore_eos=True, output_kind="delta")
            rid = engine.add_request(prompt, params, request_id=f"bench-{next_req}")
            submit_time[rid] = time.perf_counter()
            next_req += 1
        if not engine.has_unfinished_requests():
            time.sleep(min(0.001, max(0.0, arrivals[next_req] - now)))
            continue
        if profile_steps and steps == profile_from:
            profiler = _start_profiler()
        outputs = engine.step()
        steps += 1
        if profiler is not None and steps == profile_from + profile_steps:
            events = _stop_profiler(profiler)
            profiler = None
        stamp = time.perf_counter()
        peak_kv = max(peak_kv, engine.scheduler.kv.usage)
        for out in outputs:  # delta outputs: token_ids are the step's new tokens
            new = len(out.outputs[0].token_ids)
            if new and out.request_id not in first_token:
                first_token[out.request_id] = stamp
            num_out[out.request_id] = num_out.get(out.request_id, 0) + new
            if out.finished:
                finish[out.request_id] = (stamp, num_out.pop(out.request_id))
    duration = time.perf_counter() - start
    ttft = [(first_token[r] - submit_time[r]) * 1e3 for r in first_token]
    tpot = [(end - first_token[r]) * 1e3 / (n - 1) for r, (end, n) in finish.items() if n > 1]
    out_tokens = sum(n for _, n in finish.values())
    in_tokens = sum(len(p) for p, _ in work)
    if profiler is not None:  # the run ended inside the profiled window
        events = _stop_profiler(profiler)
    stats = engine.step_stats()
    breakdown = None
    if events is not None:
        from floorline.analysis.measure import kernel_breakdown

        breakdown = kernel_breakdown(events, profile_steps)
    return ThroughputResult(
        num_requests=len(work), duration_s=duration, prompt_tokens=in_tokens, output_tokens=out_tokens,
        output_tokens_per_s=out_tokens / duration, total_tokens_per_s=(out_tokens + in_tokens) / duration,
        ttft_ms=_percentiles(ttft), tpot_ms=_percentiles(tpot), peak_kv_usage=peak_kv,
        num_preemptions=engine.scheduler.num_preemptions,
        gpu_busy_share=stats["device_busy_s"] / duration if stats["device_busy_s"] is not None else None,
        host_ms_per_step=stats["host_s"] / max(steps, 1) * 1e3,
        num_steps=steps, host_s_by_phase=stats["phase_s"],
        steps_by_kind=stats["num_steps"],
        kernel_ms_per_step={k: v * 1e3 for k, v in breakdown.per_class.items()} if breakdown else None,
        top_kernels=[(n, c, t * 1e3) for n, c, t in breakdown.top] if breakdown else None,
    )


def _start_profiler():
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.__enter__()
    return prof


def _stop_profiler(prof):
    import torch

    from floorline.analysis.measure import kernel_events_from_profiler

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    prof.__exit__(None, None, None)
    return kernel_events_from_profiler(prof)
