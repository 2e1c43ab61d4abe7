"""The official `openai` client against the live server: both endpoints, streaming, stops, seeds, n, logprobs."""

from __future__ import annotations

import pytest

from tests.server.conftest import MAX_MODEL_LEN, MODEL_NAME

openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_completion_and_stream_agree(client):
    kw = dict(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0)
    whole = client.completions.create(**kw)
    choice = whole.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 8 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 8
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8 and not chunks[-1].choices


def test_chat_and_stream_agree(client):
    whole = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_completion_tokens=10, temperature=0)
    msg = whole.choices[0].message
    assert msg.role == "assistant" and msg.content
    stream = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=10, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_string_is_cut_and_reported(client):
    base = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0]
    stop = base.text.strip().split(",")[1].strip()  # a number the model will write
    assert stop
    out = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                    stop=[stop, "never-appears"]).choices[0]
    assert out.finish_reason == "stop" and stop not in out.text
    assert base.text.startswith(out.text)
    streamed = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == out.text


def test_same_seed_same_text(client):
    kw = dict(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=1.0, top_p=0.95)
    a = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    others = {client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1  # seeds matter


def test_n2_and_logprobs(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=5, n=2, temperature=1.0,
                                         seed=7, logprobs=True, top_logprobs=3)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)
    for c in out.choices:
        for entry in c.logprobs.content:
            tops = [t.logprob for t in entry.top_logprobs]
            assert entry.logprob <= 0 and len(tops) == 3 and tops == sorted(tops, reverse=True)
        text = b"".join(bytes(e.bytes) for e in c.logprobs.content).decode("utf-8", "replace")
        assert text == c.message.content
    comp = client.completions.create(model=MODEL_NAME, prompt=["Hello", "Goodbye"], max_tokens=4, n=2,
                                     temperature=0, logprobs=2)
    assert [c.index for c in comp.choices] == [0, 1, 2, 3]
    assert comp.choices[0].text == comp.choices[1].text  # greedy: both choices agree
    lp = comp.choices[2].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == comp.choices[2].text and lp.text_offset[0] == 0


def test_streamed_n2_covers_both_choices(client):
    chunks = list(client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=6, n=2,
                                            temperature=1.0, seed=3, stream=True))
    texts = {0: "", 1: ""}
    finishes = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert finishes == {0: "length", 1: "length"} and all(texts.values())


def test_token_id_prompt(client):
    text = client.completions.create(model=MODEL_NAME, prompt="Hello there", max_tokens=4, temperature=0)
    ids = client.completions.create(model=MODEL_NAME, prompt=[19556, 665], max_tokens=4, temperature=0)
    assert ids.choices[0].text and ids.usage.prompt_tokens == 2
    assert text.choices[0].text  # both forms accepted
    echoed = client.completions.create(model=MODEL_NAME, prompt="Hello there", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == "Hello there" + text.choices[0].text


def test_errors_map_to_openai_exceptions(client, live_server):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=[5] * MAX_MODEL_LEN, max_tokens=1)
    assert str(MAX_MODEL_LEN) in e.value.body["message"] and e.value.body["code"] == "context_length_exceeded"
    live_server.config.api_key = "sekrit"
    try:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        keyed = openai.OpenAI(base_url=live_server.base_url, api_key="sekrit", max_retries=0)
        assert keyed.models.list().data[0].id == MODEL_NAME
    finally:
        live_server.config.api_key = None
