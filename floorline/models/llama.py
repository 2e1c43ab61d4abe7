"""The Llama family in one file: Llama 2/3.x, Mistral, Qwen2/2.5 (QKV bias), Qwen3 (q/k norm), SmolLM2."""

from __future__ import annotations

from typing import Iterable

import torch

from floorline.config import ModelConfig
from floorline.errors import WeightMismatchError
from floorline.kernels.rotary import rotary_cos_sin_cache
from floorline.layers.attention import Attention
from floorline.layers.embedding import Embedding, LMHead
from floorline.layers.linear import Linear
from floorline.layers.norm import NormedInput, RMSNorm, Stream

# HF checkpoint name (within a layer) -> (merged module, shard index).
_MERGED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
# Checkpoint tensors that carry nothing the model needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class LlamaAttention(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, cos_sin: torch.Tensor, dtype: torch.dtype, device, prefix: str):
        super().__init__()
        self.cfg = cfg
        self.qkv_proj = Linear(cfg.hidden_size, [cfg.q_size, cfg.kv_size, cfg.kv_size], cfg.qkv_bias,
                               dtype, device, prefix=f"{prefix}.qkv_proj")
        self.o_proj = Linear(cfg.q_size, [cfg.hidden_size], cfg.o_bias, dtype, device, prefix=f"{prefix}.o_proj")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, device)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, device)
        self.attn = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cos_sin)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor | NormedInput,
                residual: torch.Tensor, next_norm_weight: torch.Tensor | None = None) -> Stream:
        cfg = self.cfg
        qkv = self.qkv_proj(hidden)  # [n, q + 2 kv]
        q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        n = qkv.shape[0]
        q = q.reshape(n, cfg.num_heads, cfg.head_dim)
        k = k.reshape(n, cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(n, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # q, k, v stay strided views of qkv (no copies): rotary runs in place on them
        return self.o_proj.forward_add(self.attn(q, k, v, positions), residual, next_norm_weight=next_norm_weight)


class LlamaMLP(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device, prefix: str):
        super().__init__()
        i = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, [i, i], cfg.mlp_bias, dtype, device, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = Linear(i, [cfg.hidden_size], cfg.mlp_bias, dtype, device, prefix=f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor | NormedInput, residual: torch.Tensor,
                next_norm_weight: torch.Tensor | None = None) -> Stream:
        # the activation is fused into the down GEMV's loads, the residual add into its epilogue
        return self.down_proj.forward_add(self.gate_up_proj(x), residual, silu_mul=True,
                                          next_norm_weight=next_norm_weight)


class LlamaDecoderLayer(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, cos_sin: torch.Tensor, dtype: torch.dtype, device, prefix: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.self_attn = LlamaAttention(cfg, cos_sin, dtype, device, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.mlp = LlamaMLP(cfg, dtype, device, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, stream: Stream, next_norm_weight: torch.Tensor | None = None) -> Stream:
        """`next_norm_weight`: the next layer's input norm, which the last GEMV may apply as it stores."""
        hidden, residual = self.input_layernorm.norm_stream(stream)
        stream = self.self_attn(positions, hidden, residual, self.post_attention_layernorm.weight)
        hidden, residual = self.post_attention_layernorm.norm_stream(stream)
        return self.mlp(hidden, residual, next_norm_weight)


class LlamaForCausalLM(torch.nn.Module):
    """forward(input_ids [n], positions [n]) -> hidden [n, h]; compute_logits(hidden) -> [n, vocab] fp32."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 max_positions: int | None = None):
        super().__init__()
        self.config = cfg
        max_pos = max_positions or cfg.max_position_embeddings
        cos_sin = rotary_cos_sin_cache(cfg.head_dim, max_pos, cfg.rope_theta, cfg.rope_scaling).to(device)
        self.register_buffer("cos_sin_cache", cos_sin, persistent=False)  # [max_pos, head_dim] fp32
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype, device)
        self.layers = torch.nn.ModuleList(
            LlamaDecoderLayer(cfg, cos_sin, dtype, device, f"model.layers.{i}") for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        tied = self.embed_tokens if cfg.tie_word_embeddings else None
        self.lm_head = LMHead(cfg.vocab_size, cfg.hidden_size, dtype, device, tied_to=tied)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.layers]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        stream = Stream(delta=self.embed_tokens(input_ids))  # [n, h]
        next_norms = [layer.input_layernorm.weight for layer in self.layers[1:]] + [None]
        for layer, next_norm_weight in zip(self.layers, next_norms):
            stream = layer(positions, stream, next_norm_weight)
        hidden, _ = self.norm.norm_stream(stream)
        return hidden.materialize() if isinstance(hidden, NormedInput) else hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # ---- weights -------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads HF-named tensors; raises WeightMismatchError on missing, unexpected or misshaped ones."""
        expected, optional = self._expected_checkpoint_names()
        seen: set[str] = set()
        unexpected: list[str] = []
        for name, tensor in weights:
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # some tied checkpoints still store a copy
            if name not in expected and name not in optional:
                unexpected.append(name)
                continue
            self._load_one(name, tensor)
            seen.add(name)
        if unexpected:
            raise WeightMismatchError(
                f"checkpoint has {len(unexpected)} tensor(s) this {self.config.architecture} config does not "
                f"expect, e.g. {', '.join(sorted(unexpected)[:3])}"
            )
        missing = sorted(expected - seen)
        if missing:
            raise WeightMismatchError(
                f"checkpoint lacks {len(missing)} tensor(s) the config needs, e.g. {', '.join(missing[:3])}"
            )

    def _linear_names(self, layer_idx: int, local: str, optional: set[str]) -> set[str]:
        """Checkpoint names of projection `local` (e.g. "self_attn.q_proj"): its Linear's QuantMethod
        says which tensors a shard has ("weight", or e.g. AWQ's "qweight", "qzeros", "scales")."""
        target, _ = _MERGED.get(local, (local, 0))
        linear = self.layers[layer_idx].get_submodule(target)
        base = f"model.layers.{layer_idx}.{local}"
        optional |= {f"{base}.{s}" for s in linear.optional_weight_names()}
        return {f"{base}.{s}" for s in linear.weight_names()}

    def _expected_checkpoint_names(self) -> tuple[set[str], set[str]]:
        """(names the checkpoint must have, names it may have)."""
        cfg = self.config
        optional: set[str] = set()
        names = {"model.embed_tokens.weight", "model.norm.weight"}
        if not cfg.tie_word_embeddings:
            head = self.lm_head.load_target()
            if isinstance(head, Linear):  # a quantized head: its method's parts (e.g. qweight, scales)
                names |= {f"lm_head.{s}" for s in head.weight_names()}
                optional |= {f"lm_head.{s}" for s in head.optional_weight_names()}
            else:
                names.add("lm_head.weight")
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}"
            names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names |= self._linear_names(i, f"self_attn.{proj}", optional)
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names |= self._linear_names(i, f"mlp.{proj}", optional)
                if cfg.mlp_bias:
                    names.add(f"{p}.mlp.{proj}.bias")
            if cfg.qkv_bias:
                names |= {f"{p}.self_attn.{x}_proj.bias" for x in "qkv"}
            if cfg.o_bias:
                names.add(f"{p}.self_attn.o_proj.bias")
            if cfg.qk_norm:
                names |= {f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"}
        return names, optional

    def checkpoint_target(self, name: str) -> tuple[torch.nn.Module, int, str]:
        """(module, shard, tensor kind) that checkpoint tensor `name` loads into.

        The kind is what follows the module's name: "weight", "bias", or a quantized checkpoint's
        parts such as "qweight" or bitsandbytes' "weight.absmax".
        """
        if name.startswith("model.layers."):
            _, _, idx, local = name.split(".", 3)
            layer = self.layers[int(idx)]
            parts = local.split(".")
            for cut in range(len(parts) - 1, 0, -1):  # the longest prefix that names a module
                path = ".".join(parts[:cut])
                target, shard = _MERGED.get(path, (path, 0))
                try:
                    return layer.get_submodule(target), shard, ".".join(parts[cut:])
                except AttributeError:
                    continue
            raise WeightMismatchError(f"{name} names no module of the model")
        if name.startswith("lm_head."):
            return self.lm_head.load_target(), 0, name[len("lm_head."):]
        module_path, kind = name.rsplit(".", 1)
        module = {"model.embed_tokens": self.embed_tokens, "model.norm": self.norm}[module_path]
        return module, 0, kind

    def _load_one(self, name: str, tensor: torch.Tensor) -> None:
        module, shard, kind = self.checkpoint_target(name)
        if isinstance(module, Linear):
            module.load(shard, kind, tensor)
            return
        param = getattr(module, kind)
        if tuple(param.shape) != tuple(tensor.shape):
            raise WeightMismatchError(f"{name} has shape {tuple(tensor.shape)}, the config expects {tuple(param.shape)}")
        param.data.copy_(tensor)
