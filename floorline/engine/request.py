"""One generation request as the scheduler sees it, and the per-step update it reports."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from floorline.engine.outputs import Logprob
from floorline.sampling_params import SamplingParams

# finish_reason values (OpenAI names): a stop token / stop string, a length cap, an abort.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # never scheduled yet
    RUNNING = "running"  # holds KV blocks; the runner knows it
    PREEMPTED = "preempted"  # back in the waiting queue after its blocks were taken
    FINISHED = "finished"


@dataclass
class RequestUpdate:
    """What one step produced for one request (returned by `Scheduler.update`)."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[Logprob] = field(default_factory=list)  # empty when none were asked
    finish_reason: str | None = None  # 'stop' | 'length' | 'abort' | None (still running)
    stop_reason: int | str | None = None  # the stop token id or stop string; None for EOS

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Request:
    """A prompt, its sampling settings, the tokens generated so far and its scheduling state.

    `num_computed_tokens` counts the tokens whose KV is in the cache (in `block_ids`, which the
    KVCacheManager maintains). `all_token_ids` is prompt + output, kept as one list so that
    hashing and slicing it each step costs nothing extra.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_ids: frozenset[int] = frozenset(),
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = frozenset(eos_token_ids)
        self.stop_token_ids = frozenset(sampling_params.stop_token_ids)
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time

        self.output_token_ids: list[int] = []
        self.output_logprobs: list[Logprob] = []
        self._all_token_ids: list[int] = list(self.prompt_token_ids)

        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        # Scheduled ahead (async scheduling): tokens in a step not yet applied by update(), and
        # sampled tokens that step will produce. Both are 0 whenever nothing is in flight.
        self.num_inflight_tokens = 0
        self.num_placeholders = 0
        self.block_ids: list[int] = []  # written by KVCacheManager only
        self.num_preemptions = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt + output tokens (do not mutate: it is the request's own list)."""
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def async_safe(self) -> bool:
        """Whether its next step may be scheduled before its last token is known: penalties and
        min_tokens read the output history on the host, so they wait for it."""
        params = self.sampling_params
        return not params.uses_penalties and params.min_tokens == 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_output_token(self, token_id: int, logprob: Logprob | None = None) -> None:
        self.output_token_ids.append(token_id)
        self._all_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.value}, prompt={self.num_prompt_tokens}, "
            f"output={self.num_output_tokens}, computed={self.num_computed_tokens})"
        )
