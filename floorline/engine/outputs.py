"""The dataclasses the scheduler and the runner exchange (plain Python, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from floorline.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request the runner has not seen (or must forget and rebuild after preemption).

    `token_ids` holds every token known so far: the prompt plus any tokens generated before a
    preemption. `num_computed_tokens` of them already have KV in `block_ids` (a prefix-cache hit).
    """

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    """A request the runner already holds: only what changed since the last step."""

    request_id: str
    new_block_ids: list[int]
    num_computed_tokens: int


@dataclass
class SchedulerOutput:
    """What runs in one step.

    `num_scheduled_tokens[request_id]` is how many of the request's tokens are computed this step:
    a whole prompt, a chunk of it, or 1 for a decode. A request whose scheduled tokens reach the end
    of its known tokens gets one new token sampled.
    """

    new_requests: list[NewRequestData] = field(default_factory=list)
    cached_requests: list[CachedRequestData] = field(default_factory=list)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    finished_request_ids: set[str] = field(default_factory=set)  # runner drops their state
    preempted_request_ids: set[str] = field(default_factory=set)  # runner drops their state

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclass
class Logprob:
    """A sampled token's log-probability, with the top-n alternatives (token id -> logprob)."""

    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class RunnerOutput:
    """Tokens sampled in one step, for the requests that reached the end of their known tokens."""

    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, Logprob] = field(default_factory=dict)
