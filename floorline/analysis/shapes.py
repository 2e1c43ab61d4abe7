"""ShapeSummary: the weight matrices, KV layout and MoE routing of a model, from config.json alone.

Read straight from the HF config dict (not ModelConfig), so the planner can size models that
floorline cannot run yet: Mixtral, Qwen-MoE, DeepSeek-V2/V3 (MLA attention, routed experts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from floorline.analysis.formats import KVFormat, WeightFormat, sixteen_bit
from floorline.config import ModelConfig
from floorline.errors import FloorlineError


@dataclass(frozen=True)
class Matrix:
    """`count` weight matrices of [rows = output features, cols = input features] in the model."""

    name: str
    rows: int
    cols: int
    count: int
    kind: str = "linear"  # "linear" | "expert" | "router" | "embed" | "head"

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.count


@dataclass(frozen=True)
class ShapeSummary:
    """What the floor and the planner need to know about a model's shape."""

    name: str
    model_type: str
    hidden_size: int
    vocab_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    matrices: tuple[Matrix, ...]
    vector_params: int  # norms and biases: kept in 16 bits, read every step
    tie_word_embeddings: bool
    kv_elements_per_layer: int  # per token (GQA: 2 x kv_heads x head_dim)
    kv_scale_groups_per_layer: int  # per token: heads of K and V that carry their own scale
    attn_flops_per_context_token: int  # per layer, per query token, per cached token
    kv_description: str
    mlp_width: int  # widest MLP intermediate one token passes through in a layer (all experts it uses)
    sliding_window: int | None = None
    num_experts: int = 0  # routed experts per MoE layer (0: dense model)
    num_experts_per_tok: int = 0
    num_shared_experts: int = 0
    num_moe_layers: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def experts_read(self, batch: int = 1) -> float:
        """Distinct routed experts one MoE layer reads in a step of `batch` tokens.

        Assumes uniform, independent routing: each expert is missed by one token with
        probability 1 - k/E, so E * (1 - (1 - k/E)^batch) experts are read; k at batch 1.
        """
        e, k = self.num_experts, self.num_experts_per_tok
        if e == 0:
            return 0.0
        return e * (1 - (1 - k / e) ** batch)

    def _read_count(self, m: Matrix, batch: int) -> float:
        if m.kind == "expert":
            return m.count * self.experts_read(batch) / self.num_experts
        if m.kind == "embed":
            # the input embedding reads one row per token; a tied head reads it all
            return m.count if self.tie_word_embeddings else 0
        return m.count

    def total_params(self) -> int:
        return sum(m.params for m in self.matrices) + self.vector_params

    def params_read_per_token(self) -> int:
        """Parameters one token's decode step reads: all but the input embedding, k experts per layer."""
        return round(sum(m.rows * m.cols * self._read_count(m, 1) for m in self.matrices)) + self.vector_params

    def matmul_params_per_token(self) -> int:
        """Parameters that one token multiplies by (2 FLOPs each): its share of the matrices."""
        return round(sum(m.rows * m.cols * self._read_count(m, 1) for m in self.matrices))

    def resident_weight_bytes(self, fmt: WeightFormat, head_fmt: WeightFormat) -> float:
        """Bytes of every weight held in memory (all experts, embeddings, LM head)."""
        return sum(m.count * _format_of(m, fmt, head_fmt).matrix_bytes(m.rows, m.cols)
                   for m in self.matrices) + 2 * self.vector_params

    def weight_bytes_read(self, fmt: WeightFormat, head_fmt: WeightFormat, batch: int = 1) -> float:
        """Bytes of weights one decode step of `batch` sequences reads."""
        return sum(self._read_count(m, batch) * _format_of(m, fmt, head_fmt).matrix_bytes(m.rows, m.cols)
                   for m in self.matrices) + 2 * self.vector_params

    def kv_bytes_per_token(self, kv: KVFormat) -> float:
        """KV-cache bytes one token holds, over all layers."""
        return self.num_layers * kv.bytes_per_token_layer(self.kv_elements_per_layer, self.kv_scale_groups_per_layer)


def _format_of(m: Matrix, fmt: WeightFormat, head_fmt: WeightFormat) -> WeightFormat:
    if m.kind in ("linear", "expert"):
        return fmt
    if m.kind in ("embed", "head"):
        return head_fmt
    return sixteen_bit()  # routers: tiny, and quantizers leave them alone


def as_shape(model: ModelConfig | ShapeSummary | dict[str, Any], name: str = "") -> ShapeSummary:
    if isinstance(model, ShapeSummary):
        return model
    if isinstance(model, ModelConfig):
        return summarize_model_config(model)
    return summarize_hf_config(model, name)


