"""A live `floorline serve` on 127.0.0.1 (bundled model, CPU), run by uvicorn on a thread of this process.

In-process so tests can look at the engine itself (KV blocks, request tables) after a run.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from floorline.engine.async_engine import AsyncLLMEngine
from floorline.engine.engine import EngineArgs, LLMEngine
from floorline.server.app import ServerConfig, build_app

MODEL_NAME = "smollm2-test"
MAX_MODEL_LEN = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    engine: AsyncLLMEngine
    config: ServerConfig
    server: Any  # uvicorn.Server
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.engine._loop

    def on_engine(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """`fn(engine)` run on the engine thread (between steps), from the test thread."""
        return asyncio.run_coroutine_threadsafe(self.engine.call(fn), self.loop).result(timeout=30)

    def engine_state(self) -> dict[str, int]:
        def read(e: LLMEngine) -> dict[str, int]:
            kv = e.scheduler.kv
            kv.check_invariants()
            return {"engine_requests": len(e.requests), "scheduler_requests": len(e.scheduler.requests),
                    "held_blocks": kv.num_usable_blocks - kv.num_free_blocks, "runner_requests": len(e.runner.requests)}
        state = self.on_engine(read)
        state["async_streams"] = self.engine.num_unfinished
        return state

    def wait_idle(self, timeout: float = 20.0) -> dict[str, int]:
        """Polls until every count is zero (aborts and the runner's idle step take a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.engine_state()
            if not any(state.values()) or time.monotonic() > deadline:
                return state
            time.sleep(0.05)


def start_server(engine_args: EngineArgs, config: ServerConfig, max_queued_requests: int = 64) -> LiveServer:
    engine = AsyncLLMEngine.from_engine_args(engine_args, max_queued_requests)
    app = build_app(engine, config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", engine, config, server, thread)


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server():
    args = EngineArgs(device="cpu", max_model_len=MAX_MODEL_LEN, num_kv_blocks=384, max_num_seqs=64)
    live = start_server(args, ServerConfig(model_name=MODEL_NAME, max_body_bytes=256 * 1024))
    yield live
    stop_server(live)


@pytest.fixture
def client(live_server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0, timeout=60)
