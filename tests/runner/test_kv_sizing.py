"""KV pool sizing arithmetic on CPU: what is kept out of the pool for sampling and CUDA graphs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from floorline.runner.cuda_graphs import DecodeGraphs, batch_buckets
from floorline.runner.kv_cache_alloc import GRAPH_SLACK_BYTES, graph_reserve_bytes, kv_budget_bytes
from floorline.runner.memory_profile import hungriest_sampling_params, run_hungriest_sampling
from floorline.weights.loader import load_model_config
from floorline.weights.resolve import resolve_model

GB = 10**9


@pytest.fixture(scope="module")
def llama8b():
    return load_model_config(resolve_model("llama-3.1-8b"))


def test_static_bytes_is_what_the_graphs_allocate(llama8b):
    cfg = dataclasses.replace(llama8b, vocab_size=1000)  # small logits: the buffers really are allocated
    graphs = DecodeGraphs(None, cfg, max_batch=40, max_model_len=1516, block_size=16, device=torch.device("cpu"))
    buffers = [v for v in vars(graphs).values() if isinstance(v, torch.Tensor)]
    assert sum(t.numel() * t.element_size() for t in buffers) == DecodeGraphs.static_bytes(40, 95, 1000)


def test_graph_reserve_holds_one_logits_buffer_not_one_per_bucket(llama8b):
    """At 512 sequences the graphs used to keep a logits tensor per bucket (8.5 GB of the 8 GB
    headroom on an H100: the OOM); now one static buffer plus the largest bucket's forward."""
    vocab, rows = llama8b.vocab_size, 512
    logits = rows * vocab * 4
    per_bucket = sum(batch_buckets(rows)) * vocab * 4
    assert per_bucket > 8.5 * GB
    forward = 2 * logits  # a 512-row decode forward: bf16 + fp32 logits dominate its ~50 MB of activations
    reserve = graph_reserve_bytes(rows, 1516, 16, vocab, forward)
    assert reserve >= logits + forward + GRAPH_SLACK_BYTES
    assert reserve < 1.1 * GB < per_bucket / 7


def test_kv_budget_takes_the_reserve_off_the_utilization_share():
    # H100: 80 GB, 16 GB of weights in use; 90% utilization; 5 GB kept for the step and graphs.
    budget = kv_budget_bytes(total=80 * GB, free=64 * GB, utilization=0.9, reserve=5 * GB)
    assert budget == pytest.approx(72 * GB - 16 * GB - 5 * GB)
    assert kv_budget_bytes(80 * GB, 64 * GB, 0.9, 60 * GB) < 0  # choose_num_blocks then keeps its 2-block minimum


def test_hungriest_sampling_runs_the_full_sort_path():
    params = hungriest_sampling_params(16)
    assert any(p.greedy for p in params) and any(not p.greedy for p in params)
    hungry = next(p for p in params if not p.greedy)
    assert hungry.top_k == -1 and hungry.top_p < 1 and hungry.uses_penalties and hungry.logprobs
    ids = run_hungriest_sampling(torch.randn(16, 300))
    assert ids.shape == (16,) and int(ids.max()) < 300
