"""`floorline floor` (the decode floor, analytic and measured) and `floorline plan` (memory planner)."""

from __future__ import annotations

import argparse
import json
import re
import sys

from floorline.analysis.floor import FloorResult, decode_floor
from floorline.analysis.formats import kv_format_names
from floorline.analysis.gpus import GPUSpec, detect_gpu, known_gpu_names, lookup_gpu
from floorline.analysis.shapes import ShapeSummary, summarize_hf_config
from floorline.cli import COMMANDS
from floorline.errors import FloorlineError
from floorline.quant.config import HEAD_FORMATS, ON_LOAD

GRID_MODELS = ("qwen2.5-7b", "mistral-7b-v0.3", "llama-3.1-8b")
GRID_CONTEXTS = (2048, 4096, 8192, 16384)


def load_shape(model: str | None) -> ShapeSummary:
    """--model (GGUF, HF dir, cache id, shipped config) as a ShapeSummary, read from its config alone."""
    from floorline.weights.resolve import load_hf_config, resolve_model

    source = resolve_model(model)
    return summarize_hf_config(load_hf_config(source), source.name)


def parse_ints(text: str, what: str) -> list[int]:
    """'2048,4k,16K' -> [2048, 4096, 16384]."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", part)
        if not m:
            raise FloorlineError(f"bad {what} {part!r}: expected integers separated by commas (e.g. 2048,4k)")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    return out


def parse_bandwidth(text: str) -> float:
    """'2.88TB/s', '2880GB/s', '2880' (GB/s) -> bytes/s."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*(tb/s|tbps|tb|gb/s|gbps|gb)?\s*", text.lower())
    if not m:
        raise FloorlineError(f"bad bandwidth {text!r}: expected e.g. 2.88TB/s or 2880GB/s")
    value = float(m.group(1))
    return value * (1e12 if (m.group(2) or "").startswith("tb") else 1e9)


def _gpus(text: str | None) -> list[GPUSpec]:
    if text:
        return [lookup_gpu(name) for name in text.split(",") if name.strip()]
    present = detect_gpu()
    if present is None:
        raise FloorlineError(f"name a GPU with --gpu (known: {', '.join(known_gpu_names())})")
    return [present]


# ---- floor ----------------------------------------------------------------------------------------

def _floor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="GGUF file, HF model dir, org/name, or a shipped config name")
    p.add_argument("--gpu", default=None, help=f"one or more (comma separated) of: {', '.join(known_gpu_names())} "
                                               "(default: the present GPU)")
    p.add_argument("--context", default="2048", help="tokens in the KV cache, comma separated (default 2048)")
    p.add_argument("--batch", default="1", help="sequences per step, comma separated (default 1)")
    p.add_argument("--weight-format", default="bf16", help="bf16, fp16, fp8, int8, int4, nf4, or a GGUF type (q4_k...)")
    p.add_argument("--kv-format", default="bf16", help=", ".join(kv_format_names()))
    p.add_argument("--lm-head-format", default=None,
                   help="default: 16-bit, or the weight format for GGUF types; with --measure: the engine's LM head "
                        "(int8, int4, nf4, fp8: --lm-head-quantization)")
    p.add_argument("--bandwidth", default=None, help="override the datasheet bandwidth (e.g. 2.88TB/s, 2880GB/s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--measure", action="store_true",
                   help=f"also time real decode steps on the present GPU ({', '.join(ON_LOAD)} weights: quantized on load)")
    p.add_argument("--grid", action="store_true",
                   help=f"measure {', '.join(GRID_MODELS)} at {', '.join(map(str, GRID_CONTEXTS))} on the present GPU")
    p.add_argument("--steps", type=int, default=32, help="timed decode steps per measurement (default 32)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw ratio to floor vs context (measured) or floor ms vs context (analytic)")


def _run_floor(ns: argparse.Namespace) -> int:
    contexts = parse_ints(ns.context, "context")
    batches = parse_ints(ns.batch, "batch")
    bandwidth = parse_bandwidth(ns.bandwidth) if ns.bandwidth else None
    measured = []
    if ns.grid:
        measured = _measure_grid(ns, batches[0])
        floors: list[FloorResult] = [m.floor for m in measured]
    else:
        shape = load_shape(ns.model)
        floors = [decode_floor(shape, gpu, c, b, ns.weight_format, ns.kv_format, bandwidth, ns.lm_head_format)
                  for gpu in _gpus(ns.gpu) for c in contexts for b in batches]
        if ns.measure:
            measured = _measure_one(ns, shape, contexts, batches)
    if ns.plot:
        _plot(ns.plot, floors, measured)
    if ns.json:
        json.dump({"floors": [f.to_dict() for f in floors], "measurements": [m.to_dict() for m in measured]},
                  sys.stdout, indent=2)
        print()
        return 0
    from floorline.analysis import report

    print(report.floor_table(floors))
    if measured:
        print()
        print(report.grid_table(measured) if ns.grid else report.measurement_table(measured))
        if ns.grid:
            print()
            print(report.measurement_table(measured))
    return 0


