"""SamplingParams: how one request picks its tokens and when it stops (vLLM/OpenAI semantics).

Every field is checked in `__post_init__`; a bad value raises `InvalidRequestError` with one line
naming the field, the value and what is accepted, and `param` set to the field name (the server
turns it into a 400 with `param`). Numbers are normalized to plain `int` / `float` so that numpy
scalars or `temperature=1` behave like their Python float counterparts downstream.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, NoReturn

from floorline.errors import InvalidRequestError

# Below this temperature a request is greedy: dividing float32 logits by a tinier number
# overflows to inf, and the distribution is a point mass on the argmax anyway.
GREEDY_TEMPERATURE_EPS = 1e-5
MAX_LOGPROBS = 20
# What a request's per-step RequestOutputs hold (vLLM's RequestOutputKind): everything so far, only
# the step's news, or nothing until the request finishes (then everything).
OUTPUT_KINDS = ("cumulative", "delta", "final_only")
# torch.Generator.manual_seed accepts exactly this range.
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1


def _fail(name: str, message: str) -> NoReturn:
    raise InvalidRequestError(f"{name} {message}", param=name)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _as_int(name: str, value: Any) -> int:
    """`value` as a plain int; bools and floats (even 2.0) are rejected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(name, f"must be an integer, got {_describe(value)}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    """`value` as a finite plain float; bools, strings, NaN and inf are rejected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(name, f"must be a number, got {_describe(value)}")
    result = float(value)
    if not math.isfinite(result):
        _fail(name, f"must be a finite number, got {result}")
    return result


def _as_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(name, f"must be true or false, got {_describe(value)}")
    return value


def _in_range(name: str, value: float, lo: float, hi: float) -> float:
    if not lo <= value <= hi:
        _fail(name, f"must be in [{lo:g}, {hi:g}], got {value}")
    return value


@dataclass
class SamplingParams:
    """Sampling and stopping settings of one request.

    temperature 0 (or below 1e-5) is greedy. top_k -1 or 0 and top_p 1 and min_p 0 are off.
    repetition_penalty is HF-style (divides positive / multiplies negative logits of every token
    seen in the prompt or the output); presence/frequency penalties are OpenAI-style (subtract
    from the logits of output tokens). max_tokens None means until the context is full.
    logprobs k returns the sampled token's logprob plus the top-k alternatives (0: only the
    sampled token's). `stop` is normalized to a list of strings. output_kind (see OUTPUT_KINDS)
    picks what the engine reports per step: "delta" and "final_only" spare it copying every
    request's whole output each step.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: str = "cumulative"

    def __post_init__(self) -> None:
        self.n = _as_int("n", self.n)
        if self.n < 1:
            _fail("n", f"must be >= 1, got {self.n}")

        self.temperature = _as_float("temperature", self.temperature)
        if self.temperature < 0:
            _fail("temperature", f"must be >= 0, got {self.temperature}")

        self.top_p = _as_float("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            _fail("top_p", f"must be in (0, 1], got {self.top_p}")

        self.top_k = _as_int("top_k", self.top_k)
        if self.top_k < -1:
            _fail("top_k", f"must be -1 or 0 (off) or a positive integer, got {self.top_k}")

        self.min_p = _in_range("min_p", _as_float("min_p", self.min_p), 0.0, 1.0)

        self.repetition_penalty = _as_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            _fail("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")

        self.presence_penalty = _in_range(
            "presence_penalty", _as_float("presence_penalty", self.presence_penalty), -2.0, 2.0
        )
        self.frequency_penalty = _in_range(
            "frequency_penalty", _as_float("frequency_penalty", self.frequency_penalty), -2.0, 2.0
        )

        if self.seed is not None:
            self.seed = _as_int("seed", self.seed)
            if not _SEED_MIN <= self.seed <= _SEED_MAX:
                _fail("seed", f"must be in [-2**63, 2**64 - 1], got {self.seed}")

        if self.max_tokens is not None:
            self.max_tokens = _as_int("max_tokens", self.max_tokens)
            if self.max_tokens < 1:
                _fail("max_tokens", f"must be >= 1 or None (until the context is full), "
                      f"got {self.max_tokens}")

        self.min_tokens = _as_int("min_tokens", self.min_tokens)
        if self.min_tokens < 0:
            _fail("min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _fail("min_tokens", f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")

        self.stop = self._check_stop(self.stop)
        self.stop_token_ids = self._check_stop_token_ids(self.stop_token_ids)

        self.ignore_eos = _as_bool("ignore_eos", self.ignore_eos)
        if self.logprobs is not None:
            self.logprobs = _as_int("logprobs", self.logprobs)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                _fail("logprobs", f"must be in [0, {MAX_LOGPROBS}] or None, got {self.logprobs}")
        self.skip_special_tokens = _as_bool("skip_special_tokens", self.skip_special_tokens)
        self.include_stop_str_in_output = _as_bool(
            "include_stop_str_in_output", self.include_stop_str_in_output
        )
        if self.output_kind not in OUTPUT_KINDS:
            _fail("output_kind", f"must be one of {', '.join(OUTPUT_KINDS)}, got {_describe(self.output_kind)}")

    @staticmethod
    def _check_stop(stop: Any) -> list[str]:
        if stop is None:
            return []
        items = [stop] if isinstance(stop, str) else stop
        if not isinstance(items, (list, tuple)):
            _fail("stop", f"must be a string or a list of strings, got {_describe(stop)}")
        for item in items:
            if not isinstance(item, str):
                _fail("stop", f"must be a string or a list of strings, got item {_describe(item)}")
            if not item:
                _fail("stop", "must not contain the empty string (it would match everywhere)")
        return list(items)

    @staticmethod
    def _check_stop_token_ids(ids: Any) -> list[int]:
        if ids is None:
            return []
        if not isinstance(ids, (list, tuple)):
            _fail("stop_token_ids", f"must be a list of token ids, got {_describe(ids)}")
        result = []
        for item in ids:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < 0:
                _fail("stop_token_ids",
                      f"must be a list of non-negative integers, got item {_describe(item)}")
            result.append(int(item))
        return result

    @property
    def greedy(self) -> bool:
        """True when the request takes the argmax (temperature 0 or below 1e-5)."""
        return self.temperature < GREEDY_TEMPERATURE_EPS

    @property
    def uses_penalties(self) -> bool:
        """True when any of the repetition / presence / frequency penalties is active."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
