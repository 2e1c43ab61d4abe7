"""Malformed bodies get an OpenAI-shaped 4xx naming the problem, never a 500 or a dead server."""

from __future__ import annotations

import json
import random

import pytest

from tests.server.conftest import MODEL_NAME

httpx = pytest.importorskip("httpx")

COMPLETION = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

# (endpoint, raw body) pairs written by hand: each names one way a client gets it wrong.
RAW_CASES = [
    ("/v1/completions", b""),
    ("/v1/completions", b"{"),
    ("/v1/completions", b"null"),
    ("/v1/completions", b"[]"),
    ("/v1/completions", b'"prompt"'),
    ("/v1/completions", b"\xff\xfe\x00garbage"),
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 1}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": Infinity}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e999}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,}'),
    ("/v1/chat/completions", "{\"messages\": \"\u2603\U0001F600\"}".encode()),
]

# (endpoint, base, field, bad value, the param the error must name)
FIELD_CASES = [
    ("/v1/completions", COMPLETION, "prompt", None, "prompt"),
    ("/v1/completions", COMPLETION, "prompt", [], "prompt"),
    ("/v1/completions", COMPLETION, "prompt", [1, "a"], "prompt"),
    ("/v1/completions", COMPLETION, "prompt", [[]], "prompt"),
    ("/v1/completions", COMPLETION, "prompt", [-5], "prompt"),
    ("/v1/completions", COMPLETION, "prompt", [10**12], "prompt"),
    ("/v1/completions", COMPLETION, "prompt", {"a": 1}, "prompt"),
    ("/v1/completions", COMPLETION, "max_tokens", "16", "max_tokens"),
    ("/v1/completions", COMPLETION, "max_tokens", 0, "max_tokens"),
    ("/v1/completions", COMPLETION, "max_tokens", 10**30, "max_tokens"),
    ("/v1/completions", COMPLETION, "max_tokens", 2.5, "max_tokens"),
    ("/v1/completions", COMPLETION, "temperature", "hot", "temperature"),
    ("/v1/completions", COMPLETION, "temperature", -0.5, "temperature"),
    ("/v1/completions", COMPLETION, "top_p", 1.5, "top_p"),
    ("/v1/completions", COMPLETION, "top_k", -7, "top_k"),
    ("/v1/completions", COMPLETION, "min_p", 2, "min_p"),
    ("/v1/completions", COMPLETION, "presence_penalty", 9, "presence_penalty"),
    ("/v1/completions", COMPLETION, "frequency_penalty", -9, "frequency_penalty"),
    ("/v1/completions", COMPLETION, "repetition_penalty", 0, "repetition_penalty"),
    ("/v1/completions", COMPLETION, "seed", 2**80, "seed"),
    ("/v1/completions", COMPLETION, "seed", True, "seed"),
    ("/v1/completions", COMPLETION, "n", 0, "n"),
    ("/v1/completions", COMPLETION, "n", 10**9, "n"),
    ("/v1/completions", COMPLETION, "stop", 5, "stop"),
    ("/v1/completions", COMPLETION, "stop", [""], "stop"),
    ("/v1/completions", COMPLETION, "logprobs", 99, "logprobs"),
    ("/v1/completions", COMPLETION, "stream", "yes", "stream"),
    ("/v1/completions", COMPLETION, "stream_options", [], "stream_options"),
    ("/v1/completions", COMPLETION, "model", 12, "model"),
    ("/v1/chat/completions", CHAT, "messages", [], "messages"),
    ("/v1/chat/completions", CHAT, "messages", "hello", "messages"),
    ("/v1/chat/completions", CHAT, "messages", [{"content": "no role"}], "messages.0.role"),
    ("/v1/chat/completions", CHAT, "messages", [{"role": "wizard", "content": "x"}], "messages.0.role"),
    ("/v1/chat/completions", CHAT, "messages", [{"role": "user", "content": 5}], "messages.0.content"),
    ("/v1/chat/completions", CHAT, "messages", [{"role": "user", "content": [{"type": "image_url"}]}],
     "messages.0.content"),
    ("/v1/chat/completions", CHAT, "messages", [None], "messages.0"),
    ("/v1/chat/completions", CHAT, "max_completion_tokens", -1, "max_completion_tokens"),
    ("/v1/chat/completions", CHAT, "top_logprobs", 3, "top_logprobs"),
    ("/v1/chat/completions", CHAT, "logprobs", 3, "logprobs"),
    ("/v1/chat/completions", CHAT, "chat_template_kwargs", {"bos_token": "<|im_start|>"}, "chat_template_kwargs"),
]


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        yield c


def _check_4xx(r, param=None) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err


@pytest.mark.parametrize("path,body", RAW_CASES)
def test_raw_bodies(http, path, body):
    _check_4xx(http.post(path, content=body, headers={"content-type": "application/json"}))


@pytest.mark.parametrize("path,base,field,value,param", FIELD_CASES)
def test_bad_fields_name_the_field(http, path, base, field, value, param):
    _check_4xx(http.post(path, json={**base, field: value}), param)


def test_missing_required_fields(http):
    _check_4xx(http.post("/v1/completions", json={"model": MODEL_NAME}), "prompt")
    _check_4xx(http.post("/v1/chat/completions", json={"model": MODEL_NAME}), "messages")


def test_random_mutations(http, live_server):
    """Random values of random JSON types in every field: 200 or 4xx, never 5xx."""
    rng = random.Random(0)
    values = [None, True, -1, 0, 3, 2**63, -(2**70), 0.5, -1e308, 1e-320, "", "x" * 50, "\u0000\u202e\U0001F4A9",
              [], [1], ["a"], [[1, 2]], {}, {"role": "user"}, [{"role": "user", "content": "hi"}]]
    fields = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "logprobs",
              "stream", "min_p", "presence_penalty", "stop_token_ids", "min_tokens", "ignore_eos",
              "stream_options", "echo", "top_logprobs", "max_completion_tokens", "chat_template_kwargs"]
    for _ in range(60):
        path, base = rng.choice([("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
        body = dict(base, max_tokens=2)
        for field in rng.sample(fields, 3):
            body[field] = rng.choice(values)
        if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool):
            body["max_tokens"] = max(-1, min(body["max_tokens"], 3))  # keep accepted requests short
        body["stream"] = False
        r = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code == 200 or 400 <= r.status_code < 500, (body, r.status_code, r.text)
        if r.status_code != 200:
            _check_4xx(r)
    assert http.get("/health").status_code == 200
    assert not any(live_server.wait_idle().values())
