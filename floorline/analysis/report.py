"""Terminal tables and plots for `floorline floor` and `floorline plan` (people; --json is for programs)."""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

from floorline.analysis.floor import FloorResult
from floorline.analysis.formats import kv_format
from floorline.analysis.measure import CLASS_LABELS, DecodeMeasurement
from floorline.analysis.plan import Plan
from floorline.errors import FloorlineError


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to width; text left-aligned, numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_num(r[i]) for r in rows) if rows else False for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(c: object) -> str:
    if c is None:
        return "-"
    return str(c)


def _is_num(c: object) -> bool:
    return c is None or isinstance(c, (int, float)) or (isinstance(c, str) and c.replace(".", "").replace(",", "")
                                                         .replace("-", "").replace("x", "").replace("%", "").isdigit())


def _ms(s: float | None, digits: int = 2) -> str | None:
    return None if s is None else f"{s * 1e3:.{digits}f}"


def floor_table(results: list[FloorResult]) -> str:
    """The analytic floor, one row per (GPU, context, batch)."""
    r0 = results[0]
    head = (f"decode floor: {r0.model} | weights {r0.weight_format} (LM head {r0.lm_head_format}) | "
            f"KV cache {r0.kv_format}")
    rows = [[r.gpu, r.context, r.batch, f"{r.weight_bytes / 1e9:.2f}", f"{r.kv_bytes / 1e9:.3f}",
             f"{r.total_bytes / 1e9:.2f}", f"{r.bandwidth / 1e12:.2f}", _ms(r.memory_time_s, 3),
             _ms(r.compute_time_s, 3), r.bound, _ms(r.floor_s, 3), f"{r.tokens_per_s:.1f}"] for r in results]
    headers = ["GPU", "context", "batch", "weights GB", "KV GB", "total GB", "TB/s", "memory ms",
               "compute ms", "bound", "floor ms", "tokens/s"]
    sources = sorted({r.bandwidth_source for r in results})
    foot = f"bandwidth: {', '.join(sources)}; compute at the datasheet's dense peak; the floor is the larger time"
    return f"{head}\n{table(headers, rows)}\n{foot}"


def measurement_table(ms: list[DecodeMeasurement]) -> str:
    """Measured steps against the floor at measured bandwidth, and where the gap went."""
    m0 = ms[0]
    head = f"measured on {m0.gpu}: read bandwidth {m0.bandwidth / 1e12:.2f} TB/s (probe), batch {m0.batch}"
    rows = []
    for m in ms:
        eff = m.gemv_efficiency
        share = m.attention_share
        rows.append([m.model, m.context, _ms(m.floor_s, 3), _ms(m.step_graphs_s, 3), _ms(m.step_eager_s, 3),
                     f"{m.ratio:.2f}x", _ms(m.launch_overhead_s, 3), _ms(m.idle_s, 3),
                     None if eff is None else f"{eff * 100:.0f}%", None if share is None else f"{share * 100:.0f}%"])
    headers = ["model", "context", "floor ms", "graphs ms", "eager ms", "ratio", "launch ms", "idle ms",
               "GEMV eff", "attn share"]
    parts = [head, table(headers, rows)]
    for m in ms:
        parts.append(gap_text(m))
    return "\n".join(parts)


def gap_text(m: DecodeMeasurement) -> str:
    lines = [f"{m.model} @ {m.context}: step {_ms(m.step_s, 3)} ms = floor {_ms(m.floor_s, 3)} ms + "
             f"gap {_ms(m.step_s - m.floor_s, 3)} ms"]
    if m.kernel_s:
        kernels = ", ".join(f"{CLASS_LABELS[k]} {_ms(v, 3)}" for k, v in m.kernel_s.items())
        kind = "marginal cost on the timeline" if m.marginal else "profiled durations"
        lines.append(f"  kernels per step ({m.profiled_mode}, {m.kernels_per_step:.0f} launches, {kind}): {kernels} ms")
        for name, v in m.gap_components().items():
            lines.append(f"  gap: {name:34s} {_ms(v, 3):>8} ms")
        for name, cls, t in m.top_kernels[:5]:
            lines.append(f"  top kernel: {_ms(t, 3):>7} ms  {CLASS_LABELS[cls]:17s} {name}")
    for note in m.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def grid_table(ms: list[DecodeMeasurement]) -> str:
    rows = [[m.model, m.context, _ms(m.floor_s, 3), _ms(m.step_graphs_s, 3), _ms(m.step_eager_s, 3),
             f"{m.ratio:.2f}x"] for m in ms]
    gpu = ms[0].gpu if ms else "?"
    return f"floor grid on {gpu}\n" + table(["model", "context", "floor ms", "graphs ms", "eager ms", "ratio"], rows)


def plan_text(p: Plan) -> str:
    kv = kv_format(p.kv_format)
    scales = " + scales" if kv.scale_bytes_per_group else ""
    head = [
        f"plan: {p.model} | weights {p.weight_format} (LM head and embeddings {p.lm_head_format}) | "
        f"KV cache {p.kv_format}",
        f"parameters: {p.params_text}",
        f"weights: {p.weight_bytes / 1e9:.2f} GB resident",
        f"KV cache: {p.kv_bytes_per_token:,.0f} bytes per token ({p.kv_description} x {kv.element_bytes:g} B{scales})",
        f"allowance: {p.allowance_text}",
    ]
    at_max, at_4k = f"seqs @{p.model_max_context}", "seqs @4096"
    rows = []
    for g in p.gpus:
        ctx = f"{g.max_context} (model max)" if g.max_context_capped else str(g.max_context)
        rows.append([g.gpu, f"{g.memory_bytes / 1e9:.1f}", f"{g.kv_budget_bytes / 1e9:.1f}", g.fit,
                     ctx if g.fits else "-", g.seqs_at_max_context, g.seqs_at_4k, _ms(g.floor.floor_s, 3),
                     f"{g.floor.tokens_per_s:.1f}", g.gpus_needed])
    headers = ["GPU", "memory GB", "KV room GB", "fits", "max context (1 seq)", at_max, at_4k,
               f"floor ms @{p.floor_context}", "tokens/s", "GPUs needed"]
    foot = ["fits: yes = weights fit with room for a 4096-token sequence; tight = weights fit, less KV room "
            "than that; no = the weights and allowance exceed memory (the floor is shown anyway); "
            "GPUs needed: of that GPU, weights split evenly, for one 4096-token sequence (floor is per single GPU)"]
    foot += [f"note: {n}" for n in p.notes]
    return "\n".join(head + [table(headers, rows)] + foot)


def plot_series(path: str, series: dict[str, list[tuple[float, float]]], ylabel: str, title: str) -> None:
    """One line per series against context; written to a temporary file, then moved into place."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FloorlineError("--plot needs matplotlib: pip install 'floorline[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    contexts = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(contexts, [str(int(c)) for c in contexts])
    ax.minorticks_off()
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        plt.close(fig)
        raise FloorlineError(f"cannot write the plot: directory {directory} does not exist")
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
