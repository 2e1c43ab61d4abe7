"""The measured floor: time real decode steps of an engine and explain the gap to the analytic floor.

Steps are timed with CUDA graphs on and off (the difference is launch overhead), then profiled
with torch.profiler: every kernel is put in a class by its name and charged its marginal cost on
the timeline (`timeline_costs`: kernels that launch early overlap their predecessors), and the
step time not covered by kernels is the idle gap. With bandwidth measured on the same GPU the gap
splits exactly:

    step - floor = idle + (GEMV time - weight bytes / bw) + (attention time - KV bytes / bw)
                   + norms/elementwise + sampling + other
"""

from __future__ import annotations

import dataclasses
import random
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from floorline.analysis.formats import engine_formats, engine_head_format
from floorline.analysis.floor import FloorResult, decode_floor
from floorline.errors import FloorlineError

KERNEL_CLASSES = ("gemm", "attention", "norm_elementwise", "sampling", "other")
CLASS_LABELS = {"gemm": "GEMV/GEMM", "attention": "attention", "norm_elementwise": "norms+elementwise",
                "sampling": "sampling", "other": "other"}

# First match wins: attention before GEMM (fmha kernels say "cutlass"), sampling before
# elementwise (random-number kernels are elementwise kernels).
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cls, re.compile(p, re.IGNORECASE)) for cls, p in (
        ("other", r"memcpy|memset"),
        ("attention", r"attn|attention|flash|fmha|paged|sdpa|kv_write|reshape_and_cache|_decode_split|"
                      r"_prefill_kernel"),
        ("sampling", r"argmax|argmin|topk|top_k|sort|multinomial|exponential|sampl|softmax|cumsum|scan|"
                     r"distribution|philox|gumbel"),
        ("gemm", r"gemm|gemv|nvjet|cublas|cutlass|xmma|matmul|_mm_|splitk|tensorop|wgmma|marlin|dequant|"
                 r"bmm|linear"),
        ("norm_elementwise", r"norm|rms|rotary|rope|silu|gelu|act_and_mul|activation|elementwise|pointwise|"
                             r"triton_poi|add|mul|fill|copy|cat_|where|cast"),
    )
)


def classify_kernel(name: str) -> str:
    """The class of a CUDA kernel, from its (mangled or demangled) name."""
    for cls, pattern in _PATTERNS:
        if pattern.search(name):
            return cls
    return "other"


@dataclass(frozen=True)
class KernelEvent:
    """One kernel execution seen by the profiler (`start_s` where the profiler gives it)."""

    name: str
    duration_s: float
    start_s: float | None = None


def timeline_costs(events: Iterable[KernelEvent]) -> list[tuple[KernelEvent, float]]:
    """Each event with its marginal cost: how far it moved the end of everything that started before it.

    With early launch a kernel starts while its predecessor runs and waits for it, so durations
    overlap and their sum exceeds the step; marginal costs add up to the busy time (the step minus its
    idle gaps) and charge each kernel only for the time it alone kept the device busy."""
    out = []
    frontier = None
    for e in sorted(events, key=lambda e: e.start_s):
        end = e.start_s + e.duration_s
        frontier = e.start_s if frontier is None else frontier
        out.append((e, max(0.0, end - max(frontier, e.start_s))))
        frontier = max(frontier, end)
    return out


@dataclass(frozen=True)
class KernelProfile:
    """Kernel time per step: by class, and the kernels that took the most."""

    per_class: dict[str, float]  # seconds per step
    kernels_per_step: float
    top: list[tuple[str, str, float]]  # (name, class, seconds per step), longest first
    marginal: bool = False  # times are marginal costs on the timeline (`timeline_costs`), not durations


def kernel_breakdown(events: Iterable[KernelEvent], num_steps: int, top: int = 8) -> KernelProfile:
    """Sums kernel time per class and per kernel name, per step: marginal costs (`timeline_costs`) when
    every event has its start, else durations."""
    events = list(events)
    timed = all(e.start_s is not None for e in events)
    costs = timeline_costs(events) if timed else [(e, e.duration_s) for e in events]
    per_class = dict.fromkeys(KERNEL_CLASSES, 0.0)
    per_name: dict[str, float] = {}
    for e, t in costs:
        per_class[classify_kernel(e.name)] += t
        per_name[e.name] = per_name.get(e.name, 0.0) + t
    count = len(costs)
    steps = max(num_steps, 1)
    longest = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    return KernelProfile({k: v / steps for k, v in per_class.items()}, count / steps,
                         [(_short(n), classify_kernel(n), t / steps) for n, t in longest], marginal=timed)


