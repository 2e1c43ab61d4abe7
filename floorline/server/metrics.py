"""Server metrics in the Prometheus text format (version 0.0.4), with no client library.

Everything here is touched only on the event loop (the engine thread publishes its stats as a
snapshot), so plain counters suffice.
"""

from __future__ import annotations

import bisect
from collections import Counter

from floorline.engine.async_engine import EngineStats, RequestStream
from floorline.engine.output_processor import RequestOutput

PREFIX = "floorline"
# Seconds; TTFT spans queueing + prefill, TPOT one decode step.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})


class Histogram:
    """Cumulative-bucket histogram as Prometheus exposes it."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
        lines += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]
        return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServerMetrics:
    """Counters and histograms the server updates; `render()` adds the engine's gauges."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.http_requests: Counter[tuple[str, int]] = Counter()  # (path, status)
        self.finished: Counter[str] = Counter()  # finish reason of the first choice; "abort" for cancels
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from admission to the first generated token", TTFT_BUCKETS)
        self.tpot = Histogram(f"{PREFIX}_time_per_output_token_seconds",
                              "Mean time between output tokens of a finished request (after the first)",
                              TPOT_BUCKETS)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds",
                             "Time from admission to the last token of a finished request", E2E_BUCKETS)

    # ---- hooks -------------------------------------------------------------------------------

    def record_http(self, path: str, status: int) -> None:
        # A fixed set of label values: clients must not be able to grow the table with made-up paths.
        if path.startswith("/v1/models/"):
            path = "/v1/models/{id}"
        elif path not in _ROUTES:
            path = "other"
        self.http_requests[(path, int(status))] += 1

    def on_finish(self, stream: RequestStream, out: RequestOutput, now: float) -> None:
        reason = out.outputs[0].finish_reason if out.outputs else None
        self.finished[reason or "unknown"] += 1
        self.prompt_tokens += stream.num_prompt_tokens
        num_tokens = max((len(c.token_ids) for c in out.outputs), default=0)
        self.generation_tokens += sum(len(c.token_ids) for c in out.outputs)
        if stream.first_token_time is not None:
            self.ttft.observe(stream.first_token_time - stream.arrival_time)
            if num_tokens > 1:
                self.tpot.observe((now - stream.first_token_time) / (num_tokens - 1))
        self.e2e.observe(now - stream.arrival_time)

    def on_abort(self, stream: RequestStream) -> None:
        self.finished["abort"] += 1
        self.prompt_tokens += stream.num_prompt_tokens

    # ---- exposition ----------------------------------------------------------------------------

    def render(self, stats: EngineStats, num_kv_blocks: int) -> str:
        p = PREFIX
        lines = [f"# HELP {p}_http_requests_total HTTP responses by path and status code",
                 f"# TYPE {p}_http_requests_total counter"]
        for (path, status), n in sorted(self.http_requests.items()):
            lines.append(f'{p}_http_requests_total{{path="{_label(path)}",status="{status}"}} {n}')
        lines += [f"# HELP {p}_requests_finished_total Engine requests ended, by finish reason",
                  f"# TYPE {p}_requests_finished_total counter"]
        for reason, n in sorted(self.finished.items()):
            lines.append(f'{p}_requests_finished_total{{finished_reason="{_label(reason)}"}} {n}')
        counters = [
            ("prompt_tokens_total", "Prompt tokens of ended requests", self.prompt_tokens),
            ("generation_tokens_total", "Tokens generated by finished requests", self.generation_tokens),
            ("preemptions_total", "Requests preempted (KV blocks taken back) since start", stats.num_preemptions),
            ("prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache", stats.prefix_cache_queries),
            ("prefix_cache_hits_total", "Prompt tokens found in the prefix cache", stats.prefix_cache_hits),
            ("engine_steps_total", "Engine steps run", stats.num_steps),
        ]
        for name, help_text, value in counters:
            lines += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} counter", f"{p}_{name} {value}"]
        gauges = [
            ("num_requests_running", "Sequences in the running batch", stats.num_running),
            ("num_requests_waiting", "Sequences waiting for a slot or KV blocks", stats.num_waiting),
            ("kv_cache_usage_ratio", "Fraction of KV blocks held by requests", stats.kv_cache_usage),
            ("kv_cache_blocks", "KV blocks in the pool (usable)", num_kv_blocks),
            ("prefix_cache_hit_rate", "Prefix-cache hits / queries since start", stats.prefix_cache_hit_rate),
        ]
        for name, help_text, value in gauges:
            lines += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} gauge", f"{p}_{name} {value}"]
        for hist in (self.ttft, self.tpot, self.e2e):
            lines += hist.render()
        return "\n".join(lines) + "\n"
