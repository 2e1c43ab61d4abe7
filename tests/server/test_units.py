"""Server pieces without a model: stream coalescing, per-choice deltas, prompt normalization, error mapping."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from floorline.engine.async_engine import EngineDeadError, QueueFullError, RequestStream  # noqa: E402
from floorline.engine.output_processor import CompletionOutput, RequestOutput  # noqa: E402
from floorline.errors import InvalidRequestError  # noqa: E402
from floorline.server.errors import to_api_error  # noqa: E402
from floorline.server.protocol import ChatCompletionRequest, CompletionRequest  # noqa: E402
from floorline.server.serving import ChoiceState  # noqa: E402


def _out(text: str, ids: list[int], finished: bool = False) -> RequestOutput:
    c = CompletionOutput(index=0, text=text, token_ids=ids, finish_reason="length" if finished else None)
    return RequestOutput("r", None, [1], [c], finished=finished)


def test_slow_consumer_gets_the_newest_output_only():
    async def main() -> None:
        stream = RequestStream("r", 1, 1)
        for i in range(1, 4):  # three steps land before the consumer reads
            stream.put(_out("ab"[: i % 3], list(range(i))))
        first = await stream.__anext__()
        assert first.outputs[0].token_ids == [0, 1, 2]  # one output, the newest, not three
        stream.put(_out("abcd", [0, 1, 2, 3], finished=True))
        assert (await stream.__anext__()).finished
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()

    asyncio.run(main())


def test_error_after_output_delivers_the_output_first():
    async def main() -> None:
        stream = RequestStream("r", 1, 1)
        stream.put(_out("a", [5]))
        stream.put(EngineDeadError("gone"))
        assert (await stream.__anext__()).outputs[0].token_ids == [5]
        with pytest.raises(EngineDeadError):
            await stream.__anext__()

    asyncio.run(main())


def test_choice_deltas_come_from_cumulative_fields():
    """The engine leaves a choice's delta_* from its last update in place (n > 1): they must not be re-sent."""
    state = ChoiceState(0)
    c = CompletionOutput(index=0, text="Hello", token_ids=[1, 2], delta_text="Hello", delta_token_ids=[1, 2])
    assert state.advance(c)[:2] == ("Hello", [1, 2])
    assert state.advance(c)[:2] == ("", [])  # same output again (stale deltas): nothing new
    c2 = CompletionOutput(index=0, text="Hello world", token_ids=[1, 2, 3], delta_text=" world", delta_token_ids=[3])
    assert state.advance(c2)[:2] == (" world", [3])


def test_prompt_forms_are_normalized():
    def prompts(p):
        return CompletionRequest.model_validate({"prompt": p}).prompts

    assert prompts("hi") == ["hi"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    for bad in ([], [True, 1], [[1], "a"], [[]], 5, None, {"a": 1}):
        with pytest.raises(ValueError):
            prompts(bad)


def test_chat_field_names_in_errors():
    req = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
         "max_completion_tokens": 0})
    assert req.messages[0].content == "ab"
    with pytest.raises(InvalidRequestError) as e:
        req.sampling_params()
    assert e.value.param == "max_completion_tokens"


def test_error_mapping():
    assert to_api_error(InvalidRequestError("bad", param="x")).status == 400
    full = to_api_error(QueueFullError("busy"))
    assert full.status == 429 and full.headers == {"Retry-After": "1"}
    assert to_api_error(EngineDeadError("down")).status == 503
    assert to_api_error(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")).status == 400


def test_metric_labels_stay_bounded():
    from floorline.server.metrics import ServerMetrics

    m = ServerMetrics("x")
    for i in range(100):
        m.record_http(f"/v1/made-up-{i}", 404)
        m.record_http(f"/v1/models/m{i}", 404)
    assert set(m.http_requests) == {("other", 404), ("/v1/models/{id}", 404)}
