"""AsyncLLMEngine: an asyncio front over LLMEngine for the server (one engine thread, a stream per request).

Why a dedicated thread rather than `run_in_executor(step)` from an asyncio task: LLMEngine is not
thread-safe, so every engine call (add, abort, step, stats) must happen on one thread. With a
thread that owns the engine, adds and aborts are commands queued to it and applied between steps,
so no lock ever wraps the engine and the event loop never waits for a step to end before it can
accept, cancel or stream. An executor would give the same overlap but would let calls from the
loop (an abort during a step) race the step unless each were funnelled through it anyway; the
thread also sleeps on a condition when there is no work instead of polling.

Outputs go back to the loop with `call_soon_threadsafe`, once per step for the whole batch.

`from_engine_args` builds the LLMEngine on the engine thread too, so that in `floorline serve` no
other thread ever runs a torch op. On CPU this matters: each thread that runs ops gets its own
OpenMP pool, and with two pools on few cores libgomp falls back to sleeping between parallel
regions, which made every small op ~10x slower (measured: 16 us -> 160 us per attention op).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from floorline.engine.engine import EngineArgs, LLMEngine
from floorline.engine.output_processor import RequestOutput
from floorline.errors import FloorlineError, InvalidRequestError
from floorline.sampling_params import SamplingParams

logger = logging.getLogger("floorline.async_engine")


class QueueFullError(FloorlineError):
    """Too many requests are waiting; the client should retry later (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDeadError(FloorlineError):
    """The engine loop stopped (a failed step, or shutdown); no request can run (HTTP 503)."""


@dataclass
class EngineStats:
    """A snapshot published by the engine thread after each step (read by /metrics without locks)."""

    num_running: int = 0
    num_waiting: int = 0
    num_preemptions: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_hit_rate: float = 0.0
    num_steps: int = 0


class RequestStream:
    """The outputs of one request; ends after the finished output or an error.

    Outputs are cumulative (`text`, `token_ids`, `logprobs` hold everything so far), so a consumer
    that falls behind gets only the newest one: an unread output is replaced, never queued. Memory
    per request stays one output however slow the client reads (a queue of cumulative outputs
    would grow with the square of the length). Read deltas off the cumulative fields, not `delta_*`.
    """

    def __init__(self, request_id: str, num_seqs: int, num_prompt_tokens: int):
        self.request_id = request_id
        self.num_seqs = num_seqs
        self.num_prompt_tokens = num_prompt_tokens
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None
        self.finished = False  # the consumer has seen the end
        self._pending: RequestOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException) -> None:
        if isinstance(item, BaseException):
            self._error = item
        else:
            self._pending = item
        self._ready.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        while self._pending is None and self._error is None:
            self._ready.clear()
            await self._ready.wait()
        if self._pending is not None:  # outputs that arrived before an error are still delivered
            out, self._pending = self._pending, None
            self.finished = out.finished
            return out
        self.finished = True
        raise self._error


# Hooks the server installs to observe request lifecycles (metrics); all run on the event loop.
OnFinish = Callable[[RequestStream, RequestOutput], None]
OnAbort = Callable[[RequestStream], None]


