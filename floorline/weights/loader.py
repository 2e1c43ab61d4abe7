"""Builds a model from a ModelSource: config, weights (streamed, with a progress bar) and tokenizer."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from floorline.config import ModelConfig
from floorline.errors import FloorlineError
from floorline.models.registry import build_model
from floorline.quant import quantization_context, resolve_quantization
from floorline.weights.dummy import init_dummy_weights
from floorline.weights.resolve import ModelSource, load_hf_config

LOAD_FORMATS = ("auto", "dummy")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def load_model_config(source: ModelSource) -> ModelConfig:
    return ModelConfig.from_hf_dict(load_hf_config(source), name=source.name)


def resolve_dtype(dtype: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """"auto": the checkpoint's half type on GPU (bf16 for fp32 checkpoints), float32 on CPU."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise FloorlineError(f"unknown dtype {dtype!r}; accepted: auto, {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if cfg.dtype in ("float16", "fp16") else torch.bfloat16


def load_model(
    source: ModelSource,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    max_positions: int | None = None,
    progress: bool | None = None,
    quantization: str | None = None,
    lm_head_quantization: str | None = None,
) -> torch.nn.Module:
    """Builds the model on `device` and fills its weights from the source (or randomly for "dummy").

    `quantization` (int8, int4, nf4, fp8, fp8-w8a8) quantizes float weights as they load; a checkpoint
    whose config.json has a `quantization_config` loads as it is stored (floorline.quant.config);
    `lm_head_quantization` quantizes the LM head on load too, to that format.
    """
    if load_format not in LOAD_FORMATS:
        raise FloorlineError(f"unknown load format {load_format!r}; accepted: {', '.join(LOAD_FORMATS)}")
    if load_format == "auto" and not source.has_weights:
        raise FloorlineError(
            f"{source.name} is a shipped config without weights: add --load-format dummy for random weights"
        )
    quant = resolve_quantization(quantization, _checkpoint_quantization(source), device, lm_head=lm_head_quantization)
    with torch.device(device), quantization_context(quant):
        model = build_model(cfg, dtype, device, max_positions=max_positions)
    if load_format == "dummy":
        init_dummy_weights(model)
    else:
        tensors, total = _weight_stream(source)
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(total=total, desc=f"loading {source.name}", unit="tensor", disable=not show, leave=False)
        model.load_weights(_to_device(tensors, device, bar))
        bar.close()
    for module in model.modules():  # layers that finish their own loading (quantized Linears check theirs)
        finish = getattr(module, "finish_loading", None)
        if callable(finish):
            finish()
    model.eval()
    return model


def _weight_stream(source: ModelSource) -> tuple[Iterable[tuple[str, torch.Tensor]], int]:
    if source.kind == "gguf":
        from floorline.weights.gguf_file import GGUFFile
        from floorline.weights.gguf_weights import iter_hf_weights

        gguf = GGUFFile(source.path)
        return iter_hf_weights(gguf, torch.float32), len(gguf.tensors)
    from floorline.weights.safetensors import count_tensors, iter_safetensors, safetensors_files

    files = safetensors_files(source.path)
    return iter_safetensors(files), count_tensors(files)


def _checkpoint_quantization(source: ModelSource) -> dict | None:
    """The checkpoint's `quantization_config` (config.json), if any."""
    if source.kind != "hf_dir":
        return None
    return load_hf_config(source).get("quantization_config") or None


def _to_device(tensors: Iterable[tuple[str, torch.Tensor]], device: torch.device,
               bar: tqdm) -> Iterator[tuple[str, torch.Tensor]]:
    """Moves each tensor on its way so host memory holds one tensor at a time. Tensors keep their
    checkpoint dtype (parameters cast as they copy): quantized checkpoints hold integer codes and fp16 /
    fp32 scales that a QuantMethod stores as they are."""
    for name, t in tensors:
        bar.update(1)
        yield name, t.to(device=device)


def load_tokenizer(source: ModelSource):
    """The source's tokenizer, or None for a shipped config (benchmarks feed token ids)."""
    from floorline.tokenizer import Tokenizer

    if source.kind == "gguf":
        from floorline.weights.gguf_file import GGUFFile

        return Tokenizer.from_gguf_metadata(GGUFFile(source.path).metadata)
    if source.kind == "hf_dir" and ((source.path / "tokenizer.json").is_file()):
        return Tokenizer.from_hf_dir(source.path)
    return None

