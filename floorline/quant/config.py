"""Which quantization a model gets: from `--quantization` (quantize on load) or the checkpoint's
`quantization_config` (AWQ, GPTQ, bitsandbytes NF4, or floorline's own), and the per-layer methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from floorline.errors import FloorlineError, UnsupportedModelError
from floorline.quant.base import QuantMethod

# --quantization values that quantize a float checkpoint while it loads
ON_LOAD = ("int8", "int4", "nf4", "fp8", "fp8-w8a8")
CHECKPOINT_FORMATS = ("awq (4-bit, GEMM packing)", "gptq (4-bit, desc_act=false)",
                      "bitsandbytes (load_in_4bit, nf4)", "floorline (written by `floorline quantize`)")
FLOORLINE_METHOD = "floorline"
HEAD_FORMATS = ("int8", "int4", "nf4", "fp8")  # --lm-head-quantization (an fp8 head is weight-only)


@dataclass(frozen=True)
class QuantConfig:
    """One model's quantization; `method_for` gives each Linear its QuantMethod."""

    format: str  # "int8" | "int4" | "nf4" | "fp8": the stored weights
    source: str  # "quantize" (on load) | "floorline" | "awq" | "gptq" | "bnb"
    group_size: int = 128  # int4
    zero_offset: int = 0  # int4 from GPTQ v1: stored zeros are zero - 1
    nested: bool = True  # nf4 double quantization
    w8a8: bool = False  # fp8: prefill on FP8 tensor cores (Hopper)
    skip_modules: tuple[str, ...] = ()  # layers the checkpoint left unquantized
    lm_head: str | None = None  # the LM head's format (`--lm-head-quantization`), None: 16-bit

    @property
    def label(self) -> str:
        if self.format == "fp8" and self.w8a8:
            base = "fp8-w8a8"
        else:
            base = self.format
        if self.lm_head:
            base += f" (LM head {self.lm_head})"
        return base if self.source in ("quantize", "floorline") else f"{base} ({self.source})"

    def accepts(self, requested: str) -> bool:
        """Whether `--quantization requested` agrees with this pre-quantized checkpoint."""
        names = {self.format, self.source, self.label}
        if self.source == "bnb":
            names |= {"bitsandbytes", "bnb-4bit", "bnb-nf4"}
        if self.format == "fp8":
            names.add("fp8-w8a8")
        return requested.lower() in names

    def method_for(self, prefix: str) -> QuantMethod | None:
        if _skipped(prefix, self.skip_modules):
            return None
        pre = self.source != "quantize"
        if self.format == "int8":
            from floorline.quant.int8 import Int8Method

            return Int8Method(prequantized=pre)
        if self.format == "fp8":
            from floorline.quant.fp8 import Fp8Method

            return Fp8Method(prequantized=pre, w8a8=self.w8a8)
        if self.format == "nf4":
            from floorline.quant.nf4 import Nf4Method

            return Nf4Method(prequantized=pre, nested=self.nested)
        from floorline.quant.int4 import Int4Method

        source = {"quantize": "rtn"}.get(self.source, self.source)
        return Int4Method(source=source, group_size=self.group_size, zero_offset=self.zero_offset)

    def lm_head_method(self) -> QuantMethod | None:
        """The LM head's QuantMethod, or None where it stays 16-bit."""
        if self.lm_head is None:
            return None
        source = "quantize" if self.source == "quantize" else FLOORLINE_METHOD
        return QuantConfig(self.lm_head, source, group_size=self.group_size).method_for("lm_head")

    def checkpoint_config(self) -> dict[str, Any]:
        """The `quantization_config` of a checkpoint written by `floorline quantize` (NF4: bitsandbytes')."""
        if self.format == "nf4":
            return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                    "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": self.nested,
                    "bnb_4bit_quant_storage": "uint8", "bnb_4bit_compute_dtype": "bfloat16"}
        cfg: dict[str, Any] = {"quant_method": FLOORLINE_METHOD, "format": self.format}
        if self.format == "int4":
            cfg["group_size"] = self.group_size
        if self.lm_head:
            cfg["lm_head"] = self.lm_head
        return cfg


def _skipped(prefix: str, skip: tuple[str, ...]) -> bool:
    dotted = f".{prefix}."
    return any(s and f".{s.strip('.')}." in dotted for s in skip)


