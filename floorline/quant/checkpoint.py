"""`floorline quantize`: writes a quantized safetensors checkpoint that loads without re-quantizing.

The model is built with quantize-on-load, exactly as the engine would build it; then the source's
tensors are streamed again and every projection weight is replaced by what its QuantMethod exports
for that shard (`q_proj.qweight`, `q_proj.scales`, ...), named by the model's own checkpoint mapping.
int8 / int4 / fp8 use floorline's layout (`quantization_config.quant_method = "floorline"`); NF4 is
written as a bitsandbytes 4-bit checkpoint. The directory appears only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from floorline.config import ModelConfig
from floorline.errors import FloorlineError
from floorline.layers.linear import Linear
from floorline.quant.config import resolve_quantization
from floorline.weights.resolve import ModelSource, load_hf_config, resolve_model

SHARD_BYTES = 2 << 30
_SKIP_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quantize_checkpoint(model: str | None, quantization: str, output: str | Path, dtype: str = "auto",
                        device: str = "cpu", progress: bool | None = None, lm_head: str | None = None) -> Path:
    """Quantizes `model` to `output` (a new directory); returns its path. `lm_head`: the LM head's format."""
    from floorline.weights.loader import _weight_stream, load_model, load_model_config

    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FloorlineError(f"output {out} already exists and is not an empty directory; choose a new one")
    source = resolve_model(model)
    if not source.has_weights:
        raise FloorlineError(f"{source.name} is a shipped config without weights; quantize needs a checkpoint")
    hf_cfg = load_hf_config(source)
    if hf_cfg.get("quantization_config"):
        method = hf_cfg["quantization_config"].get("quant_method")
        raise FloorlineError(f"{source.name} is already quantized ({method})")
    dev = torch.device(device)
    quant = resolve_quantization(quantization, None, dev, lm_head=lm_head)
    if quant is None:
        raise FloorlineError("quantize needs --quantization (int8, int4, nf4, fp8)")
    if quant.lm_head and quant.format == "nf4":
        raise FloorlineError("--lm-head-quantization: NF4 checkpoints are written in the bitsandbytes format, which "
                             "keeps the LM head unquantized; drop the flag (int8, int4 and fp8 checkpoints take it)")
    cfg = load_model_config(source)
    save_dtype = _save_dtype(dtype, cfg)
    # built in the dtype it is saved in (quantized values do not depend on it; NF4's quant_state records it)
    built = load_model(source, cfg, save_dtype, dev, quantization=quantization, progress=progress,
                       lm_head_quantization=lm_head)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors, _ = _weight_stream(source)
        _write_shards(_exported(built, tensors, save_dtype), tmp)
        hf_cfg = dict(hf_cfg, torch_dtype=str(save_dtype).removeprefix("torch."),
                      quantization_config=quant.checkpoint_config())
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        _write_tokenizer(source, tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_dtype(dtype: str, cfg: ModelConfig) -> torch.dtype:
    """Unquantized tensors (embeddings, norms, LM head) are written in the checkpoint's float type."""
    name = cfg.dtype if dtype == "auto" else dtype
    name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    if name not in _DTYPES:
        if dtype != "auto":
            raise FloorlineError(f"unknown dtype {dtype!r}; accepted: auto, {', '.join(_DTYPES)}")
        name = "bfloat16"
    return _DTYPES[name]


def _exported(model: torch.nn.Module, tensors, save_dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the output checkpoint, in the source's order."""
    for name, t in tensors:
        module, shard, kind = model.checkpoint_target(name)
        export = getattr(getattr(module, "quant_method", None), "export_shard", None)
        if isinstance(module, Linear) and kind == "weight" and export is not None:
            base = name[: -len(".weight")]
            for suffix, part in export(module, shard).items():
                yield f"{base}.{suffix}", part
        else:
            yield name, t.to(save_dtype) if t.is_floating_point() else t


def _write_shards(items: Iterator[tuple[str, torch.Tensor]], out: Path) -> dict[str, str]:
    """Writes safetensors files of up to SHARD_BYTES (one file, or shards plus an index)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().to("cpu").contiguous().clone()  # own storage: no shared views
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return {name: "model.safetensors" for name in shards[0]}
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return weight_map


def _write_tokenizer(source: ModelSource, out: Path) -> None:
    """Copies an HF directory's tokenizer files; writes tokenizer.json + tokenizer_config.json for GGUF."""
    if source.kind == "hf_dir":
        for f in source.path.iterdir():
            if f.is_file() and not f.name.endswith(_SKIP_FILES) and f.name not in (
                    "config.json", "model.safetensors.index.json"):
                shutil.copy2(f, out / f.name)
        return
    from floorline.weights.loader import load_tokenizer

    tok = load_tokenizer(source)
    if tok is None:
        return
    tok.backend.save(str(out / "tokenizer.json"))
    info = tok.info
    cfg: dict = dict(info.named_tokens)
    cfg["add_bos_token"] = bool(info.prefix_ids)
    cfg["add_eos_token"] = bool(info.suffix_ids)
    if "default" in info.chat_templates:
        cfg["chat_template"] = info.chat_templates["default"]
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