class AsyncLLMEngine:
    """Runs an LLMEngine on its own thread; `generate()` streams a request's outputs to a coroutine.

    Capacity: at most `max_num_seqs + max_queued_requests` sequences (n counts each) are admitted
    at once; beyond that `add_request` raises QueueFullError, so memory stays bounded.
    """

    def __init__(self, engine: LLMEngine, max_queued_requests: int = 256):
        if max_queued_requests < 0:
            raise FloorlineError(f"max_queued_requests must be >= 0, got {max_queued_requests}")
        self.engine = engine
        self.max_queued_requests = max_queued_requests
        self.max_admitted_seqs = engine.args.max_num_seqs + max_queued_requests
        self.stats = EngineStats()
        self.on_finish: list[OnFinish] = []
        self.on_abort: list[OnAbort] = []
        self._streams: dict[str, RequestStream] = {}  # admitted, unfinished; touched only on the loop
        self._num_admitted_seqs = 0
        self._commands: deque[tuple[str, Any]] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_engine_args(cls, args: EngineArgs, max_queued_requests: int = 256) -> AsyncLLMEngine:
        """Builds the LLMEngine on the thread that will step it (see the module note on OpenMP)."""
        built: concurrent.futures.Future[LLMEngine] = concurrent.futures.Future()
        owner: queue.Queue[AsyncLLMEngine | None] = queue.Queue()

        def thread_main() -> None:
            try:
                built.set_result(LLMEngine(args))
            except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
                built.set_exception(e)
                return
            front = owner.get()
            if front is not None:
                front._run()

        thread = threading.Thread(target=thread_main, name="floorline-engine", daemon=True)
        thread.start()
        try:
            engine = built.result()
            front = cls(engine, max_queued_requests)
        except BaseException:
            owner.put(None)
            raise
        front._thread = thread
        owner.put(front)
        return front

    # ---- lifecycle (event loop) ----------------------------------------------------------------

    def start(self) -> None:
        """Starts the engine thread; outputs are delivered to the running event loop."""
        with self._cv:
            if self._loop is not None:
                return
            self._loop = asyncio.get_running_loop()
            self._cv.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="floorline-engine", daemon=True)
            self._thread.start()

    @property
    def is_alive(self) -> bool:
        return (self._loop is not None and self._thread is not None and self._thread.is_alive()
                and self._error is None)

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def num_unfinished(self) -> int:
        """Requests admitted and not yet finished or aborted (as the event loop sees them)."""
        return len(self._streams)

    async def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stops accepting, lets in-flight requests finish (up to the timeout), aborts the rest, stops."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self._streams and self.is_alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self._streams):
            self.abort(request_id, reason="the server is shutting down")
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # ---- requests (event loop) -----------------------------------------------------------------

    async def add_request(self, request_id: str, prompt_token_ids: list[int],
                          params: SamplingParams) -> RequestStream:
        """Admits a request; raises QueueFullError, EngineDeadError or InvalidRequestError."""
        if self._error is not None or not self._accepting or self._loop is None:
            raise EngineDeadError("the engine is not running" if self._accepting else "the server is shutting down")
        if params.n > self.max_admitted_seqs:
            raise InvalidRequestError(
                f"n={params.n} exceeds the {self.max_admitted_seqs} sequences this server can hold at once",
                param="n")
        if self._num_admitted_seqs + params.n > self.max_admitted_seqs:
            raise QueueFullError(
                f"the server is at capacity ({self._num_admitted_seqs} sequences running or queued, "
                f"limit {self.max_admitted_seqs}); retry later")
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        stream = RequestStream(request_id, params.n, len(prompt_token_ids))
        self._streams[request_id] = stream
        self._num_admitted_seqs += params.n
        done = self._loop.create_future()
        self._submit("add", (request_id, list(prompt_token_ids), params, done))
        try:
            await asyncio.shield(done)  # shielded: a cancelled caller still learns nothing is leaked
        except BaseException:
            self._forget(request_id)
            if not done.done() or done.exception() is None:
                self._submit("abort", request_id)  # cancelled while queued: the add may still land
            raise
        return stream

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Admits a request and yields its outputs; leaving early (break, cancel, error) aborts it."""
        stream = await self.add_request(request_id, prompt_token_ids, params)
        try:
            async for out in stream:
                yield out
        finally:
            if not stream.finished:
                self.abort(request_id)

    def abort(self, request_id: str, reason: str | None = None) -> None:
        """Aborts a request (event loop only): its stream ends, the engine frees its KV blocks."""
        stream = self._forget(request_id)
        if stream is None:
            return
        if reason is not None and not stream.finished:
            stream.put(EngineDeadError(reason))
        self._submit("abort", request_id)
        for hook in self.on_abort:
            try:
                hook(stream)
            except Exception:  # metrics must never break serving
                logger.exception("on_abort hook failed")

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Runs `fn(engine)` on the engine thread between steps and returns its result."""
        if not self.is_alive:
            raise EngineDeadError("the engine is not running")
        done = self._loop.create_future()
        self._submit("call", (fn, done))
        return await done

    def _forget(self, request_id: str) -> RequestStream | None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            self._num_admitted_seqs -= stream.num_seqs
        return stream

    def _submit(self, kind: str, payload: Any) -> None:
        with self._cv:
            self._commands.append((kind, payload))
            self._cv.notify()

    # ---- delivery (event loop) -----------------------------------------------------------------

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        now = time.perf_counter()
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue  # aborted while the step ran
            if stream.first_token_time is None and any(c.token_ids for c in out.outputs):
                stream.first_token_time = now
            stream.put(out)
            if out.finished:
                self._forget(out.request_id)
                for hook in self.on_finish:
                    try:
                        hook(stream, out)
                    except Exception:  # metrics must never break serving
                        logger.exception("on_finish hook failed")

    def _fail_all(self, error: BaseException) -> None:
        for request_id in list(self._streams):
            stream = self._forget(request_id)
            stream.put(EngineDeadError(f"the engine failed: {type(error).__name__}: {error}"))

    @staticmethod
    def _resolve(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    # ---- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        needs_idle_step = False
        try:
            while True:
                with self._cv:
                    # Before start() there is no loop to deliver to: wait for it (or for shutdown).
                    while not self._stopping and (self._loop is None or not (
                            self._commands or engine.has_unfinished_requests() or needs_idle_step)):
                        self._cv.wait()
                    commands = list(self._commands)
                    self._commands.clear()
                    stopping = self._stopping
                for kind, payload in commands:
                    self._apply(kind, payload)
                if engine.has_unfinished_requests():
                    outputs = engine.step()
                    needs_idle_step = True
                    self._publish(outputs)
                elif needs_idle_step:
                    # An idle step hands the finished ids to the runner, which then drops their state.
                    engine.step()
                    needs_idle_step = False
                    self._publish([])
                elif stopping:
                    return
        except BaseException as e:
            logger.exception("the engine loop failed")
            self._error = e
            if self._loop is None:
                return
            self._loop.call_soon_threadsafe(self._fail_all, e)
            with self._cv:
                for kind, payload in self._commands:
                    if kind in ("add", "call"):
                        self._loop.call_soon_threadsafe(self._resolve, payload[-1], None,
                                                        EngineDeadError(f"the engine failed: {e}"))
                self._commands.clear()

    def _apply(self, kind: str, payload: Any) -> None:
        loop = self._loop
        if kind == "add":
            request_id, prompt_ids, params, done = payload
            try:
                self.engine.add_request(prompt_ids, params, request_id)
            except Exception as e:  # noqa: BLE001 - a refused request must not stop the loop
                loop.call_soon_threadsafe(self._resolve, done, None, e)
            else:
                loop.call_soon_threadsafe(self._resolve, done, None)
        elif kind == "abort":
            self.engine.abort_request(payload)
        elif kind == "call":
            fn, done = payload
            try:
                result = fn(self.engine)
            except Exception as e:  # noqa: BLE001 - handed back to the caller
                loop.call_soon_threadsafe(self._resolve, done, None, e)
            else:
                loop.call_soon_threadsafe(self._resolve, done, result)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            for c in out.outputs:
                if c.logprobs is not None:
                    c.logprobs = list(c.logprobs)  # the engine keeps extending its own list
        s = self.engine.scheduler.get_stats()
        self.stats = EngineStats(**dataclasses.asdict(s), num_steps=self.stats.num_steps + 1)
        if outputs:
            self._loop.call_soon_threadsafe(self._deliver, outputs)