def resolve_quantization(requested: str | None, hf_quant: dict[str, Any] | None,
                         device: torch.device, lm_head: str | None = None) -> QuantConfig | None:
    """The model's QuantConfig, or None for plain weights. Raises a clear error for what is unsupported.

    `lm_head` (`--lm-head-quantization`): the format the LM head is quantized to on load (None: 16-bit)."""
    if requested is not None and requested.lower() in ("none", ""):
        requested = None
    head = (lm_head or "none").lower()
    if head not in ("none", *HEAD_FORMATS):
        raise FloorlineError(f"unknown LM head quantization {lm_head!r}; accepted: none, {', '.join(HEAD_FORMATS)}")
    lm_head = None if head == "none" else head
    if hf_quant:
        cfg = from_checkpoint(hf_quant, device, requested)
        if requested is not None and not cfg.accepts(requested):
            raise FloorlineError(f"the checkpoint is already quantized ({cfg.label}); drop --quantization "
                                 f"{requested} (or pass --quantization {cfg.format})")
        if lm_head is not None and lm_head != cfg.lm_head:
            raise FloorlineError(f"--lm-head-quantization {lm_head}: this checkpoint ({cfg.label}) is already "
                                 "quantized and its LM head is stored as it is; drop the flag, or quantize a float "
                                 "checkpoint (--quantization ... --lm-head-quantization ...)")
        return cfg
    if requested is None:
        if lm_head is not None:
            raise FloorlineError(f"--lm-head-quantization needs --quantization (one of {', '.join(ON_LOAD)}): it "
                                 "sets the LM head's format when the other weights are quantized on load")
        return None
    key = requested.lower()
    if key not in ON_LOAD:
        raise FloorlineError(f"unknown quantization {requested!r}; accepted: none, {', '.join(ON_LOAD)} "
                             f"(and pre-quantized checkpoints: {', '.join(CHECKPOINT_FORMATS)})")
    if key.startswith("fp8"):
        return QuantConfig("fp8", "quantize", w8a8=_fp8_w8a8(key, device), lm_head=lm_head)
    return QuantConfig(key, "quantize", lm_head=lm_head)


def _fp8_w8a8(requested: str | None, device: torch.device) -> bool:
    """fp8-w8a8 insists on FP8 tensor cores; plain fp8 uses them where they exist."""
    from floorline.quant.fp8 import require_w8a8, w8a8_supported

    if requested is not None and requested.lower() == "fp8-w8a8":
        require_w8a8(device)
        return True
    return w8a8_supported(device)


def from_checkpoint(q: dict[str, Any], device: torch.device, requested: str | None = None) -> QuantConfig:
    """Reads a checkpoint's `quantization_config`."""
    method = str(q.get("quant_method", "")).lower()
    if method == "awq":
        version = str(q.get("version", "gemm")).lower()
        bits = int(q.get("bits", q.get("w_bit", 4)))
        if bits != 4 or version != "gemm" or not q.get("zero_point", True):
            raise UnsupportedModelError(f"AWQ with bits={bits}, version={version!r}, zero_point="
                                        f"{q.get('zero_point', True)} is not supported; supported: 4-bit GEMM "
                                        "packing with zero points")
        return QuantConfig("int4", "awq", group_size=int(q.get("group_size", q.get("q_group_size", 128))),
                           skip_modules=tuple(q.get("modules_to_not_convert") or ()))
    if method == "gptq":
        bits = int(q.get("bits", 4))
        fmt = str(q.get("checkpoint_format", "gptq")).lower()
        if bits != 4 or q.get("desc_act", False) or fmt not in ("gptq", "gptq_v2"):
            raise UnsupportedModelError(f"GPTQ with bits={bits}, desc_act={q.get('desc_act')}, checkpoint_format="
                                        f"{fmt!r} is not supported; supported: 4-bit, desc_act=false, "
                                        "checkpoint_format gptq or gptq_v2")
        return QuantConfig("int4", "gptq", group_size=int(q.get("group_size", 128)),
                           zero_offset=1 if fmt == "gptq" else 0,
                           skip_modules=tuple(q.get("modules_to_not_convert") or ()))
    if method == "bitsandbytes":
        if not q.get("load_in_4bit") or str(q.get("bnb_4bit_quant_type", "fp4")).lower() != "nf4":
            kind = "8-bit (LLM.int8)" if q.get("load_in_8bit") else f"4-bit {q.get('bnb_4bit_quant_type', 'fp4')}"
            raise UnsupportedModelError(f"bitsandbytes {kind} checkpoints are not supported; supported: "
                                        "bitsandbytes 4-bit nf4 (load_in_4bit, bnb_4bit_quant_type='nf4')")
        return QuantConfig("nf4", "bnb", nested=bool(q.get("bnb_4bit_use_double_quant", False)),
                           skip_modules=tuple(q.get("llm_int8_skip_modules") or ()))
    if method == FLOORLINE_METHOD:
        fmt = str(q.get("format", ""))
        if fmt not in ("int8", "int4", "fp8"):
            raise UnsupportedModelError(f"floorline quantization format {fmt!r} is not supported here; "
                                        "supported: int8, int4, fp8 (NF4 is written in the bitsandbytes format)")
        return QuantConfig(fmt, FLOORLINE_METHOD, group_size=int(q.get("group_size", 128)),
                           w8a8=fmt == "fp8" and _fp8_w8a8(requested, device), lm_head=_head_format(q.get("lm_head")))
    raise UnsupportedModelError(f"checkpoint quantization {method or q!r} is not supported; supported: "
                                f"{', '.join(CHECKPOINT_FORMATS)}, or a float checkpoint with --quantization "
                                f"{'/'.join(ON_LOAD)}")


def _head_format(value: Any) -> str | None:
    """A floorline checkpoint's `lm_head` entry: None (16-bit) or one of HEAD_FORMATS."""
    if value is None:
        return None
    if value not in HEAD_FORMATS:
        raise UnsupportedModelError(f"floorline checkpoint: LM head format {value!r} is not supported; supported: "
                                    f"{', '.join(HEAD_FORMATS)}")
    return value
