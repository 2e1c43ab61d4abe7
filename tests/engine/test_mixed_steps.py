"""Mixed prefill+decode steps end to end: the engine's attention through the Triton kernels (the
interpreter on CPU), decode rows split off to the decode kernel, equals plain generation."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import floorline.layers.attention as attention_layer  # noqa: E402
from floorline.api import LLM  # noqa: E402
from floorline.kernels.paged_attention import paged_attention_triton  # noqa: E402
from tests.engine.test_engine import greedy, prompts, tokens  # noqa: E402


def test_mixed_steps_through_triton_equal_one_at_a_time(tiny_model_dir, monkeypatch):
    ps = prompts(5, seed=11, lo=3, hi=30)
    solo = LLM(tiny_model_dir, num_kv_blocks=64, enable_prefix_caching=False, max_num_seqs=1)
    ref = [tokens(solo.generate([p], greedy(6)))[0] for p in ps]

    mixed_steps = []

    def triton_attention(*args, num_decodes: int = 0, **kwargs):
        max_query_len, num_seqs = args[7], args[4].shape[0]
        if max_query_len > 1 and 0 < num_decodes < num_seqs:
            mixed_steps.append(num_decodes)
        return paged_attention_triton(*args, num_decodes=num_decodes, **kwargs)

    monkeypatch.setattr(attention_layer, "paged_attention", triton_attention)
    # A 9-token budget: later prompts are chunked while earlier ones decode in the same step.
    llm = LLM(tiny_model_dir, num_kv_blocks=64, max_num_batched_tokens=9, max_num_seqs=5,
              enable_prefix_caching=False)
    assert tokens(llm.generate(ps, greedy(6))) == ref
    assert mixed_steps, "no step mixed decode rows with prefill chunks"
