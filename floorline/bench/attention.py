"""`python -m floorline.bench.attention`: sweep the decode-attention launch parameters on the GPU.

Times `decode_attention` for Llama-3.1-8B's attention shape (32 q heads, 8 KV heads, head_dim 128,
bf16) at batch 1 (or `--batch B`: B sequences with lengths spread over [context/2, context], the
serving case) over several contexts, for split counts, tile sizes, warps and pipeline depths,
against the KV bytes it must read. Replays of a CUDA graph of many launches (over separate caches
larger than L2) give the per-call time. Prints a table; the best row per context is marked.
"""

from __future__ import annotations

import argparse
import itertools
import torch

from floorline.analysis.gpus import measure_read_bandwidth
from floorline.bench.kernels import rel_error
from floorline.bench.timing import median_graph_ms
from floorline.kernels.decode_attention import decode_attention, decode_num_splits, num_sms_of
from floorline.kernels.paged_attention import paged_attention_ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="2048,16384")
    ap.add_argument("--layers", type=int, default=8, help="separate caches per timed graph (past L2)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per call (large batch: splits 1, 2, 4)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    bw = measure_read_bandwidth(dev)
    hq, hk, d, bs = 32, 8, 128, 16
    print(f"decode attention sweep | {torch.cuda.get_device_name()} | batch {args.batch} | "
          f"read bandwidth {bw / 1e9:.0f} GB/s")
    print(f"{'context':>8} {'splits':>6} {'block_n':>7} {'warps':>5} {'stages':>6} {'us/call':>8} {'GB/s':>6} {'%BW':>5}")
    b = args.batch
    for ctx in (int(c) for c in args.contexts.split(",")):
        # Lengths spread over [ctx/2, ctx] (all ctx at batch 1), each sequence in its own shuffled blocks.
        lens = [ctx - (i * 7919) % max(1, ctx // 2) if b > 1 else ctx for i in range(b)]
        per_seq = -(-ctx // bs)
        nblk = b * per_seq
        caches = [(torch.randn(nblk + 1, bs, hk, d, device=dev, dtype=torch.bfloat16),
                   torch.randn(nblk + 1, bs, hk, d, device=dev, dtype=torch.bfloat16)) for _ in range(args.layers)]
        q = torch.randn(b, hq, d, device=dev, dtype=torch.bfloat16)
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=dev)
        table = (torch.randperm(nblk, device=dev, dtype=torch.int32) + 1).view(b, per_seq)
        ref = paged_attention_ref(q.float(), caches[0][0].float(), caches[0][1].float(),
                                  torch.arange(b + 1, dtype=torch.int32, device=dev), seq_lens, table,
                                  d**-0.5, 1, ctx)
        kv_bytes = 2 * sum(lens) * hk * d * 2
        rows = []
        split_counts = sorted({16, 33, 64, decode_num_splits(b, hk, ctx, num_sms_of(dev))} if b == 1 else {1, 2, 4})
        for splits, block_n, warps, stages in itertools.product(split_counts, (32, 64, 128), (4, 8), (2, 3)):
            def run():
                for kc, vc in caches:
                    decode_attention(q, kc, vc, seq_lens, table, d**-0.5, ctx, num_splits=splits,
                                     block_n=block_n, num_warps=warps, num_stages=stages)
            try:
                out = decode_attention(q, caches[0][0], caches[0][1], seq_lens, table, d**-0.5, ctx,
                                       num_splits=splits, block_n=block_n, num_warps=warps, num_stages=stages)
                err = rel_error(out, ref)
                if not err < 1e-2:
                    print(f"{ctx:>8} {splits:>6} {block_n:>7} {warps:>5} {stages:>6} wrong (rel err {err:.3g})")
                    continue
                us = median_graph_ms(run) * 1e3 / len(caches)
            except Exception as e:  # a config the compiler rejects (shared memory): skip it
                print(f"{ctx:>8} {splits:>6} {block_n:>7} {warps:>5} {stages:>6} failed: {type(e).__name__}")
                continue
            rows.append((us, splits, block_n, warps, stages))
        best = min(rows)
        for us, splits, block_n, warps, stages in sorted(rows)[:8]:
            gbs = kv_bytes / (us * 1e-6) / 1e9
            mark = " <- best" if (us, splits, block_n, warps, stages) == best else ""
            print(f"{ctx:>8} {splits:>6} {block_n:>7} {warps:>5} {stages:>6} {us:>8.2f} {gbs:>6.0f} "
                  f"{100 * gbs * 1e9 / bw:>5.1f}{mark}")
        splits = decode_num_splits(b, hk, ctx, num_sms_of(dev))
        default = [r for r in rows if r[1:] == (splits, 128, 4, 2)]
        if default:
            print(f"{ctx:>8}   current default ({splits} splits, 128, 4 warps, 2 stages): {default[0][0]:.2f} us")


if __name__ == "__main__":
    main()
