"""The scheduler: which requests run in each step and how many tokens each (no torch).

Continuous batching under a token budget and a cap on running requests. Running requests go
first, in arrival order (decodes and unfinished chunked prefills), then waiting ones, FCFS.
When the KV pool runs dry the newest running request is preempted: its blocks are freed and it
is recomputed later from its prompt and the tokens it already generated (prefix caching usually
makes that cheap). A step that preempted admits nobody, so the freed blocks go to the requests
already running.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from floorline.config import SchedulerConfig
from floorline.engine.kv_cache import KVCacheManager
from floorline.engine.outputs import (
    CachedRequestData,
    NewRequestData,
    RunnerOutput,
    SchedulerOutput,
)
from floorline.engine.request import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    Request,
    RequestStatus,
    RequestUpdate,
)
from floorline.errors import FloorlineError, InvalidRequestError


@dataclass
class SchedulerStats:
    num_running: int
    num_waiting: int
    num_preemptions: int  # since start
    kv_cache_usage: float  # fraction of usable blocks held
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    prefix_cache_hit_rate: float


class Scheduler:
    """Decides each step's batch and applies each step's sampled tokens."""

    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool,
    ) -> None:
        cfg = scheduler_config
        if not cfg.enable_chunked_prefill and cfg.max_num_batched_tokens < cfg.max_model_len:
            # A preempted request resumes with all its tokens in one step; without chunking that
            # step must be able to hold any sequence the context allows.
            raise FloorlineError(
                f"max_num_batched_tokens ({cfg.max_num_batched_tokens}) must be >= max_model_len "
                f"({cfg.max_model_len}) when chunked prefill is off"
            )
        self.config = cfg
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching)
        # The pool bounds a sequence like the context does: the last sampled token needs no KV,
        # so a request that has the pool to itself can always reach this length.
        pool_tokens = self.kv.num_usable_blocks * block_size
        self.max_seq_len = min(cfg.max_model_len, pool_tokens + 1)

        self.requests: dict[str, Request] = {}  # every unfinished request
        self.waiting: list[Request] = []  # sorted by arrival
        self.running: list[Request] = []  # sorted by arrival
        self._arrival: dict[str, int] = {}  # request id -> arrival sequence number
        self._counter = itertools.count()
        self._finished_ids: set[str] = set()  # finished since the last step; the runner drops them
        self.num_preemptions = 0

    # ---- requests in and out ----------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queues a request; raises InvalidRequestError (adding nothing) if it can never run."""
        rid = request.request_id
        n = request.num_prompt_tokens
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in use")
        if n == 0:
            raise InvalidRequestError("the prompt is empty; it needs at least one token")
        limit = self.config.max_model_len - 1
        if n > limit:
            raise InvalidRequestError(
                f"the prompt has {n} tokens; at most {limit} are accepted "
                f"(max_model_len {self.config.max_model_len} minus one for the output)"
            )
        needed = self.kv.blocks_needed(n)
        if needed > self.kv.num_usable_blocks:
            raise InvalidRequestError(
                f"the prompt has {n} tokens and needs {needed} KV blocks of "
                f"{self.kv.block_size}; the KV cache has only {self.kv.num_usable_blocks} blocks"
            )
        request.status = RequestStatus.WAITING
        self.requests[rid] = request
        self._arrival[rid] = next(self._counter)
        self.waiting.append(request)  # newest arrival: the end keeps the order

    def abort_requests(self, request_ids: Iterable[str]) -> None:
        """Drops requests, running or waiting, freeing their blocks now; ignores unknown ids."""
        self.finish_requests(request_ids, FINISH_ABORT)

    def finish_requests(
        self, request_ids: Iterable[str], reason: str, stop_reason: int | str | None = None
    ) -> None:
        """Ends requests for a reason found outside (a stop string, an abort)."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in list(request_ids):
            request = self.requests.get(rid)
            if request is None:
                continue  # already finished
            if request.status is RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._finish(request, reason, stop_reason)

    def _finish(self, request: Request, reason: str, stop_reason: int | str | None) -> None:
        if request.status is RequestStatus.RUNNING:
            self._finished_ids.add(request.request_id)  # only the runner's requests
        self.kv.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.stop_reason = stop_reason
        del self.requests[request.request_id]
        del self._arrival[request.request_id]

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_request(self, request_id: str) -> Request | None:
        """The unfinished request with this id (finished ones are forgotten)."""
        return self.requests.get(request_id)

    # ---- one step ---------------------------------------------------------------------------

    def schedule(self, ahead: bool = False) -> SchedulerOutput:
        """Picks this step's requests and token counts, allocating their KV blocks.

        `ahead=True` schedules while the previous step is still in flight (async scheduling): a
        request's pending sampled token is a placeholder the runner fills on the device. Such a
        step never preempts (in-flight KV would be lost) and skips requests that are not
        `async_safe` or whose in-flight token may already be their last.
        """
        out = SchedulerOutput(finished_request_ids=self._finished_ids)
        self._finished_ids = set()
        budget = self.config.max_num_batched_tokens

        # Running requests first. A victim is always the newest, i.e. at or after index i, so a
        # request scheduled earlier in this loop is never preempted.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            start = request.num_computed_tokens + request.num_inflight_tokens
            remaining = request.num_tokens + request.num_placeholders - start
            if remaining <= 0 or (request.num_placeholders and not self._may_run_ahead(request)):
                i += 1
                continue
            num_new = min(remaining, budget)
            while (new_blocks := self.kv.allocate_slots(request, num_new)) is None:
                if ahead:
                    break
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted_request_ids.add(victim.request_id)
                if victim is request:
                    break
            if new_blocks is None:
                break  # no room: preempted itself (the last running request), or ahead
            out.cached_requests.append(CachedRequestData(request.request_id, new_blocks, start))
            out.num_scheduled_tokens[request.request_id] = num_new
            self._mark_scheduled(request, start, num_new)
            budget -= num_new
            i += 1

        if not out.preempted_request_ids:
            self._admit_waiting(out, budget)
        return out

    def _may_run_ahead(self, request: Request) -> bool:
        """A request with a token in flight runs again only if that token cannot end it."""
        params = request.sampling_params
        num_out = request.num_output_tokens + request.num_placeholders
        if params.max_tokens is not None and num_out >= params.max_tokens:
            return False
        return request.async_safe and request.num_tokens + request.num_placeholders < self.max_seq_len

    @staticmethod
    def _mark_scheduled(request: Request, start: int, num_new: int) -> None:
        request.num_inflight_tokens += num_new
        if start + num_new == request.num_tokens + request.num_placeholders:
            request.num_placeholders += 1  # this step samples a token

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admits waiting requests in arrival order while budget, seats and blocks last."""
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            computed_blocks, num_cached = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_cached
            if num_new > budget:
                if not self.config.enable_chunked_prefill:
                    break  # FCFS: nobody overtakes the head of the queue
                num_new = budget
            new_blocks = self.kv.allocate_slots(request, num_new, computed_blocks)
            if new_blocks is None:
                break
            self.waiting.pop(0)
            self._insert_by_arrival(self.running, request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_cached
            out.new_requests.append(
                NewRequestData(
                    request_id=request.request_id,
                    token_ids=list(request.all_token_ids),
                    num_prompt_tokens=request.num_prompt_tokens,
                    sampling_params=request.sampling_params,
                    block_ids=list(request.block_ids),
                    num_computed_tokens=num_cached,
                )
            )
            out.num_scheduled_tokens[request.request_id] = num_new
            self._mark_scheduled(request, num_cached, num_new)
            budget -= num_new

    def _preempt(self, request: Request) -> None:
        """Takes a running request's blocks; it waits, in arrival order, to be recomputed."""
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_inflight_tokens = request.num_placeholders = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._insert_by_arrival(self.waiting, request)

    def _insert_by_arrival(self, queue: list[Request], request: Request) -> None:
        bisect.insort(queue, request, key=lambda r: self._arrival[r.request_id])

    # ---- results of a step ------------------------------------------------------------------

    def update(
        self, scheduler_output: SchedulerOutput, runner_output: RunnerOutput
    ) -> list[RequestUpdate]:
        """Applies a step's results: computed tokens, sampled tokens, stops. One update per
        request that got a token (its `finish_reason` is set when it finished)."""
        updates: list[RequestUpdate] = []
        sampled = runner_output.sampled_token_ids
        for rid, num_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self.requests.get(rid)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted since the step was scheduled
            request.num_computed_tokens += num_tokens
            request.num_inflight_tokens -= num_tokens
            self.kv.cache_full_blocks(request)
            if request.num_computed_tokens < request.num_tokens:
                continue  # a prefill chunk: no token yet
            request.num_placeholders -= 1
            token_id = sampled.get(rid)
            if token_id is None:
                # Scheduling it again would compute zero tokens forever: fail loudly instead.
                raise RuntimeError(f"the runner sampled no token for request {rid!r}")
            logprob = runner_output.logprobs.get(rid)
            request.append_output_token(token_id, logprob)
            reason, stop_reason = self._check_stop(request)
            if reason is not None:
                self.running.remove(request)
                self._finish(request, reason, stop_reason)
            logprobs = [logprob] if logprob is not None else []
            updates.append(RequestUpdate(rid, [token_id], logprobs, reason, stop_reason))
        return updates

    def _check_stop(self, request: Request) -> tuple[str | None, int | None]:
        """Why the request stops after its last token: ('stop', token) / ('length', None)."""
        params = request.sampling_params
        token_id = request.output_token_ids[-1]
        if request.num_output_tokens >= params.min_tokens:
            if token_id in request.eos_token_ids and not params.ignore_eos:
                return FINISH_STOP, None
            if token_id in request.stop_token_ids:
                return FINISH_STOP, token_id
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return FINISH_LENGTH, None
        if request.num_tokens >= self.max_seq_len:
            return FINISH_LENGTH, None
        return None, None

    # ---- stats ------------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def get_stats(self) -> SchedulerStats:
        prefix = self.kv.stats
        return SchedulerStats(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            num_preemptions=self.num_preemptions,
            kv_cache_usage=self.kv.usage,
            prefix_cache_queries=prefix.queries,
            prefix_cache_hits=prefix.hits,
            prefix_cache_hit_rate=prefix.hit_rate,
        )

    def stats(self) -> dict[str, float]:
        """`get_stats()` as a plain dict (for metrics and logs)."""
        return dataclasses.asdict(self.get_stats())