def _require_cuda(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise FloorlineError(f"{what} needs a CUDA GPU and none is available here "
                             "(the analytic floor needs none: drop the flag)")


def _engine_settings(ns: argparse.Namespace) -> tuple[str, str | None]:
    """(activation dtype, quantization on load) of the measured engine: 16-bit weights and KV cache of one
    type, or weights quantized on load (ON_LOAD) with a bf16 / fp16 KV cache."""
    wf, kv = ns.weight_format.lower(), ns.kv_format.lower()
    dtypes = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
    if wf in ON_LOAD and kv in dtypes:
        return dtypes[kv], wf
    if wf not in dtypes or dtypes.get(kv) != dtypes[wf]:
        raise FloorlineError(f"measuring runs the engine with 16-bit weights and KV cache of one type, or with "
                             f"weights quantized on load ({', '.join(ON_LOAD)}) and a 16-bit KV cache; got weights "
                             f"{ns.weight_format!r} and KV {ns.kv_format!r}")
    return dtypes[wf], None


def _head_setting(ns: argparse.Namespace, quantization: str | None) -> str | None:
    """The measured engine's `--lm-head-quantization` from `--lm-head-format`: None for a 16-bit head."""
    fmt = (getattr(ns, "lm_head_format", None) or "").lower()
    if fmt in ("", "bf16", "fp16", "bfloat16", "float16"):
        return None
    if fmt not in HEAD_FORMATS:
        raise FloorlineError(f"measuring takes --lm-head-format bf16, fp16 or one of {', '.join(HEAD_FORMATS)} "
                             f"(the engine's --lm-head-quantization); got {ns.lm_head_format!r}")
    if quantization is None:
        raise FloorlineError(f"measuring with an {fmt} LM head needs weights quantized on load too "
                             f"(--weight-format {', '.join(ON_LOAD)})")
    return fmt


def _measure_one(ns: argparse.Namespace, shape: ShapeSummary, contexts: list[int], batches: list[int]) -> list:
    _require_cuda("--measure")
    from floorline.analysis.gpus import measure_read_bandwidth, present_gpu_spec
    from floorline.analysis.measure import build_engine, measure_decode

    dtype, quantization = _engine_settings(ns)
    bw = measure_read_bandwidth()
    spec = present_gpu_spec(bandwidth=bw)
    if ns.gpu and spec.name not in {g.name for g in _gpus(ns.gpu)}:
        print(f"floorline: note: measuring on the present GPU ({spec.name}), not {ns.gpu}", file=sys.stderr)
    engine = build_engine(ns.model, _engine_len(shape, max(contexts)), max(batches), dtype, quantization,
                          lm_head_quantization=_head_setting(ns, quantization))
    out = []
    for c in contexts:
        for b in batches:
            _progress(f"measuring {shape.name} at context {c}, batch {b}")
            out.append(measure_decode(engine, c, b, num_steps=ns.steps, bandwidth=bw, gpu=spec))
    return out


def _measure_grid(ns: argparse.Namespace, batch: int) -> list:
    _require_cuda("--grid")
    import gc

    import torch

    from floorline.analysis.gpus import measure_read_bandwidth, present_gpu_spec
    from floorline.analysis.measure import build_engine, measure_decode

    dtype, quantization = _engine_settings(ns)
    bw = measure_read_bandwidth()
    spec = present_gpu_spec(bandwidth=bw)
    out = []
    for model in GRID_MODELS:
        shape = load_shape(model)
        engine = build_engine(model, _engine_len(shape, max(GRID_CONTEXTS)), batch, dtype, quantization,
                              lm_head_quantization=_head_setting(ns, quantization))
        for c in GRID_CONTEXTS:
            _progress(f"measuring {model} at context {c}")
            out.append(measure_decode(engine, c, batch, num_steps=ns.steps, bandwidth=bw, gpu=spec))
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    return out


def _engine_len(shape: ShapeSummary, context: int) -> int:
    """The largest context the measurement will request; build_engine adds room for the decode steps,
    which must stay within the model's maximum."""
    return min(context, shape.max_position_embeddings - 512)


def _progress(msg: str) -> None:
    print(f"[floorline] {msg}", file=sys.stderr, flush=True)


def _plot(path: str, floors: list[FloorResult], measured: list) -> None:
    from floorline.analysis.report import plot_series

    series: dict[str, list[tuple[float, float]]] = {}
    if measured:
        for m in measured:
            series.setdefault(m.model, []).append((m.context, m.ratio))
        plot_series(path, series, "measured step / floor", f"ratio to the floor on {measured[0].gpu}")
    else:
        for f in floors:
            series.setdefault(f"{f.model} on {f.gpu}, batch {f.batch}", []).append((f.context, f.floor_s * 1e3))
        plot_series(path, series, "floor (ms per step)", "analytic decode floor")
    _progress(f"wrote {path}")


# ---- plan ---------------------------------------------------------------------------------------

def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="GGUF file, HF model dir, org/name, or a shipped config name")
    p.add_argument("--gpus", default=None, help=f"comma separated, of: {', '.join(known_gpu_names())} "
                                                "(default: the present GPU)")
    p.add_argument("--weight-format", default="bf16", help="bf16, fp16, fp8, int8, int4, nf4, or a GGUF type (q4_k...)")
    p.add_argument("--kv-format", default="bf16", help=", ".join(kv_format_names()))
    p.add_argument("--lm-head-format", default=None, help="default: 16-bit, or the weight format for GGUF types")
    p.add_argument("--context", type=int, default=None, help="context for the floor column (default 4096)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step for the floor column (default 1)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90,
                   help="share of GPU memory the engine may use (default 0.90, as the engine)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_plan(ns: argparse.Namespace) -> int:
    from floorline.analysis.plan import plan

    if not 0 < ns.gpu_memory_utilization <= 1:
        raise FloorlineError(f"--gpu-memory-utilization must be in (0, 1], got {ns.gpu_memory_utilization}")
    result = plan(load_shape(ns.model), _gpus(ns.gpus), ns.weight_format, ns.kv_format, context=ns.context,
                  batch=ns.batch, lm_head_format=ns.lm_head_format, gpu_memory_utilization=ns.gpu_memory_utilization)
    if ns.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    from floorline.analysis.report import plan_text

    print(plan_text(result))
    return 0


COMMANDS["floor"] = (_floor_args, _run_floor)
COMMANDS["plan"] = (_plan_args, _run_plan)
