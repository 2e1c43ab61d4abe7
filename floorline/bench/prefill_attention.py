"""`python -m floorline.bench.prefill_attention`: sweep the prefill-attention launch parameters on the GPU.

Times `prefill_attention` on realistic chunked-prefill shapes (Llama-3.1-8B heads: 32 q heads,
8 KV heads, head_dim 128, bf16, paged KV in shuffled 16-token blocks) for tile sizes, warps and
pipeline depths, against `torch.nn.functional.scaled_dot_product_attention` (flash backend where
it applies) on the same data laid out contiguously, as a yardstick. A shape `NxL` is N chunks of L
new tokens each with no cached prefix; `NxL+P` puts P cached tokens before each chunk. Each call
is timed as CUDA-graph replays (median); TFLOP/s counts only the causal (visible) score entries.
Prints one table per shape (best first, the current default marked) and the config with the best
geometric-mean time over all shapes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from floorline.bench.kernels import rel_error
from floorline.bench.timing import median_event_ms, median_graph_ms


@dataclass(frozen=True)
class Shape:
    num_chunks: int
    chunk_len: int
    prefix_len: int = 0

    @property
    def label(self) -> str:
        tail = f"+{self.prefix_len}" if self.prefix_len else ""
        return f"{self.num_chunks}x{self.chunk_len}{tail}"


def parse_shapes(text: str) -> list[Shape]:
    """'16x512,16x512+1536' -> shapes; raises ValueError naming the bad entry."""
    shapes = []
    for item in text.split(","):
        try:
            head, _, prefix = item.strip().partition("+")
            n, length = head.split("x")
            shape = Shape(int(n), int(length), int(prefix) if prefix else 0)
        except ValueError:
            raise ValueError(f"bad shape {item!r}: expected NxL or NxL+P (e.g. 16x512+1536)") from None
        if shape.num_chunks < 1 or shape.chunk_len < 1 or shape.prefix_len < 0:
            raise ValueError(f"bad shape {item!r}: counts must be positive")
        shapes.append(shape)
    return shapes


def causal_flops(shape: Shape, num_heads: int, head_dim: int) -> float:
    """2 matmuls x 2 flops x head_dim per visible (query, key) pair, over all heads and chunks."""
    n, p = shape.chunk_len, shape.prefix_len
    visible = n * p + n * (n + 1) // 2  # token j of the chunk sees p + j + 1 keys
    return 4.0 * head_dim * num_heads * visible * shape.num_chunks


@dataclass
class Case:
    """One shape's inputs: paged (for floorline) and contiguous (for SDPA)."""

    paged: tuple  # q, key_cache, value_cache, query_start_loc, seq_lens, block_tables
    max_query_len: int
    dense_q: torch.Tensor  # [chunks, heads, chunk_len, head_dim]
    dense_k: torch.Tensor  # [chunks, heads, prefix + chunk_len, head_dim] (KV heads repeated)
    dense_v: torch.Tensor
    scale: float


def build_case(shape: Shape, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
               dtype: torch.dtype, device: torch.device) -> Case:
    """Random q/K/V; each chunk's KV scattered over shuffled blocks of one paged cache."""
    n, ctx = shape.chunk_len, shape.prefix_len + shape.chunk_len
    blocks_per_seq = -(-ctx // block_size)
    num_blocks = shape.num_chunks * blocks_per_seq + 1  # block 0 stays reserved, as in the engine
    q = torch.randn(shape.num_chunks * n, num_heads, head_dim, dtype=dtype, device=device)
    k = torch.randn(shape.num_chunks, ctx, num_kv_heads, head_dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    key_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    value_cache = torch.zeros_like(key_cache)
    table = (torch.randperm(num_blocks - 1, device=device)[: shape.num_chunks * blocks_per_seq] + 1)
    table = table.view(shape.num_chunks, blocks_per_seq).to(torch.int32)
    pos = torch.arange(ctx, device=device)
    for i in range(shape.num_chunks):
        slots = table[i].long()[pos // block_size] * block_size + pos % block_size
        key_cache.view(-1, num_kv_heads, head_dim)[slots] = k[i]
        value_cache.view(-1, num_kv_heads, head_dim)[slots] = v[i]
    starts = torch.arange(0, (shape.num_chunks + 1) * n, n, dtype=torch.int32, device=device)
    seq_lens = torch.full((shape.num_chunks,), ctx, dtype=torch.int32, device=device)
    group = num_heads // num_kv_heads
    dense_q = q.view(shape.num_chunks, n, num_heads, head_dim).transpose(1, 2).contiguous()
    dense_k = k.repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
    dense_v = v.repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
    return Case((q, key_cache, value_cache, starts, seq_lens, table), n, dense_q, dense_k, dense_v, head_dim**-0.5)


def sdpa(case: Case) -> torch.Tensor:
    """The yardstick, bottom-right causal (query j of a chunk sees prefix + j + 1 keys) -> [tokens, heads, d]."""
    lq, lk = case.dense_q.shape[2], case.dense_k.shape[2]
    if lq == lk:
        o = F.scaled_dot_product_attention(case.dense_q, case.dense_k, case.dense_v, is_causal=True,
                                           scale=case.scale)
    else:
        from torch.nn.attention.bias import causal_lower_right

        o = F.scaled_dot_product_attention(case.dense_q, case.dense_k, case.dense_v,
                                           attn_mask=causal_lower_right(lq, lk), scale=case.scale)
    return o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[3])


def configs(quick: bool) -> list[tuple[int, int, int, int]]:
    """(block_m, block_n, num_warps, num_stages) to try."""
    if quick:
        return list(itertools.product((64, 128), (64, 128), (4, 8), (2, 3)))
    return list(itertools.product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3, 4)))


