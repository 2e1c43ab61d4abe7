"""The memory planner: does a model fit a GPU, how much context and how many sequences, how fast.

Memory per GPU is split the way the engine splits it: the engine lets itself use
`gpu_memory_utilization` (0.90) of the card, the rest being held back for the CUDA context,
cuBLAS/Triton workspaces, CUDA-graph pools and fragmentation; inside that share go the
weights, the peak activations of one step, and the paged KV cache, which takes all that is left.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from floorline.analysis.floor import FloorResult, check_context, decode_floor, resolve_head_format
from floorline.analysis.formats import kv_format as get_kv_format
from floorline.analysis.formats import weight_format as get_weight_format
from floorline.analysis.gpus import GPUSpec, lookup_gpu
from floorline.analysis.shapes import ShapeSummary, as_shape
from floorline.config import ModelConfig

SHORT_CONTEXT = 4096


@dataclass(frozen=True)
class GPUPlan:
    """One model on one GPU."""

    gpu: str
    memory_bytes: float
    reserve_bytes: float  # held back: (1 - gpu_memory_utilization) of memory
    activation_bytes: float
    weight_bytes: float
    kv_budget_bytes: float  # left for the KV cache (negative: the weights do not fit)
    fit: str  # "yes" | "tight" (weights fit, not one sequence of 4k) | "no"
    max_context: int  # largest context one sequence can hold, capped at the model's maximum
    max_context_capped: bool  # True: the model's maximum, not memory, is the limit
    seqs_at_max_context: int  # sequences of the model's full context held at once
    seqs_at_4k: int | None  # sequences of 4096 tokens (None: the model's context is shorter)
    gpus_needed: int  # of this GPU, weights split evenly (tensor parallel), for one 4k sequence
    floor: FloorResult

    @property
    def fits(self) -> bool:
        return self.fit != "no"


@dataclass(frozen=True)
class Plan:
    """A model in one weight and KV format, planned on several GPUs."""

    model: str
    weight_format: str
    kv_format: str
    lm_head_format: str
    total_params: int
    params_read_per_token: int
    weight_bytes: float  # resident: every weight, all experts
    kv_bytes_per_token: float
    kv_description: str
    model_max_context: int
    floor_context: int
    batch: int
    activation_bytes: float
    params_text: str  # the parameter story in words (MoE: resident vs read per token)
    allowance_text: str
    notes: tuple[str, ...]
    gpus: tuple[GPUPlan, ...]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for g, gp in zip(d["gpus"], self.gpus):
            g["fits"] = gp.fits
            g["floor"]["floor_ms"] = gp.floor.floor_s * 1e3
        return d


def activation_bytes(shape: ShapeSummary, max_num_batched_tokens: int = 2048, max_num_seqs: int = 64) -> float:
    """Peak activation memory of one engine step, estimated from the shapes.

    The largest step is a prefill chunk of `max_num_batched_tokens` tokens: about four
    hidden-sized bf16 buffers live at once (residual, normed input, attention in/out) plus the
    MLP's gate/up output and its activation (3 x the widest intermediate, all of a token's
    experts for MoE); then fp32 logits and probabilities for up to `max_num_seqs` sequences.
    """
    per_token = (4 * shape.hidden_size + 3 * shape.mlp_width) * 2
    return max_num_batched_tokens * per_token + max_num_seqs * shape.vocab_size * 4 * 2


def plan(
    cfg: ModelConfig | ShapeSummary | dict[str, Any],
    gpus: list[GPUSpec | str],
    weight_format: str = "bf16",
    kv_format: str = "bf16",
    context: int | None = None,
    batch: int = 1,
    lm_head_format: str | None = None,
    gpu_memory_utilization: float = 0.90,
    max_num_batched_tokens: int = 2048,
    max_num_seqs: int = 64,
    block_size: int = 16,
) -> Plan:
    """Plans `cfg` on each GPU; the floor is taken at `context` (default: 4096, or the model's maximum)."""
    shape = as_shape(cfg)
    fmt = get_weight_format(weight_format)
    kv = get_kv_format(kv_format)
    head_fmt = resolve_head_format(fmt, lm_head_format)
    specs = [lookup_gpu(g) if isinstance(g, str) else g for g in gpus]
    max_ctx = shape.max_position_embeddings
    floor_ctx = context if context is not None else min(SHORT_CONTEXT, max_ctx)
    check_context(shape, floor_ctx)
    weights = shape.resident_weight_bytes(fmt, head_fmt)
    per_token = shape.kv_bytes_per_token(kv)
    acts = activation_bytes(shape, max_num_batched_tokens, max_num_seqs)
    gpu_plans = []
    for spec in specs:
        reserve = (1 - gpu_memory_utilization) * spec.memory_bytes
        budget = spec.memory_bytes - reserve - weights - acts
        num_blocks = int(budget // (per_token * block_size)) if budget > 0 else 0
        tokens = num_blocks * block_size

        def seqs(ctx: int) -> int:
            return num_blocks // -(-ctx // block_size)

        need = min(SHORT_CONTEXT, max_ctx)
        fit = "no" if budget <= 0 else ("yes" if tokens >= need else "tight")
        # n GPUs share the weights and KV; each still needs its own allowance
        per_gpu_room = spec.memory_bytes * gpu_memory_utilization - acts
        gpus_needed = max(1, math.ceil((weights + need * per_token) / per_gpu_room)) if per_gpu_room > 0 else 0
        gpu_plans.append(GPUPlan(
            gpu=spec.name, memory_bytes=spec.memory_bytes, reserve_bytes=reserve, activation_bytes=acts,
            weight_bytes=weights, kv_budget_bytes=budget, fit=fit, max_context=min(tokens, max_ctx),
            max_context_capped=tokens >= max_ctx, seqs_at_max_context=seqs(max_ctx),
            seqs_at_4k=seqs(SHORT_CONTEXT) if max_ctx >= SHORT_CONTEXT else None, gpus_needed=gpus_needed,
            floor=decode_floor(shape, spec, floor_ctx, batch, fmt, kv.name, lm_head_format=head_fmt.name),
        ))
    allowance = (f"{(1 - gpu_memory_utilization) * 100:.0f}% of memory held back (CUDA context, workspaces, "
                 f"graph pools, fragmentation) + {acts / 1e9:.2f} GB peak activations "
                 f"({max_num_batched_tokens}-token prefill chunk, logits for {max_num_seqs} sequences)")
    return Plan(
        model=shape.name, weight_format=fmt.name, kv_format=kv.name, lm_head_format=head_fmt.name,
        total_params=shape.total_params(), params_read_per_token=shape.params_read_per_token(),
        weight_bytes=weights, kv_bytes_per_token=per_token, kv_description=shape.kv_description,
        model_max_context=max_ctx, floor_context=floor_ctx, batch=batch, activation_bytes=acts,
        params_text=params_text(shape), allowance_text=allowance, notes=shape.notes, gpus=tuple(gpu_plans),
    )


def params_text(shape: ShapeSummary) -> str:
    """The parameter count in words; for MoE, what stays resident against what each token reads."""
    total, read = shape.total_params(), shape.params_read_per_token()
    if not shape.is_moe:
        return (f"{format_params(total)} parameters; each token reads {format_params(read)} "
                f"(the input embedding is looked up, not read)")
    shared = f" + {shape.num_shared_experts} shared" if shape.num_shared_experts else ""
    return (f"all {shape.num_experts} experts stay resident: memory for {format_params(total)} parameters; "
            f"each token reads {format_params(read)} ({shape.num_experts_per_tok} of {shape.num_experts} "
            f"routed experts{shared} in each of {shape.num_moe_layers} MoE layers of {shape.num_layers})")


def format_params(n: float) -> str:
    """671026419200 -> '671B', 36625618432 -> '37B', 8030261248 -> '8.03B', 135e6 -> '135M'."""
    if n >= 10e9:
        return f"{n / 1e9:.0f}B"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.0f}M"
