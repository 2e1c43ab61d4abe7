"""64 concurrent streaming clients, a quarter of them hanging up mid-stream: every finished stream is
exactly the solo greedy result, and afterwards no KV block or request state is left behind."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.server.conftest import MODEL_NAME

httpx = pytest.importorskip("httpx")

# Few distinct prompts: the solo reference runs them one at a time (the slow part on 2 cores).
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4,",
    "Water boils at",
]
NUM_CLIENTS = 64
MAX_TOKENS = 10


def _body(prompt: str, stream: bool) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}


async def _stream_one(client: httpx.AsyncClient, prompt: str, cancel_after: int | None) -> dict | None:
    """The streamed text, usage and finish reason; None when this client hung up on purpose."""
    text, finish, usage, num_frames = "", None, None, 0
    async with client.stream("POST", "/v1/completions", json=_body(prompt, True)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            frame = json.loads(line[6:])
            assert "error" not in frame, frame
            if frame.get("usage"):
                usage = frame["usage"]
            for c in frame["choices"]:
                text += c["text"]
                finish = c["finish_reason"] or finish
                num_frames += 1
            if cancel_after is not None and num_frames >= cancel_after:
                return None  # leaving the block closes the connection mid-stream
    return {"text": text, "finish_reason": finish, "completion_tokens": usage["completion_tokens"]}


async def _run_clients(url: str) -> tuple[list[dict | None], float]:
    limits = httpx.Limits(max_connections=NUM_CLIENTS, max_keepalive_connections=NUM_CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*[
            _stream_one(client, PROMPTS[i % len(PROMPTS)], cancel_after=(2 + i % 3) if i % 4 == 3 else None)
            for i in range(NUM_CLIENTS)])
        return list(results), time.perf_counter() - t0


def test_concurrent_streams_match_solo_and_free_everything(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120) as http:
        solo = {}
        for p in PROMPTS:  # one at a time: the reference
            r = http.post("/v1/completions", json=_body(p, False)).json()
            solo[p] = {"text": r["choices"][0]["text"], "finish_reason": r["choices"][0]["finish_reason"],
                       "completion_tokens": r["usage"]["completion_tokens"]}
    results, elapsed = asyncio.run(_run_clients(live_server.url))
    done = [(i, res) for i, res in enumerate(results) if res is not None]
    assert len(done) == NUM_CLIENTS - NUM_CLIENTS // 4
    for i, res in done:
        assert res == solo[PROMPTS[i % len(PROMPTS)]], (i, res)
    num_tokens = sum(res["completion_tokens"] for _, res in done)
    print(f"\nload: {NUM_CLIENTS} streaming clients ({NUM_CLIENTS // 4} hung up), {elapsed:.1f} s, "
          f"{num_tokens} tokens delivered to finished clients, {num_tokens / elapsed:.1f} tokens/s")
    state = live_server.wait_idle()
    assert not any(state.values()), state
    assert live_server.engine.stats.num_running == 0 and live_server.engine.stats.num_waiting == 0
