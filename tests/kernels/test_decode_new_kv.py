"""Fused decode (`decode_attention(new_kv=...)`): rotary and the cache write inside the split kernel
equal `rotary_and_cache_write` followed by plain decode attention (interpreter, fp32/fp16)."""

from __future__ import annotations

import pytest
import torch

from floorline.kernels.decode_attention import NewKV, decode_attention
from floorline.kernels.kv_write import rotary_and_cache_write_ref
from floorline.kernels.paged_attention import paged_attention_ref
from floorline.kernels.rotary import rotary_cos_sin_cache

TOL = {torch.float32: 1e-4, torch.float16: 2e-3}


def _case(dtype, seq_lens, num_heads=4, num_kv_heads=2, head_dim=32, block_size=8):
    torch.manual_seed(sum(seq_lens))
    n = len(seq_lens)
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + 1
    kc = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(dtype)
    vc = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(dtype)
    perm = torch.randperm(num_blocks - 1) + 1  # block 0 stays reserved
    width = max(-(-s // block_size) for s in seq_lens)
    tables = torch.zeros(n, width, dtype=torch.int32)
    used = 0
    for i, s in enumerate(seq_lens):
        nb = -(-s // block_size)
        tables[i, :nb] = perm[used:used + nb].to(torch.int32)
        used += nb
    positions = torch.tensor([s - 1 for s in seq_lens])
    slots = torch.stack([tables[i, p // block_size].long() * block_size + p % block_size
                         for i, p in enumerate(positions.tolist())])
    qkv = torch.randn(n, (num_heads + 2 * num_kv_heads) * head_dim).to(dtype)  # the GEMV's output
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q = q.reshape(n, num_heads, head_dim)
    k = k.reshape(n, num_kv_heads, head_dim)
    v = v.reshape(n, num_kv_heads, head_dim)
    cs = rotary_cos_sin_cache(head_dim, 256, 10000.0)
    return q, k, v, kc, vc, tables, torch.tensor(seq_lens, dtype=torch.int32), positions, slots, cs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seq_lens,num_splits", [([1, 9, 40], 1), ([17, 64, 3], 4), ([100], 3)])
def test_fused_decode_equals_rotary_write_then_attention(dtype, seq_lens, num_splits):
    q, k, v, kc, vc, tables, lens, pos, slots, cs = _case(dtype, seq_lens)
    kc2, vc2 = kc.clone(), vc.clone()
    out = decode_attention(q.clone(), kc2, vc2, lens, tables, 32**-0.5, max(seq_lens), num_splits=num_splits,
                           new_kv=NewKV(k, v, pos, cs, slots))
    q_ref, k_ref = q.clone(), k.clone()
    rotary_and_cache_write_ref(q_ref, k_ref, v, pos, cs, kc, vc, slots)
    n = len(seq_lens)
    ref = paged_attention_ref(q_ref, kc, vc, torch.arange(n + 1, dtype=torch.int32), lens, tables, 32**-0.5, 1,
                              max(seq_lens))
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    # the cache got this step's rotated k and v, and nothing else changed
    torch.testing.assert_close(kc2.float(), kc.float(), atol=tol, rtol=tol)
    assert torch.equal(vc2, vc)


def test_slot_minus_one_writes_nothing():
    q, k, v, kc, vc, tables, lens, pos, slots, cs = _case(torch.float32, [5, 12])
    before_k, before_v = kc.clone(), vc.clone()
    decode_attention(q, kc, vc, lens, tables, 32**-0.5, 12, num_splits=2,
                     new_kv=NewKV(k, v, pos, cs, torch.full_like(slots, -1)))
    assert torch.equal(kc, before_k) and torch.equal(vc, before_v)


def test_new_kv_shapes_are_checked():
    q, k, v, kc, vc, tables, lens, pos, slots, cs = _case(torch.float32, [5])
    with pytest.raises(ValueError, match="new k must be"):
        decode_attention(q, kc, vc, lens, tables, 1.0, 5, new_kv=NewKV(k[:, :1], v, pos, cs, slots))
    with pytest.raises(ValueError, match="cos_sin_cache"):
        decode_attention(q, kc, vc, lens, tables, 1.0, 5, new_kv=NewKV(k, v, pos, cs[:, :8], slots))


@pytest.mark.gpu
@pytest.mark.parametrize("ctx", [1, 300, 2048])
def test_gpu_bf16_fused_decode_llama8b_heads(ctx):
    q, k, v, kc, vc, tables, lens, pos, slots, cs = _case(torch.bfloat16, [ctx, max(1, ctx // 2), 7],
                                                          num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
    cs = rotary_cos_sin_cache(128, 4096, 500000.0)
    dev = [t.cuda() for t in (q, k, v, kc, vc, tables, lens, pos, slots, cs)]
    q, k, v, kc, vc, tables, lens, pos, slots, cs = dev
    kc2, vc2 = kc.clone(), vc.clone()
    top = int(lens.max())
    out = decode_attention(q.clone(), kc2, vc2, lens, tables, 128**-0.5, top, new_kv=NewKV(k, v, pos, cs, slots))
    q_ref, k_ref = q.clone(), k.clone()
    rotary_and_cache_write_ref(q_ref, k_ref, v, pos, cs, kc, vc, slots)
    ref = decode_attention(q_ref, kc, vc, lens, tables, 128**-0.5, top)
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < 1e-2 and (kc2.float() - kc.float()).abs().max().item() < 0.02 and torch.equal(vc2, vc)