def summarize_model_config(cfg: ModelConfig) -> ShapeSummary:
    """A ModelConfig (the Llama family floorline runs) as a ShapeSummary."""
    h = cfg.hidden_size
    attn, vec = _gqa_attention(h, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers,
                               cfg.qkv_bias, cfg.o_bias, cfg.qk_norm)
    mlp = _mlp("mlp", h, cfg.intermediate_size, cfg.num_layers)
    vec += cfg.num_layers * ((2 * cfg.intermediate_size + h) if cfg.mlp_bias else 0)
    return _assemble(cfg.name or cfg.architecture, "llama", h, cfg.vocab_size, cfg.num_layers, cfg.num_heads,
                     cfg.max_position_embeddings, cfg.tie_word_embeddings, attn + mlp, vec,
                     _gqa_kv(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.num_heads),
                     mlp_width=cfg.intermediate_size, sliding_window=cfg.sliding_window)


def summarize_hf_config(cfg: dict[str, Any], name: str = "") -> ShapeSummary:
    """Reads a config.json dict of a dense, MoE or MLA decoder; raises FloorlineError on missing shapes."""
    cfg = cfg.get("text_config", cfg) if "hidden_size" not in cfg else cfg
    try:
        return _summarize(cfg, name or str(cfg.get("_name_or_path") or cfg.get("model_type") or "model"))
    except KeyError as e:
        raise FloorlineError(f"config of {name or 'the model'} lacks {e.args[0]!r}; cannot size it") from None


def _summarize(cfg: dict[str, Any], name: str) -> ShapeSummary:
    model_type = str(cfg.get("model_type", ""))
    h, num_layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    notes: list[str] = []
    vec = 0
    if cfg.get("kv_lora_rank"):
        mats, vec, kv = _mla_attention(cfg, h, heads, num_layers)
    else:
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or h // heads)
        bias = bool(cfg.get("attention_bias", False))
        qwen2 = model_type.startswith("qwen2")
        mats, vec = _gqa_attention(h, heads, kv_heads, head_dim, num_layers, qkv_bias=qwen2 or bias,
                                   o_bias=bias and not qwen2, qk_norm=model_type.startswith("qwen3"))
        kv = _gqa_kv(num_layers, kv_heads, head_dim, heads)
    num_experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0)
    moe_layers = [i for i in range(num_layers) if num_experts and _is_moe_layer(cfg, i)]
    num_dense = num_layers - len(moe_layers)
    dense_i = int(cfg.get("intermediate_size") or 0)
    mats += _mlp("mlp", h, dense_i, num_dense)
    mlp_width = dense_i if num_dense else 0
    num_shared = 0
    if moe_layers:
        n_moe = len(moe_layers)
        expert_i = int(cfg.get("moe_intermediate_size") or dense_i)
        mats += [Matrix(f"experts.{p}", r, c, n_moe * num_experts, "expert")
                 for p, r, c in (("gate", expert_i, h), ("up", expert_i, h), ("down", h, expert_i))]
        mats.append(Matrix("router", num_experts, h, n_moe, "router"))
        shared_i = int(cfg.get("n_shared_experts") or 0) * expert_i
        num_shared = int(cfg.get("n_shared_experts") or 0)
        if cfg.get("shared_expert_intermediate_size"):  # Qwen2-MoE: one shared expert with a sigmoid gate
            shared_i, num_shared = int(cfg["shared_expert_intermediate_size"]), 1
            mats.append(Matrix("shared_expert_gate", 1, h, n_moe, "router"))
        if shared_i:
            mats += _mlp("shared_experts", h, shared_i, n_moe)
        if model_type == "deepseek_v3":
            vec += n_moe * num_experts  # e_score_correction_bias
        mlp_width = max(mlp_width, top_k * expert_i + shared_i)
    if int(cfg.get("num_nextn_predict_layers") or 0):
        notes.append("the multi-token-prediction layer is not counted (not part of the main model)")
    sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window", not model_type.startswith("qwen")) else None
    return _assemble(name, model_type, h, int(cfg["vocab_size"]), num_layers, heads,
                     int(cfg.get("max_position_embeddings") or 4096), bool(cfg.get("tie_word_embeddings", False)),
                     mats, vec, kv, mlp_width=mlp_width, sliding_window=int(sliding) if sliding else None,
                     num_experts=num_experts if moe_layers else 0, num_experts_per_tok=top_k if moe_layers else 0,
                     num_shared_experts=num_shared, num_moe_layers=len(moe_layers), notes=tuple(notes))


