"""Where a decode step's time goes when kernels overlap: each kernel's marginal cost on the GPU timeline.

    python scripts/decode_timeline.py --quantization int4 --lm-head-quantization int4 [--context 2048] [--out t.json]
        [--by-position]

Profiles a few decode steps (CUDA-graph replays, PDL and early launch as they run) of Llama-3.1-8B with
dummy weights and prints, per kernel name, how far it moved the timeline's end (`analysis.measure.
timeline_costs`, which `floorline floor --measure` sums by class), per step. Under early launch a kernel's
own duration includes its wait for the previous one, so durations overcount; the marginal costs add up to
the step. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def short_name(name: str) -> str:
    """A kernel's readable name: the Triton function, or torch's functor, or the name's start."""
    m = re.search(r"(_[a-z0-9_]+_kernel|ArgMaxOps|MaxNanFunctor|sum_functor|Memcpy \w+)", name)
    return m.group(1) if m else name[:48]


def marginal_costs(events: list[tuple[str, float, float]], key=short_name) -> dict[str, tuple[int, float, float]]:
    """(name, start, end) events -> {key(name): (count, summed marginal cost, summed duration)}."""
    from floorline.analysis.measure import KernelEvent, timeline_costs

    out: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for e, cost in timeline_costs(KernelEvent(name, end - start, start) for name, start, end in events):
        row = out[key(e.name)]
        row[0] += 1
        row[1] += cost
        row[2] += e.duration_s
    return {k: (int(v[0]), v[1], v[2]) for k, v in out.items()}


def by_layer_position(events: list[tuple[str, float, float]], steps: int, layers: int) -> list[tuple[str, float, float]]:
    """The events renamed by their place in a layer, so that launches of one kernel function for
    different shapes (qkv, o_proj, gate_up) count apart: `name[i]` is the i-th launch of `name` in a
    layer, `name[+j]` the j-th launch past layers x that in a step (the LM head, the final norm).

    Assumes what a graph replay gives: every step launches the same kernels in the same order, and a
    kernel's launches beyond its per-layer ones come last in the step."""
    ordered = sorted(events, key=lambda e: e[1])
    per_step = collections.Counter(short_name(n) for n, _, _ in ordered)
    seen: collections.Counter = collections.Counter()
    out = []
    for name, start, end in ordered:
        short = short_name(name)
        count = per_step[short] // steps
        index = seen[short] % count if count else 0
        seen[short] += 1
        period = count // layers
        label = f"{short}[{index % period}]" if index < period * layers else f"{short}[+{index - period * layers}]"
        out.append((label, start, end))
    return out


def _profile(a: argparse.Namespace) -> tuple[list[tuple[str, float, float]], int]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from floorline.analysis.measure import _prefill, build_engine
    from floorline.sampling_params import SamplingParams

    engine = build_engine("llama-3.1-8b", a.context, 1, quantization=a.quantization,
                          lm_head_quantization=a.lm_head_quantization)
    rng = random.Random(0)
    rid = engine.add_request([rng.randrange(10, 1000) for _ in range(a.context)],
                             SamplingParams(max_tokens=a.steps + 32, ignore_eos=True, temperature=0.0))
    _prefill(engine, [rid], a.context)
    if engine.runner.graphs is None:
        engine.runner.capture_cuda_graphs(max_batch=1, max_model_len=engine.max_model_len)
    for _ in range(8):
        engine.step()
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(a.steps):
                engine.step()
            torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    events = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
              if getattr(e, "device_type", None) == cuda]
    return events, engine.runner.model.config.num_layers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quantization")
    p.add_argument("--lm-head-quantization")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", help="also write the raw (name, start_us, end_us) events as JSON")
    p.add_argument("--by-position", action="store_true",
                   help="count each kernel by its place in the layer (qkv, o_proj and gate_up apart)")
    a = p.parse_args(argv)
    events, layers = _profile(a)
    if a.out:
        Path(a.out).write_text(json.dumps(events))
    if a.by_position:  # its labels are short names already
        costs = marginal_costs(by_layer_position(events, a.steps, layers), key=str)
    else:
        costs = marginal_costs(events)
    rows = sorted(costs.items(), key=lambda kv: -kv[1][1])
    print(f"{'kernel':50s} {'per step':>8s} {'marginal us/step':>16s} {'duration us/step':>16s}")
    for name, (n, marginal, duration) in rows:
        print(f"{name:50s} {n / a.steps:8.1f} {marginal / a.steps:16.1f} {duration / a.steps:16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
