"""SamplingParams.output_kind: cumulative outputs, step deltas, or one final output per request.

All three must describe the same generation: the deltas add up to the cumulative final output, and
final_only reports exactly that output once.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from floorline.engine.engine import EngineArgs, LLMEngine  # noqa: E402
from floorline.errors import InvalidRequestError  # noqa: E402
from floorline.sampling_params import SamplingParams  # noqa: E402

PROMPTS = [[5, 9, 13, 2], [7, 7, 1], [100, 3, 44, 8, 19, 21]]


def run(engine: LLMEngine, kind: str, **params) -> dict[str, list]:
    """Every RequestOutput the engine reported, by request id, in order."""
    for i, p in enumerate(PROMPTS):
        engine.add_request(p, SamplingParams(output_kind=kind, **params), request_id=f"r{i}")
    seen: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    return seen


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return LLMEngine(EngineArgs(model=tiny_model_dir, device="cpu", num_kv_blocks=64, max_num_seqs=2))


@pytest.mark.parametrize("extra", [{}, {"n": 2, "temperature": 1.0, "seed": 3, "logprobs": 2}])
def test_deltas_and_final_only_match_cumulative(engine, extra):
    params = {"temperature": 0.0, "max_tokens": 9, "ignore_eos": True, **extra}
    cumulative = run(engine, "cumulative", **params)
    delta = run(engine, "delta", **params)
    final = run(engine, "final_only", **params)
    for rid, outs in cumulative.items():
        whole = outs[-1]
        assert whole.finished and len(final[rid]) == 1 and final[rid][0].finished
        for c, f in zip(whole.outputs, final[rid][0].outputs):
            assert f.token_ids == c.token_ids and f.logprobs == c.logprobs and f.finish_reason == c.finish_reason
        assert delta[rid][-1].finished and not any(o.finished for o in delta[rid][:-1])
        for c in whole.outputs:
            pieces = [o.outputs[c.index] for o in delta[rid]]
            assert sum((p.token_ids for p in pieces), []) == c.token_ids == [
                t for p in pieces for t in p.delta_token_ids]
            if c.logprobs is not None:
                assert sum((p.logprobs for p in pieces), []) == c.logprobs
            assert all(len(p.token_ids) <= 1 for p in pieces)  # one token a step here: no copies of the past


def test_bad_output_kind_is_refused():
    with pytest.raises(InvalidRequestError, match="output_kind must be one of cumulative, delta, final_only") as e:
        SamplingParams(output_kind="streaming")
    assert e.value.param == "output_kind"