def _time_call(fn, repeats: int) -> float:
    """Median ms of one call, replayed from a CUDA graph (timed eagerly if it cannot be captured)."""
    try:
        return median_graph_ms(fn, repeats)
    except RuntimeError:  # e.g. an SDPA backend that does not capture
        return median_event_ms(fn, repeats)


def main(argv: list[str] | None = None) -> int:
    from floorline.kernels.prefill_attention import default_launch, prefill_attention

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16x512,16x512+1536,4x2048,1x8192")
    ap.add_argument("--quick", action="store_true", help="16 configs instead of 48")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(f"--shapes: {e}")
    if not torch.cuda.is_available():
        print("the prefill-attention sweep needs a CUDA GPU")
        return 2
    dev, dtype = torch.device("cuda"), torch.bfloat16
    hq, hk, d, bs = 32, 8, 128, 16
    default = default_launch(d, hq // hk)
    default_cfg = (default["block_m"], default["block_n"], default["num_warps"], default["num_stages"])
    print(f"# prefill attention sweep — {time.strftime('%Y-%m-%d')} | {torch.cuda.get_device_name()} | bf16 | "
          f"{hq} q heads, {hk} KV heads, head_dim {d}, KV blocks of {bs} | torch {torch.__version__}")
    print(f"# default: block_m {default_cfg[0]}, block_n {default_cfg[1]}, {default_cfg[2]} warps, "
          f"{default_cfg[3]} stages")
    times: dict[tuple, list[float]] = {}
    for shape in shapes:
        torch.manual_seed(0)
        case = build_case(shape, hq, hk, d, bs, dtype, dev)
        flops = causal_flops(shape, hq, d)
        ref = sdpa(case)
        sdpa_ms = _time_call(lambda: sdpa(case), args.repeats)
        out = torch.empty_like(case.paged[0])
        rows = []
        for cfg in configs(args.quick):
            bm, bn, warps, stages = cfg

            def run(bm=bm, bn=bn, warps=warps, stages=stages):
                prefill_attention(*case.paged, case.scale, case.max_query_len, out=out, block_m=bm, block_n=bn,
                                  num_warps=warps, num_stages=stages)

            try:
                run()
                err = rel_error(out, ref)
                if not err < 1e-2:
                    print(f"{shape.label:>12} {bm:>4} {bn:>4} {warps:>5} {stages:>6}  wrong (rel err {err:.3g})")
                    continue
                ms = _time_call(run, args.repeats)
            except Exception as e:  # a config the compiler rejects (shared memory, registers): skip it
                print(f"{shape.label:>12} {bm:>4} {bn:>4} {warps:>5} {stages:>6}  failed: {type(e).__name__}")
                continue
            rows.append((ms, cfg))
            times.setdefault(cfg, []).append(ms)
        print(f"\n## {shape.label}: {shape.num_chunks} chunks of {shape.chunk_len} tokens after "
              f"{shape.prefix_len} cached | SDPA {sdpa_ms * 1e3:.0f} us ({flops / sdpa_ms / 1e9:.0f} TFLOP/s)")
        print(f"{'block_m':>7} {'block_n':>7} {'warps':>5} {'stages':>6} {'us':>8} {'TFLOP/s':>8} {'vs SDPA':>8}")
        ordered = sorted(rows)
        shown = ordered[:10] + [r for r in ordered[10:] if r[1] == default_cfg]
        for ms, cfg in shown:
            mark = " <- best" if (ms, cfg) == ordered[0] else ""
            mark += " <- default" if cfg == default_cfg else ""
            print(f"{cfg[0]:>7} {cfg[1]:>7} {cfg[2]:>5} {cfg[3]:>6} {ms * 1e3:>8.1f} {flops / ms / 1e9:>8.0f} "
                  f"{sdpa_ms / ms:>7.2f}x{mark}")
    complete = {cfg: t for cfg, t in times.items() if len(t) == len(shapes)}
    if complete:
        geo = {cfg: math.exp(sum(math.log(x) for x in t) / len(t)) for cfg, t in complete.items()}
        best = min(geo, key=geo.get)
        print(f"\nbest over all shapes (geometric mean): block_m {best[0]}, block_n {best[1]}, {best[2]} warps, "
              f"{best[3]} stages: {geo[best] * 1e3:.1f} us"
              + (f" (default {geo[default_cfg] * 1e3:.1f} us)" if default_cfg in geo else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
