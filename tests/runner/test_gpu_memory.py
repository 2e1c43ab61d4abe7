"""On the GPU: the CUDA graphs take no more than the KV sizing kept for them, and a full batch runs."""

from __future__ import annotations

import pytest

from floorline.api import LLM
from floorline.runner.cuda_graphs import batch_buckets
from floorline.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def test_graphs_fit_their_reserve_and_a_full_batch_runs():
    rows = 128
    llm = LLM("llama-3.2-1b", load_format="dummy", device="cuda", max_model_len=1024, max_num_seqs=rows,
              max_num_batched_tokens=2048, gpu_memory_utilization=0.5)
    engine = llm.engine
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.pool_bytes <= engine.memory_reserve["cuda_graphs"]
    vocab = engine.model_config.vocab_size
    assert graphs.pool_bytes < sum(batch_buckets(rows)) * vocab * 4 / 2  # not one logits tensor per bucket
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=4, ignore_eos=True, logprobs=5)
    outs = llm.generate([[1, 2, 3] * 20] * rows, params)
    assert all(len(o.outputs[0].token_ids) == 4 for o in outs)
