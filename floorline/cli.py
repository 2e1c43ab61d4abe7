"""The `floorline` command: generate, chat (more subcommands register themselves in COMMANDS)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

from floorline.errors import FloorlineError

# name -> (add_arguments, run); other modules (bench, floor, plan, serve) add theirs here.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that builds an engine (they map one to one onto EngineArgs)."""
    p.add_argument("--model", "-m", default=None,
                   help="GGUF file, HF model dir, org/name in the HF cache, or a shipped config name "
                        "(default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--kv-cache-memory-gb", type=float, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90,
                   help="CUDA: share of the card's memory the engine may take (weights, activations, KV)")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="CUDA: run without CUDA graphs")
    p.add_argument("--quantization", default=None,
                   help="quantize weights on load: int8, int4, nf4, fp8, fp8-w8a8 (pre-quantized AWQ, GPTQ, "
                        "bitsandbytes-nf4 and floorline checkpoints are detected from their config)")
    p.add_argument("--lm-head-quantization", default=None, metavar="FORMAT",
                   help="with --quantization: store the LM head in int8, int4, nf4 or fp8 too (default: 16-bit); "
                        "e.g. int4 weights with an int8 head, as llama.cpp's Q4_K_M files keep a 6-bit one")


def engine_args_from(ns: argparse.Namespace):
    from floorline.engine.engine import EngineArgs

    return EngineArgs(model=ns.model, load_format=ns.load_format, dtype=ns.dtype, device=ns.device,
                      max_model_len=ns.max_model_len, block_size=ns.block_size, num_kv_blocks=ns.num_kv_blocks,
                      kv_cache_memory_gb=ns.kv_cache_memory_gb, max_num_seqs=ns.max_num_seqs,
                      gpu_memory_utilization=ns.gpu_memory_utilization,
                      max_num_batched_tokens=ns.max_num_batched_tokens,
                      enable_prefix_caching=not ns.no_prefix_caching, enforce_eager=ns.enforce_eager,
                      quantization=getattr(ns, "quantization", None),
                      lm_head_quantization=getattr(ns, "lm_head_quantization", None))


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", "-n", type=int, default=max_tokens)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")


def sampling_params_from(ns: argparse.Namespace):
    from floorline.sampling_params import SamplingParams

    return SamplingParams(max_tokens=ns.max_tokens, temperature=ns.temperature, top_p=ns.top_p, top_k=ns.top_k,
                          min_p=ns.min_p, repetition_penalty=ns.repetition_penalty, seed=ns.seed,
                          stop=ns.stop, ignore_eos=ns.ignore_eos)


# ---- generate ---------------------------------------------------------------------------------

def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default="The capital of France is",
                   help="prompt text (default: a short sentence)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_engine_args(p)
    add_sampling_args(p, max_tokens=64)


def _run_generate(ns: argparse.Namespace) -> int:
    params = sampling_params_from(ns)  # bad values fail before the model loads
    llm = _build_llm(ns)
    prompt = ns.prompt
    if ns.chat:
        prompt = llm.encode_chat([{"role": "user", "content": ns.prompt}])
    else:
        print(ns.prompt, end="", flush=True)
    t0 = time.perf_counter()
    first = None
    num_tokens = 0
    for out in llm.stream(prompt, params):
        completion = out.outputs[0]
        if first is None and completion.token_ids:
            first = time.perf_counter()
        num_tokens = len(completion.token_ids)
        print(completion.delta_text, end="", flush=True)
    end = time.perf_counter()
    print()
    _print_speed(t0, first, end, num_tokens)
    return 0


def _print_speed(t0: float, first: float | None, end: float, num_tokens: int) -> None:
    ttft = (first - t0) if first else float("nan")
    decode_time = end - first if first else 0.0
    tps = (num_tokens - 1) / decode_time if num_tokens > 1 and decode_time > 0 else float("nan")
    print(f"[{num_tokens} tokens | TTFT {ttft * 1000:.0f} ms | {tps:.1f} tokens/s]", file=sys.stderr)


def _build_llm(ns: argparse.Namespace):
    from floorline.api import LLM

    llm = LLM.from_engine_args(engine_args_from(ns))
    if llm.tokenizer is None:
        raise FloorlineError(f"{ns.model} has no tokenizer; text generation needs one")
    return llm


# ---- chat -------------------------------------------------------------------------------------

def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, help="system message")
    add_engine_args(p)
    add_sampling_args(p, max_tokens=512)


def _run_chat(ns: argparse.Namespace) -> int:
    params = sampling_params_from(ns)
    llm = _build_llm(ns)
    history: list[dict[str, str]] = [{"role": "system", "content": ns.system}] if ns.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("floorline chat: type a message; /reset clears the history, /exit or Ctrl-D quits.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            history = history[:1] if ns.system else []
            continue
        history.append({"role": "user", "content": text})
        prompt = llm.encode_chat(history)
        t0, first, reply, n = time.perf_counter(), None, "", 0
        for out in llm.stream(prompt, params):
            c = out.outputs[0]
            if first is None and c.token_ids:
                first = time.perf_counter()
            print(c.delta_text, end="", flush=True)
            reply, n = c.text, len(c.token_ids)
        print()
        _print_speed(t0, first, time.perf_counter(), n)
        history.append({"role": "assistant", "content": reply})


COMMANDS["generate"] = (_generate_args, _run_generate)
COMMANDS["chat"] = (_chat_args, _run_chat)


def _register_optional_commands() -> None:
    """Commands that live in their own modules register on import; a missing module is skipped."""
    import importlib

    for mod in ("floorline.bench.cli", "floorline.analysis.cli", "floorline.server.cli", "floorline.quant.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def build_parser() -> argparse.ArgumentParser:
    _register_optional_commands()
    parser = argparse.ArgumentParser(prog="floorline", description="LLM inference at the memory floor")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command][1](ns)
    except FloorlineError as e:
        print(f"floorline: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as e:  # never a bare traceback for the user; FLOORLINE_DEBUG=1 shows it
        if os.environ.get("FLOORLINE_DEBUG"):
            raise
        print(f"floorline: internal error: {type(e).__name__}: {e} (set FLOORLINE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run through the imported module so that commands registered by other modules (which import
    # `floorline.cli`, not `__main__`) land in the same COMMANDS table.
    from floorline.cli import main as _main

    sys.exit(_main())