def _short(name: str, width: int = 90) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


@dataclass
class DecodeMeasurement:
    """Measured decode steps at one context, against the floor at measured bandwidth."""

    model: str
    gpu: str
    context: int
    batch: int
    bandwidth: float  # bytes/s, measured read bandwidth
    floor: FloorResult
    step_graphs_s: float | None  # median step time, CUDA graphs on (None: no graphs)
    step_eager_s: float | None  # median step time, graphs off
    kernel_s: dict[str, float] = field(default_factory=dict)  # per step, per kernel class
    kernels_per_step: float = 0.0
    top_kernels: list[tuple[str, str, float]] = field(default_factory=list)  # (name, class, s per step)
    profiled_mode: str = "none"
    marginal: bool = False  # kernel_s holds marginal costs on the timeline (`timeline_costs`), not durations
    notes: list[str] = field(default_factory=list)

    @property
    def floor_s(self) -> float:
        return self.floor.floor_s

    @property
    def step_s(self) -> float:
        """The engine's step time: with graphs where it has them."""
        s = self.step_graphs_s if self.step_graphs_s is not None else self.step_eager_s
        if s is None:
            raise ValueError("no step time measured")
        return s

    @property
    def ratio(self) -> float:
        return self.step_s / self.floor_s

    @property
    def launch_overhead_s(self) -> float | None:
        if self.step_graphs_s is None or self.step_eager_s is None:
            return None
        return self.step_eager_s - self.step_graphs_s

    @property
    def kernel_total_s(self) -> float:
        return sum(self.kernel_s.values())

    @property
    def idle_s(self) -> float | None:
        """Step time with no kernel running: launch gaps, host work, synchronization."""
        return self.step_s - self.kernel_total_s if self.kernel_s else None

    @property
    def gemv_bytes_per_s(self) -> float | None:
        t = self.kernel_s.get("gemm", 0.0)
        return self.floor.weight_bytes / t if t > 0 else None

    @property
    def gemv_efficiency(self) -> float | None:
        bps = self.gemv_bytes_per_s
        return bps / self.bandwidth if bps is not None else None

    @property
    def attention_bytes_per_s(self) -> float | None:
        t = self.kernel_s.get("attention", 0.0)
        return self.floor.kv_bytes / t if t > 0 else None

    @property
    def attention_share(self) -> float | None:
        return self.kernel_s.get("attention", 0.0) / self.step_s if self.kernel_s else None

    def gap_components(self) -> dict[str, float]:
        """step - floor, split into where it went; the values sum to `step_s - floor_s`.

        Exact only when the floor is memory-bound at the measured bandwidth (decode at small batch).
        """
        if not self.kernel_s:
            return {}
        k = self.kernel_s
        return {
            "idle (launch gaps, host work)": self.idle_s or 0.0,
            "GEMV/GEMM above the weight floor": k["gemm"] - self.floor.weight_bytes / self.bandwidth,
            "attention above the KV floor": k["attention"] - self.floor.kv_bytes / self.bandwidth,
            "norms+elementwise": k["norm_elementwise"],
            "sampling": k["sampling"],
            "other": k["other"],
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("floor_s", "step_s", "ratio", "launch_overhead_s", "kernel_total_s", "idle_s",
                     "gemv_bytes_per_s", "gemv_efficiency", "attention_bytes_per_s", "attention_share"):
            try:
                d[name] = getattr(self, name)
            except ValueError:
                d[name] = None
        d["gap_components"] = self.gap_components()
        return d


# ---- running the engine (CUDA only) ------------------------------------------------------------

def build_engine(model: str, max_context: int, batch: int = 1, dtype: str = "bfloat16",
                 quantization: str | None = None, steps_margin: int = 512, lm_head_quantization: str | None = None):
    """An engine with dummy weights (quantized on load with `quantization`, the LM head with
    `lm_head_quantization`) and a KV pool just large enough for `batch` x `max_context`."""
    from floorline.engine.engine import EngineArgs, LLMEngine

    block = 16
    max_len = max_context + steps_margin
    num_blocks = batch * -(-max_len // block) + 8
    kwargs: dict[str, Any] = dict(model=model, load_format="dummy", dtype=dtype, device="cuda", max_model_len=max_len,
                                  num_kv_blocks=num_blocks, block_size=block, max_num_seqs=max(batch, 1),
                                  enable_prefix_caching=False, quantization=quantization,
                                  lm_head_quantization=lm_head_quantization)
    if "enforce_eager" in {f.name for f in dataclasses.fields(EngineArgs)}:
        kwargs["enforce_eager"] = False  # graphs wanted; eager is measured by switching them off
    return LLMEngine(EngineArgs(**kwargs))


def measure_decode(engine, context: int, batch: int = 1, num_steps: int = 32, warmup: int = 4,
                   profile_steps: int = 8, bandwidth: float | None = None, gpu=None) -> DecodeMeasurement:
    """Prefills `batch` random prompts of `context` tokens, then times and profiles decode steps.

    Each mode decodes about warmup + num_steps + profile_steps tokens, so the context grows by
    that much (~2% at 2048); the floor is taken at `context`.
    """
    from floorline.analysis.gpus import measure_read_bandwidth, present_gpu_spec
    from floorline.sampling_params import SamplingParams

    device = getattr(engine, "device", None)
    if device is None or device.type != "cuda":
        raise FloorlineError("measuring decode needs an engine on a CUDA GPU")
    cfg = engine.model_config
    per_mode = warmup + num_steps + profile_steps
    max_tokens = 2 * per_mode + 8
    if context + max_tokens > engine.max_model_len:
        raise FloorlineError(f"context {context} + {max_tokens} decode steps exceeds the engine's "
                             f"max_model_len {engine.max_model_len}")
    bw = bandwidth if bandwidth is not None else measure_read_bandwidth(device)
    spec = gpu if gpu is not None else present_gpu_spec(device.index or 0, bw)
    fmt, kv = engine_formats(engine.model, engine.dtype)
    floor = decode_floor(cfg, spec, context, batch, fmt, kv, bandwidth=bw, bandwidth_source="measured",
                         lm_head_format=engine_head_format(engine.model))
    result = DecodeMeasurement(model=cfg.name or cfg.architecture, gpu=spec.name, context=context, batch=batch,
                               bandwidth=bw, floor=floor, step_graphs_s=None, step_eager_s=None)
    rng = random.Random(context)
    request_ids = []
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    for _ in range(batch):
        prompt = [rng.randrange(10, cfg.vocab_size - 1) for _ in range(context)]
        request_ids.append(engine.add_request(prompt, params))
    runner = engine.runner
    original_graphs = getattr(runner, "graphs", None)
    try:
        _prefill(engine, request_ids, context)
        graphs, why = _decode_graphs(engine, batch)
        if why:
            result.notes.append(why)
        profiles: dict[str, KernelProfile] = {}
        for mode, g in (("graphs", graphs), ("eager", None)):
            if mode == "graphs" and g is None:
                continue
            runner.graphs = g
            for _ in range(warmup):
                engine.step()
            step = _time_steps(engine, num_steps)
            if mode == "graphs":
                result.step_graphs_s = step
            else:
                result.step_eager_s = step
            try:
                profiles[mode] = kernel_breakdown(_profile_steps(engine, profile_steps), profile_steps)
            except Exception as e:  # the profiler is optional: timing stands without it
                result.notes.append(f"profiling {mode} failed: {type(e).__name__}: {e}")
        _pick_profile(result, profiles)
        import torch

        from floorline.kernels.pdl import early_launch_enabled

        if torch.cuda.is_available() and early_launch_enabled(engine.device) and not result.marginal:
            result.notes.append("early launch is on: a kernel's profiled time includes its wait for the previous "
                                "kernel, so per-class times overlap (FLOORLINE_PDL_EARLY=0 gives a breakdown)")
    finally:
        runner.graphs = original_graphs
        for rid in request_ids:
            engine.abort_request(rid)
    return result


def _pick_profile(result: DecodeMeasurement, profiles: dict[str, KernelProfile]) -> None:
    """Kernel times are the same kernels in both modes; prefer the graph replay's profile unless
    the profiler missed kernels inside graphs (older CUPTI records none or few of them)."""
    g, e = profiles.get("graphs"), profiles.get("eager")
    chosen, mode = (g, "graphs") if g else (e, "eager")
    if g and e and sum(g.per_class.values()) < 0.5 * sum(e.per_class.values()):
        chosen, mode = e, "eager"
        result.notes.append("the profiler saw few kernels inside CUDA graphs; kernel times are from eager steps")
    if chosen:
        result.kernel_s, result.kernels_per_step, result.top_kernels = (chosen.per_class, chosen.kernels_per_step,
                                                                        chosen.top)
        result.profiled_mode = mode
        result.marginal = chosen.marginal
        if chosen.marginal:
            result.notes.append("kernel times are marginal costs on the profiled timeline (the time each kernel "
                                "alone kept the GPU busy), which add up to the step with early launch on too")


def _prefill(engine, request_ids: list[str], context: int) -> None:
    """Steps until every request has its first token (prefill done, possibly in chunks)."""
    started: set[str] = set()
    chunk = max(getattr(engine.args, "max_num_batched_tokens", 2048), 1)
    limit = len(request_ids) * (context // chunk + 2) + 16
    for _ in range(limit):
        for out in engine.step():
            if out.error:
                raise FloorlineError(f"the engine refused the synthetic prompt: {out.error}")
            if out.outputs and out.outputs[0].token_ids:
                started.add(out.request_id)
        if started >= set(request_ids):
            return
    raise FloorlineError(f"prefill of {len(request_ids)} x {context} tokens did not finish in {limit} steps")


def _decode_graphs(engine, batch: int):
    """The runner's decode graphs, capturing them if the runner can; (graphs or None, note)."""
    runner = engine.runner
    graphs = getattr(runner, "graphs", None)
    if graphs is not None:
        return graphs, None
    if getattr(engine.args, "enforce_eager", False):
        return None, "engine built with enforce_eager: no CUDA graphs"
    capture = getattr(runner, "capture_cuda_graphs", None)
    if capture is None:
        return None, "this runner has no CUDA graphs: eager only"
    try:
        capture(max_batch=max(batch, 1), max_model_len=engine.max_model_len)
        return runner.graphs, None
    except Exception as e:
        runner.graphs = None
        return None, f"CUDA graph capture failed ({type(e).__name__}: {e}); eager only"


def _time_steps(engine, num_steps: int) -> float:
    """Median wall time of one engine step: host work included, because the user waits for it."""
    import torch

    # No synchronization between steps: with async scheduling step N+1 overlaps N, so the time
    # between consecutive returns of step() is the steady-state time per step.
    torch.cuda.synchronize()
    stamps = [time.perf_counter()]
    for _ in range(num_steps):
        engine.step()
        stamps.append(time.perf_counter())
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def _profile_steps(engine, num_steps: int) -> list[KernelEvent]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's notes about its own cycles
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(num_steps):
                engine.step()
            torch.cuda.synchronize()
        return kernel_events_from_profiler(prof)


def kernel_events_from_profiler(prof) -> list[KernelEvent]:
    """GPU-side events (kernels, memcpy, memset) of a finished torch.profiler run."""
    import torch

    cuda = torch.autograd.DeviceType.CUDA
    events = []
    for e in prof.events():
        if getattr(e, "device_type", None) != cuda:
            continue
        tr = getattr(e, "time_range", None)
        if tr is not None:
            start = getattr(tr, "start", None)
            events.append(KernelEvent(e.name, tr.elapsed_us() * 1e-6, None if start is None else start * 1e-6))
        else:
            events.append(KernelEvent(e.name, getattr(e, "device_time", 0.0) * 1e-6))
    if events:
        return events
    try:  # older layouts: read kineto's raw activity list
        for e in prof.profiler.kineto_results.events():
            if e.device_type() == cuda:
                events.append(KernelEvent(e.name(), e.duration_ns() * 1e-9))
    except Exception:
        pass
    return events