def _is_moe_layer(cfg: dict[str, Any], i: int) -> bool:
    """DeepSeek: dense for the first `first_k_dense_replace` layers; Qwen-MoE: `decoder_sparse_step`,
    `mlp_only_layers`; Mixtral: every layer."""
    if i < int(cfg.get("first_k_dense_replace") or 0):
        return False
    if i % int(cfg.get("moe_layer_freq") or 1):
        return False
    if (i + 1) % int(cfg.get("decoder_sparse_step") or 1):
        return False
    return i not in (cfg.get("mlp_only_layers") or [])


def _gqa_attention(h: int, heads: int, kv_heads: int, head_dim: int, num_layers: int, qkv_bias: bool,
                   o_bias: bool, qk_norm: bool) -> tuple[list[Matrix], int]:
    q, kv = heads * head_dim, kv_heads * head_dim
    mats = [Matrix("q_proj", q, h, num_layers), Matrix("k_proj", kv, h, num_layers),
            Matrix("v_proj", kv, h, num_layers), Matrix("o_proj", h, q, num_layers)]
    per_layer = 2 * h  # input and post-attention RMSNorm
    per_layer += (q + 2 * kv) if qkv_bias else 0
    per_layer += h if o_bias else 0
    per_layer += 2 * head_dim if qk_norm else 0
    return mats, num_layers * per_layer


def _gqa_kv(num_layers: int, kv_heads: int, head_dim: int, heads: int) -> tuple[int, int, int, str]:
    # QK^T and PV: 2 FLOPs per multiply-add, head_dim each, per query head
    return (2 * kv_heads * head_dim, 2 * kv_heads, 4 * heads * head_dim,
            f"{num_layers} layers x 2 (K, V) x {kv_heads} KV heads x {head_dim}")


def _mla_attention(cfg: dict[str, Any], h: int, heads: int, num_layers: int) -> tuple[list[Matrix], int, tuple]:
    """Multi-head latent attention (DeepSeek-V2/V3).

    MLA caches, per token and layer, one compressed latent of `kv_lora_rank` (K and V are both
    up-projected from it) plus one shared RoPE key of `qk_rope_head_dim`: 512 + 64 = 576
    elements for V3, against 2 x 128 heads x 128 = 32768 for plain multi-head attention of the
    same width. Decode multiplies queries into the latent space (absorbing kv_b_proj), so
    attention reads the latent once for all 128 heads and does 2 x heads x (latent + rope)
    FLOPs for scores plus 2 x heads x latent for the weighted sum, per cached token.
    """
    q_rank, kv_rank = int(cfg.get("q_lora_rank") or 0), int(cfg["kv_lora_rank"])
    nope, rope, v = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"])
    L = num_layers
    mats = []
    vec = L * (2 * h + kv_rank)  # two RMSNorms + kv_a_layernorm
    if q_rank:
        mats += [Matrix("q_a_proj", q_rank, h, L), Matrix("q_b_proj", heads * (nope + rope), q_rank, L)]
        vec += L * q_rank  # q_a_layernorm
    else:
        mats.append(Matrix("q_proj", heads * (nope + rope), h, L))
    mats += [Matrix("kv_a_proj_with_mqa", kv_rank + rope, h, L),
             Matrix("kv_b_proj", heads * (nope + v), kv_rank, L), Matrix("o_proj", h, heads * v, L)]
    kv = (kv_rank + rope, 1, 2 * heads * (2 * kv_rank + rope),
          f"{L} layers x ({kv_rank} latent + {rope} RoPE key), shared by K and V (MLA)")
    return mats, vec, kv


def _mlp(prefix: str, h: int, inter: int, count: int) -> list[Matrix]:
    if not count or not inter:
        return []
    return [Matrix(f"{prefix}.gate", inter, h, count), Matrix(f"{prefix}.up", inter, h, count),
            Matrix(f"{prefix}.down", h, inter, count)]


def _assemble(name: str, model_type: str, h: int, vocab: int, num_layers: int, heads: int, max_pos: int,
              tied: bool, mats: list[Matrix], vec: int, kv: tuple[int, int, int, str], **extra: Any) -> ShapeSummary:
    mats = list(mats) + [Matrix("embed_tokens", vocab, h, 1, "embed")]
    if not tied:
        mats.append(Matrix("lm_head", vocab, h, 1, "head"))
    vec += h  # final norm
    kv_elems, kv_groups, attn_flops, kv_desc = kv
    return ShapeSummary(name=name, model_type=model_type, hidden_size=h, vocab_size=vocab, num_layers=num_layers,
                        num_heads=heads, max_position_embeddings=max_pos, matrices=tuple(mats), vector_params=vec,
                        tie_word_embeddings=tied, kv_elements_per_layer=kv_elems, kv_scale_groups_per_layer=kv_groups,
                        attn_flops_per_context_token=attn_flops, kv_description=kv_desc, **extra)
