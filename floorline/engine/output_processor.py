"""Turns token updates into text: incremental detokenization, stop strings, n>1 fan-in, RequestOutput."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from floorline.engine.outputs import Logprob
from floorline.sampling_params import SamplingParams


@dataclass
class CompletionOutput:
    """One of a request's n completions; `text`/`token_ids` are cumulative, `delta_*` new this step."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Logprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def snapshot(self) -> CompletionOutput:
        """A copy the caller may keep while this one grows (token ids copied; ~5x cheaper than copy.copy)."""
        snap = object.__new__(CompletionOutput)
        snap.__dict__.update(self.__dict__)
        snap.token_ids = list(self.token_ids)
        return snap

    def delta_snapshot(self) -> CompletionOutput:
        """This step's news alone: `text`, `token_ids` and `logprobs` hold only the new part
        (output_kind "delta"). The delta lists are replaced, never mutated, so they can be shared."""
        snap = object.__new__(CompletionOutput)
        snap.__dict__.update(self.__dict__)
        snap.text, snap.token_ids = self.delta_text, self.delta_token_ids
        if self.logprobs is not None:
            snap.logprobs = self.logprobs[len(self.logprobs) - len(self.delta_token_ids):]
        return snap


@dataclass
class RequestMetrics:
    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    """What the engine reports for a request after a step (and at the end)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    metrics: RequestMetrics | None = None
    error: str | None = None  # set when the request was refused (e.g. prompt too long)


class CompletionState:
    """Detokenizes one child request and watches for stop strings (which are never emitted)."""

    def __init__(self, index: int, params: SamplingParams, detokenizer):
        self.index = index
        self.params = params
        self.detok = detokenizer
        self.output = CompletionOutput(index=index, logprobs=[] if params.logprobs is not None else None)
        self._text = ""  # all detokenized text (stop-string truncation applied at the end)
        self._emitted = 0  # chars of _text already reported
        self._hold = max((len(s) for s in params.stop), default=1) - 1 if params.stop else 0
        self._stopped_on_string = False

    def add(self, token_ids: list[int], logprobs: list[Logprob] | None) -> str | None:
        """Adds tokens; returns the stop string if one appeared (the caller then finishes the request)."""
        out = self.output
        out.token_ids.extend(token_ids)
        out.delta_token_ids = list(token_ids)
        if out.logprobs is not None and logprobs:
            out.logprobs.extend(logprobs)
        if self.detok is None:
            return None
        search_from = max(0, len(self._text) - self._hold)
        self._text += self.detok.add(token_ids)
        for stop in self.params.stop:
            pos = self._text.find(stop, search_from)
            if pos != -1:
                end = pos + len(stop) if self.params.include_stop_str_in_output else pos
                self._text = self._text[:end]
                self._stopped_on_string = True
                return stop
        return None

    def flush(self, finished: bool) -> None:
        """Moves newly safe text into the output: all of it once finished, else all but a stop-string tail."""
        if finished and self.detok is not None and not self._stopped_on_string:
            self._text += self.detok.flush()  # a held-back partial character, as decode() shows it
        limit = len(self._text) if finished else max(self._emitted, len(self._text) - self._hold)
        self.output.delta_text = self._text[self._emitted:limit]
        self.output.text = self._text[:limit]
        self._emitted = limit


class RequestState:
    """A user request: its n children, their completion states and timing."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, child_ids: list[str], make_detok):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.children = {cid: CompletionState(i, params, make_detok()) for i, cid in enumerate(child_ids)}
        self.metrics = RequestMetrics(arrival_time=time.perf_counter())

    @property
    def finished(self) -> bool:
        for c in self.children.values():  # a plain loop: all(<genexpr>) costs ~3x more per call
            if c.output.finish_reason is None:
                return False
        return True

    def take_output(self) -> RequestOutput:
        """What to report now: snapshots of the children's outputs (whole, or only the news with
        output_kind "delta"). Their deltas are then cleared, so a child with no news at the next
        report (one that stopped while a sibling goes on) says nothing."""
        delta = self.params.output_kind == "delta"
        outputs = []
        for c in self.children.values():
            outputs.append(c.output.delta_snapshot() if delta else c.output.snapshot())
            c.output.delta_text, c.output.delta_token_ids = "", []
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
            outputs=outputs, finished=self.finished, metrics=self.metrics,
        )
