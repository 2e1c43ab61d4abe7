"""The analytic decode floor: bytes one step must read, over bandwidth; FLOPs over peak rate.

A decode step reads every weight it uses once (every linear layer, the norms, the LM head;
the input embedding table only when it is also the head) and every sequence's KV cache once.
Its time is at least max(bytes / bandwidth, FLOPs / peak rate); at batch 1 the bytes bind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from floorline.analysis.formats import WeightFormat, sixteen_bit
from floorline.analysis.formats import kv_format as get_kv_format
from floorline.analysis.formats import weight_format as get_weight_format
from floorline.analysis.gpus import GPUSpec, lookup_gpu
from floorline.analysis.shapes import ShapeSummary, as_shape
from floorline.config import ModelConfig
from floorline.errors import FloorlineError


@dataclass(frozen=True)
class FloorResult:
    """One decode step at the floor: what it reads, what it computes, which of the two binds."""

    model: str
    gpu: str
    context: int  # tokens already in each sequence's KV cache
    batch: int
    weight_format: str
    kv_format: str
    lm_head_format: str
    bandwidth: float  # bytes/s
    bandwidth_source: str  # "datasheet" | "measured" | "given"
    weight_bytes: float  # weights read per step
    kv_bytes: float  # KV cache read per step
    total_bytes: float
    memory_time_s: float
    flops: float  # per step
    compute_time_s: float | None  # None: the GPU's peak rate is unknown
    bound: str  # "memory" | "compute"
    floor_s: float
    tokens_per_s: float  # batch / floor

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["floor_ms"] = self.floor_s * 1e3
        return d


def resolve_head_format(fmt: WeightFormat, lm_head_format: str | None) -> WeightFormat:
    """The LM head (and embedding) format: as given; else the weight format for GGUF (llama.cpp
    quantizes output.weight), else 16-bit (AWQ, GPTQ, bitsandbytes and fp8 checkpoints keep it)."""
    if lm_head_format is not None:
        return get_weight_format(lm_head_format)
    return fmt if fmt.gguf else sixteen_bit()


def decode_floor(
    cfg: ModelConfig | ShapeSummary | dict[str, Any],
    gpu: GPUSpec | str,
    context: int,
    batch: int = 1,
    weight_format: str | WeightFormat = "bf16",
    kv_format: str = "bf16",
    bandwidth: float | None = None,
    lm_head_format: str | None = None,
    bandwidth_source: str | None = None,
) -> FloorResult:
    """The floor of one decode step of `batch` sequences, each with `context` cached tokens.

    `bandwidth` (bytes/s) overrides the GPU's datasheet figure (pass a measured one).
    FLOPs: 2 per matmul parameter per token, plus attention's QK^T and PV over the context.
    """
    shape = as_shape(cfg)
    spec = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    fmt = get_weight_format(weight_format) if isinstance(weight_format, str) else weight_format
    kv = get_kv_format(kv_format)
    head_fmt = resolve_head_format(fmt, lm_head_format)
    check_context(shape, context)
    if batch < 1:
        raise FloorlineError(f"batch must be at least 1, got {batch}")
    bw = bandwidth if bandwidth is not None else spec.bandwidth
    if not bw or bw <= 0 or bw != bw:
        raise FloorlineError(f"no memory bandwidth known for {spec.name}; pass one")
    source = bandwidth_source or ("given" if bandwidth is not None else "datasheet")
    # a sliding-window model attends to (and reads) at most the window
    attended = min(context, shape.sliding_window) if shape.sliding_window else context
    weight_bytes = shape.weight_bytes_read(fmt, head_fmt, batch)
    kv_bytes = batch * attended * shape.kv_bytes_per_token(kv)
    total = weight_bytes + kv_bytes
    memory_time = total / bw
    matmul_flops = 2 * shape.matmul_params_per_token() * batch
    attn_flops = shape.attn_flops_per_context_token * shape.num_layers * attended * batch
    mm_rate, attn_rate = spec.peak_rate(fmt.compute), spec.peak_rate("bf16")
    compute_time = matmul_flops / mm_rate + attn_flops / attn_rate if mm_rate and attn_rate else None
    bound = "compute" if compute_time is not None and compute_time > memory_time else "memory"
    floor = max(memory_time, compute_time or 0.0)
    return FloorResult(
        model=shape.name, gpu=spec.name, context=context, batch=batch, weight_format=fmt.name,
        kv_format=kv.name, lm_head_format=head_fmt.name, bandwidth=bw, bandwidth_source=source,
        weight_bytes=weight_bytes, kv_bytes=kv_bytes, total_bytes=total, memory_time_s=memory_time,
        flops=matmul_flops + attn_flops, compute_time_s=compute_time, bound=bound, floor_s=floor,
        tokens_per_s=batch / floor,
    )


def check_context(shape: ShapeSummary, context: int) -> None:
    if context < 1:
        raise FloorlineError(f"context must be at least 1 token, got {context}")
    if context > shape.max_position_embeddings:
        raise FloorlineError(f"context {context} exceeds {shape.name}'s maximum context of "
                             f"{shape.max_position_embeddings} tokens")
