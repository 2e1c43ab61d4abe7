"""`floorline bench serve`: streaming clients against a live OpenAI-compatible server, arriving as a
seeded Poisson process; prints TTFT, TPOT, ITL and throughput percentiles in a table."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field

from floorline.errors import FloorlineError

# Prompt words: common English, so token counts per word stay near 1-2 on any tokenizer.
_WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night "
    "point home water room mother area money story fact month lot right study book eye job word business "
    "issue side kind head house service friend father power hour game line end member law car city "
    "community name president team minute idea kid body information back parent face others level office "
    "door health person art war history party result change morning reason research girl guy "
).split()


@dataclass
class BenchConfig:
    url: str  # server root, e.g. http://127.0.0.1:8000
    num_prompts: int = 100
    request_rate: float = math.inf  # requests/s; inf sends all at once
    seed: int = 0
    input_len: int = 32  # words per prompt
    output_len: int = 64  # max_tokens (with ignore_eos, so every request generates exactly this many)
    endpoint: str = "completions"  # or "chat"
    model: str | None = None  # None: the first model /v1/models lists
    max_concurrency: int | None = None
    api_key: str | None = None
    timeout_s: float = 600.0


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float | None = None
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)  # gaps between content frames after the first
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


def arrival_gaps(num: int, rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: exponential gaps (a Poisson process), all 0 for rate inf."""
    if math.isinf(rate):
        return [0.0] * num
    rng = random.Random(seed)
    return [rng.expovariate(rate) for _ in range(num)]


def make_prompts(num: int, input_len: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [" ".join(rng.choice(_WORDS) for _ in range(input_len)) for _ in range(num)]


def _body(cfg: BenchConfig, model: str, prompt: str) -> dict:
    body = {"model": model, "max_tokens": cfg.output_len, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def _one(client, cfg: BenchConfig, model: str, prompt: str) -> RequestResult:
    path = "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions"
    t0 = time.perf_counter()
    res = RequestResult(ok=False)
    last = None
    try:
        async with client.stream("POST", path, json=_body(cfg, model, prompt)) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                frame = json.loads(line[6:])
                if "error" in frame:
                    res.error = frame["error"].get("message", "error")
                    return res
                if frame.get("usage"):
                    res.prompt_tokens = frame["usage"]["prompt_tokens"]
                    res.output_tokens = frame["usage"]["completion_tokens"]
                has_content = any((c.get("text") or (c.get("delta") or {}).get("content"))
                                  for c in frame.get("choices", []))
                if has_content:
                    now = time.perf_counter()
                    if res.ttft_s is None:
                        res.ttft_s = now - t0
                    else:
                        res.itl_s.append(now - last)
                    last = now
        res.latency_s = time.perf_counter() - t0
        res.ok = res.ttft_s is not None
        if not res.ok:
            res.error = "no tokens received"
    except Exception as e:  # a failed request is a result, not a crash of the benchmark
        res.error = f"{type(e).__name__}: {e}"
    return res


async def _resolve_model(client, cfg: BenchConfig) -> str:
    if cfg.model:
        return cfg.model
    r = await client.get("/v1/models")
    if r.status_code != 200:
        raise FloorlineError(f"GET {cfg.url}/v1/models answered {r.status_code}: {r.text[:200]}")
    return r.json()["data"][0]["id"]


async def run_bench(cfg: BenchConfig) -> tuple[list[RequestResult], float, str]:
    """Runs every request; returns the results (in send order), the wall time and the model name."""
    try:
        import httpx
    except ModuleNotFoundError as e:
        raise FloorlineError("floorline bench serve needs httpx: pip install 'floorline[server]'") from e
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limit = cfg.max_concurrency or cfg.num_prompts
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(base_url=cfg.url.rstrip("/"), headers=headers, timeout=cfg.timeout_s,
                                 limits=limits) as client:
        try:
            model = await _resolve_model(client, cfg)
        except httpx.HTTPError as e:
            raise FloorlineError(f"cannot reach the server at {cfg.url}: {e}") from None
        gate = asyncio.Semaphore(limit)

        async def gated(prompt: str) -> RequestResult:
            async with gate:
                return await _one(client, cfg, model, prompt)

        tasks = []
        t0 = time.perf_counter()
        for gap, prompt in zip(arrival_gaps(cfg.num_prompts, cfg.request_rate, cfg.seed),
                               make_prompts(cfg.num_prompts, cfg.input_len, cfg.seed)):
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(gated(prompt)))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - t0, model


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(results: list[RequestResult], duration_s: float) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    series = {
        "ttft_ms": [r.ttft_s * 1e3 for r in ok],
        "tpot_ms": [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None],
        "itl_ms": [g * 1e3 for r in ok for g in r.itl_s],
        "e2e_s": [r.latency_s for r in ok],
    }
    stats = {name: {"mean": sum(v) / len(v) if v else None, **{f"p{q}": percentile(v, q) for q in (50, 90, 99)}}
             for name, v in series.items()}
    return {
        "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration_s, "input_tokens": in_tokens, "output_tokens": out_tokens,
        "request_throughput": len(ok) / duration_s if duration_s > 0 else 0.0,
        "output_throughput": out_tokens / duration_s if duration_s > 0 else 0.0,
        "total_throughput": (in_tokens + out_tokens) / duration_s if duration_s > 0 else 0.0,
        "stats": stats,
    }


def format_table(cfg: BenchConfig, model: str, summary: dict, command: str) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rate = "inf (all at once)" if math.isinf(cfg.request_rate) else f"{cfg.request_rate:g} req/s (Poisson)"
    lines = [
        f"# floorline bench serve — {time.strftime('%Y-%m-%d')}",
        f"# command: {command}",
        f"# server: {cfg.url} | model: {model} | endpoint: {cfg.endpoint} | requests: {cfg.num_prompts} | "
        f"rate: {rate}, seed {cfg.seed} | max concurrency: {cfg.max_concurrency or 'none'} | "
        f"input: {cfg.input_len} words | output: {cfg.output_len} tokens",
        f"{'metric':<16} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9}",
    ]
    names = {"ttft_ms": "TTFT (ms)", "tpot_ms": "TPOT (ms)", "itl_ms": "ITL (ms)", "e2e_s": "E2E latency (s)"}
    for key, label in names.items():
        s = summary["stats"][key]
        lines.append(f"{label:<16} {f(s['mean']):>9} {f(s['p50']):>9} {f(s['p90']):>9} {f(s['p99']):>9}")
    lines += [
        f"completed: {summary['completed']} | failed: {summary['failed']} | duration: {summary['duration_s']:.2f} s",
        f"throughput: {summary['request_throughput']:.2f} req/s | output {summary['output_throughput']:.1f} tok/s | "
        f"total {summary['total_throughput']:.1f} tok/s | tokens in {summary['input_tokens']}, "
        f"out {summary['output_tokens']}",
    ]
    lines += [f"error: {e}" for e in summary["errors"]]
    return "\n".join(lines)


def bench_config_dict(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["request_rate"] = None if math.isinf(cfg.request_rate) else cfg.request_rate
    d.pop("api_key", None)
    return d
