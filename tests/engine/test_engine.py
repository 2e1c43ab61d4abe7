"""End to end on CPU with a tiny random model: batching, paging, chunking, preemption and caching
all give exactly what plain one-at-a-time generation gives."""

from __future__ import annotations

import random

import pytest

transformers = pytest.importorskip("transformers")

from floorline.api import LLM  # noqa: E402
from floorline.sampling_params import SamplingParams  # noqa: E402

from tests.engine.conftest import VOCAB  # noqa: E402


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def greedy(max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def solo_reference(tiny_model_dir):
    """Each prompt generated alone, with a roomy pool and no caching: the ground truth."""
    llm = LLM(tiny_model_dir, num_kv_blocks=256, enable_prefix_caching=False, max_num_seqs=1)
    ps = prompts(12)
    return ps, [tokens(llm.generate([p], greedy()))[0] for p in ps]


def check_engine_state(llm: LLM) -> None:
    sched = llm.engine.scheduler
    assert not llm.engine.requests and not sched.has_unfinished_requests()
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks
    llm.engine.step()  # an idle step delivers the last finished ids to the runner
    assert not llm.engine.runner.requests


def test_batched_equals_one_at_a_time(tiny_model_dir, solo_reference):
    ps, ref = solo_reference
    llm = LLM(tiny_model_dir, num_kv_blocks=256, max_num_seqs=16)
    assert tokens(llm.generate(ps, greedy())) == ref
    check_engine_state(llm)


def test_chunked_prefill_and_small_budget(tiny_model_dir, solo_reference):
    ps, ref = solo_reference
    llm = LLM(tiny_model_dir, num_kv_blocks=256, max_num_batched_tokens=7, max_num_seqs=5)
    assert tokens(llm.generate(ps, greedy())) == ref
    check_engine_state(llm)


def test_preemption_keeps_outputs_exact(tiny_model_dir, solo_reference):
    ps, ref = solo_reference
    # 12 prompts of up to 72 tokens in 16 blocks of 16 slots: requests must be preempted and resumed.
    llm = LLM(tiny_model_dir, num_kv_blocks=16, max_num_seqs=12, enable_prefix_caching=False)
    assert tokens(llm.generate(ps, greedy())) == ref
    assert llm.engine.scheduler.get_stats().num_preemptions > 0
    check_engine_state(llm)


def test_prefix_cache_hits_and_identical_output(tiny_model_dir):
    shared = prompts(1, seed=5, lo=50, hi=50)[0]
    ps = [shared + tail for tail in prompts(4, seed=6, lo=2, hi=9)]
    plain = LLM(tiny_model_dir, num_kv_blocks=256, enable_prefix_caching=False)
    ref = tokens(plain.generate(ps, greedy()))
    cached = LLM(tiny_model_dir, num_kv_blocks=256)
    got = [tokens(cached.generate([p], greedy()))[0] for p in ps]  # one after another: later ones hit
    assert got == ref
    assert cached.engine.scheduler.get_stats().prefix_cache_hit_rate > 0.5
    check_engine_state(cached)


def test_seeded_sampling_is_reproducible_across_batches(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=256)
    p = prompts(1, seed=9)[0]
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    alone = tokens(llm.generate([p], params))[0]
    others = prompts(5, seed=10)
    mixed = llm.generate(others[:2] + [p] + others[2:], [greedy()] * 2 + [params] + [greedy()] * 3)
    assert mixed[2].outputs[0].token_ids == alone


def test_n_completions_and_abort_free_everything(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=64)
    out = llm.generate([prompts(1)[0]], SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=5,
                                                       ignore_eos=True))[0]
    assert len(out.outputs) == 3 and all(len(c.token_ids) == 5 for c in out.outputs)
    rid = llm.engine.add_request(prompts(1, seed=2)[0], greedy(50))
    llm.engine.step()
    llm.engine.abort_request(rid)
    check_engine_state(llm)


def test_refused_requests_fail_alone(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=8, max_model_len=100)
    ok = prompts(1)[0][:10]
    outs = llm.generate([ok, list(range(150)), ok], greedy(4))
    assert outs[1].error and "100" in outs[1].error
    assert outs[0].outputs[0].token_ids == outs[2].outputs[0].token_ids and len(outs[0].outputs[0].token_ids) == 4
    check_engine_state(llm)


def test_request_that_can_never_fit_the_pool_is_refused_alone(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=4, max_model_len=200)  # 3 usable blocks of 16 slots
    ok = prompts(1)[0][:10]
    outs = llm.generate([ok, list(range(60)), ok], greedy(4))
    assert outs[1].error and "KV" in outs[1].error and "3 blocks" in outs[1].error
    assert len(outs[0].outputs[0].token_ids) == len(outs[2].outputs[0].token_ids) == 4
    check_engine_state(llm)


def test_max_tokens_and_stop_token_ids(tiny_model_dir, solo_reference):
    ps, ref = solo_reference
    llm = LLM(tiny_model_dir, num_kv_blocks=256)
    stop_at = ref[0][3]
    out = llm.generate([ps[0]], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at]))[0]
    first = ref[0].index(stop_at)
    assert out.outputs[0].token_ids == ref[0][: first + 1]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop_at
    out = llm.generate([ps[1]], greedy(5))[0]
    assert out.outputs[0].finish_reason == "length" and len(out.outputs[0].token_ids) == 5


@pytest.mark.parametrize("config", [
    dict(num_kv_blocks=256, max_num_seqs=16),
    dict(num_kv_blocks=256, max_num_batched_tokens=7, max_num_seqs=5),
    dict(num_kv_blocks=16, max_num_seqs=12, enable_prefix_caching=False),
])
def test_async_scheduling_equals_plain(tiny_model_dir, solo_reference, config):
    """Scheduling step N+1 before N's tokens are read (placeholders filled on the device) changes nothing."""
    ps, ref = solo_reference
    llm = LLM(tiny_model_dir, async_scheduling=True, **config)
    assert tokens(llm.generate(ps, greedy())) == ref
    mixed = [SamplingParams(temperature=0.9, seed=i, max_tokens=9, ignore_eos=True, repetition_penalty=1.0 + (i % 2))
             for i in range(len(ps))]
    plain = LLM(tiny_model_dir, **config)
    assert tokens(llm.generate(ps, mixed)) == tokens(plain.generate(ps, mixed))
    llm.engine.step()
    check_engine_state(llm)
