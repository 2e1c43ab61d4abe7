"""`floorline quantize` (write a quantized checkpoint) and `floorline eval ppl` (perplexity, top-1 agreement)."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from floorline.cli import COMMANDS
from floorline.errors import FloorlineError
from floorline.quant.config import HEAD_FORMATS, ON_LOAD


def _quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="HF model dir, GGUF file or HF id (default: the bundled model)")
    p.add_argument("--quantization", required=True, choices=[q for q in ON_LOAD if q != "fp8-w8a8"])
    p.add_argument("--output", "-o", required=True, help="new directory for the quantized checkpoint")
    p.add_argument("--dtype", default="auto", help="dtype of the unquantized tensors (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="where to quantize: cpu (default) or cuda")
    p.add_argument("--lm-head-quantization", default=None, choices=list(HEAD_FORMATS),
                   help="store the LM head in this format too (default: 16-bit; not with nf4)")


def _run_quantize(ns: argparse.Namespace) -> int:
    from floorline.quant.checkpoint import quantize_checkpoint

    out = quantize_checkpoint(ns.model, ns.quantization, ns.output, dtype=ns.dtype, device=ns.device,
                              lm_head=ns.lm_head_quantization)
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(f"wrote {out} ({size / 1e6:.1f} MB of weights, {ns.quantization}); "
          f"run it with: floorline generate --model {out}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval", required=True)
    e = sub.add_parser("ppl", help="perplexity over a text file, and top-1 agreement with the unquantized model")
    e.add_argument("--model", "-m", default=None)
    e.add_argument("--quantization", default="none",
                   help=f"comma-separated: none, {', '.join(ON_LOAD)} (one row each; default none)")
    e.add_argument("--file", "-f", default=None, help="UTF-8 text (default: the bundled Declaration of Independence)")
    e.add_argument("--window", type=int, default=512, help="tokens per forward")
    e.add_argument("--stride", type=int, default=256, help="tokens between window starts")
    e.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the text")
    e.add_argument("--dtype", default="auto")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-reference", action="store_true", help="skip the unquantized run (no top-1 agreement)")
    e.add_argument("--lm-head-quantization", default=None, choices=list(HEAD_FORMATS),
                   help="the quantized rows' LM head format (default: 16-bit)")
    e.add_argument("--json", default=None, help="also write the rows as JSON here")


def _engine(ns: argparse.Namespace, quantization: str | None):
    from floorline.engine.engine import EngineArgs, LLMEngine

    blocks = -(-ns.window // 16) + 2
    return LLMEngine(EngineArgs(model=ns.model, dtype=ns.dtype, device=ns.device, quantization=quantization,
                                lm_head_quantization=ns.lm_head_quantization if quantization else None,
                                num_kv_blocks=blocks, max_num_seqs=1, enforce_eager=True, async_scheduling=False))


def _run_eval(ns: argparse.Namespace) -> int:
    import torch

    from floorline.eval.perplexity import (
        DEFAULT_TEXT,
        linear_weight_stats,
        perplexity,
        quantization_label,
    )

    path = Path(ns.file) if ns.file else DEFAULT_TEXT
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FloorlineError(f"cannot read {path} as UTF-8 text ({e})") from None
    names = [n for n in dict.fromkeys(q.strip().lower() or "none" for q in ns.quantization.split(",")) if n != "none"]
    if not ns.no_reference or ns.quantization.strip().lower() in ("", "none"):
        names.insert(0, "none")  # the unquantized run goes first: the others' top-1 agreement needs it
    rows, ref, ids, header = [], None, None, ""
    for q in names:
        engine = _engine(ns, None if q == "none" else q)
        if ids is None:
            if engine.tokenizer is None:
                raise FloorlineError(f"{ns.model} has no tokenizer; eval ppl reads text")
            ids = engine.tokenizer.encode(text)[: ns.max_tokens]
            header = (f"model {engine.model_config.name} | device {engine.device} | dtype "
                      f"{str(engine.dtype).removeprefix('torch.')} | text {path.name} ({len(ids)} tokens) | "
                      f"window {ns.window}, stride {ns.stride}")
        res = perplexity(engine, ids, ns.window, ns.stride)
        nbytes, nweights = linear_weight_stats(engine.model)
        ref = res if q == "none" else ref
        head = f" (LM head {ns.lm_head_quantization})" if ns.lm_head_quantization else ""
        label = quantization_label(engine.model) if q == "none" else q + head
        rows.append({"quantization": label, "linear_mb": nbytes / 1e6, "bits_per_weight": 8 * nbytes / max(nweights, 1),
                     "ppl": res.ppl, "top1_agreement": None if ref is None or q == "none" else res.agreement(ref),
                     "seconds": res.seconds, "tokens": res.num_tokens})
        print(f"  {q}: ppl {res.ppl:.3f} ({res.seconds:.1f} s)", file=sys.stderr, flush=True)
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _print_table(header, rows, ref.ppl if ref is not None else None)
    if ns.json:
        Path(ns.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


def _print_table(header: str, rows: list[dict], ref_ppl: float | None) -> None:
    print(header)
    print("| quantization | linear weights MB | bits/weight | perplexity | vs unquantized | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        delta = "-" if ref_ppl is None or r["top1_agreement"] is None else f"{100 * (r['ppl'] / ref_ppl - 1):+.2f}%"
        agree = "-" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        print(f"| {r['quantization']} | {r['linear_mb']:.1f} | {r['bits_per_weight']:.2f} | {r['ppl']:.3f} | "
              f"{delta} | {agree} |")


def _run_eval_command(ns: argparse.Namespace) -> int:
    if ns.eval == "ppl":
        return _run_eval(ns)
    raise FloorlineError(f"unknown eval {ns.eval!r}")


COMMANDS["quantize"] = (_quantize_args, _run_quantize)
COMMANDS["eval"] = (_eval_args, _run_eval_command)
