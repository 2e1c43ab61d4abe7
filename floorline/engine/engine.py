"""LLMEngine: the three-call step loop (schedule, execute, update) and request bookkeeping."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from floorline.config import CacheConfig, ModelConfig, SchedulerConfig
from floorline.engine.gc_tuning import tune_gc_for_step_loop
from floorline.engine.output_processor import RequestOutput, RequestState
from floorline.engine.request import Request
from floorline.engine.scheduler import Scheduler
from floorline.errors import FloorlineError, InvalidRequestError
from floorline.runner.kv_cache_alloc import (
    allocate_kv_cache,
    bind_kv_cache,
    choose_num_blocks,
    graph_reserve_bytes,
)
from floorline.runner.memory_profile import profile_memory
from floorline.runner.model_runner import ModelRunner
from floorline.sampling_params import SamplingParams
from floorline.weights.loader import load_model, load_model_config, load_tokenizer, resolve_dtype
from floorline.weights.resolve import resolve_model


@dataclass(frozen=True)
class EngineArgs:
    """Everything needed to build an engine (the CLI flags map one to one)."""

    model: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_gb: float | None = None
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False  # CUDA only: skip CUDA-graph capture (graphs are never used on CPU)
    async_scheduling: bool | None = None  # schedule step N+1 while N runs; None: on for CUDA
    quantization: str | None = None  # int8 | int4 | nf4 | fp8 | fp8-w8a8: quantize weights on load
    lm_head_quantization: str | None = None  # with `quantization`: the LM head's format (int8 | int4 | nf4 | fp8)


class LLMEngine:
    """Owns the tokenizer, the scheduler and the runner; `step()` advances every running request."""

    def __init__(self, args: EngineArgs):
        self.args = args
        self.startup_times: dict[str, float] = {}
        t0 = time.perf_counter()
        source = resolve_model(args.model)
        self.model_config: ModelConfig = load_model_config(source)
        self.device = _pick_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.model_config, self.device)
        cfg = self.model_config
        max_len = args.max_model_len or cfg.max_position_embeddings
        if max_len > cfg.max_position_embeddings:
            raise FloorlineError(
                f"max_model_len {max_len} exceeds the model's context of {cfg.max_position_embeddings} tokens"
            )
        self.max_model_len = max_len
        self.tokenizer = load_tokenizer(source)
        self.startup_times["tokenizer"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.model = load_model(source, cfg, self.dtype, self.device, args.load_format, max_positions=max_len,
                                quantization=args.quantization, lm_head_quantization=args.lm_head_quantization)
        self.startup_times["weights"] = time.perf_counter() - t1
        cache_cfg = CacheConfig(block_size=args.block_size, num_blocks=args.num_kv_blocks,
                                kv_cache_memory_gb=args.kv_cache_memory_gb,
                                gpu_memory_utilization=args.gpu_memory_utilization,
                                enable_prefix_caching=args.enable_prefix_caching)
        reserve = 0
        self.memory_reserve: dict[str, int] = {}  # bytes kept out of the KV pool, by reason (GPU sizing)
        if self.device.type == "cuda" and args.num_kv_blocks is None and args.kv_cache_memory_gb is None:
            prof = profile_memory(self.model, cfg, args.max_num_batched_tokens, args.max_num_seqs,
                                  args.block_size, self.dtype, self.device, max_len)
            self.memory_reserve["step"] = prof.step_bytes
            if not args.enforce_eager:
                self.memory_reserve["cuda_graphs"] = graph_reserve_bytes(
                    args.max_num_seqs, max_len, args.block_size, cfg.vocab_size, prof.decode_forward_bytes)
            reserve = sum(self.memory_reserve.values())
        self.num_blocks = choose_num_blocks(cfg, cache_cfg, self.dtype, self.device, reserve)
        bind_kv_cache(self.model, allocate_kv_cache(cfg, self.num_blocks, args.block_size, self.dtype, self.device))
        sched_cfg = SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                    max_num_batched_tokens=max(args.max_num_batched_tokens, 1),
                                    max_model_len=max_len, enable_chunked_prefill=args.enable_chunked_prefill)
        self.scheduler = Scheduler(sched_cfg, self.num_blocks, args.block_size, args.enable_prefix_caching)
        self.eos_token_ids = self._eos_ids()
        self.runner = ModelRunner(self.model, cfg, args.block_size, self.device, self.eos_token_ids)
        if self.device.type == "cuda" and not args.enforce_eager:
            self.startup_times["graph_capture"] = self.runner.capture_cuda_graphs(args.max_num_seqs, max_len)
        self.async_scheduling = (self.device.type == "cuda" if args.async_scheduling is None
                                 else args.async_scheduling)
        self._inflight = None  # (SchedulerOutput, StepHandle) of a launched, unapplied step
        self._step_s = self._wait_s = 0.0
        self._phase_s: defaultdict[str, float] = defaultdict(float)  # host seconds by loop phase (step_stats)
        self._num_steps: defaultdict[str, int] = defaultdict(int)  # launched steps by kind: graph | eager
        self.requests: dict[str, RequestState] = {}
        self._child_to_parent: dict[str, str] = {}
        self._ids = itertools.count()
        self.startup_times["total"] = time.perf_counter() - t0
        tune_gc_for_step_loop()

    def _eos_ids(self) -> frozenset[int]:
        if self.tokenizer is not None:
            return frozenset(self.tokenizer.eos_token_ids)
        return frozenset(self.model_config.eos_token_ids)

    # ---- requests ------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queues a request (text or token ids); raises InvalidRequestError and queues nothing if it is bad."""
        params = params or SamplingParams()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer: pass prompt token ids", param="prompt")
            prompt_text, prompt_ids = prompt, self.tokenizer.encode(prompt)
        else:
            prompt_text, prompt_ids = None, list(prompt)
            bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < self.model_config.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"prompt token ids must be integers in [0, {self.model_config.vocab_size}), got {bad[0]!r}",
                    param="prompt")
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        children = []
        for i, cid in enumerate(child_ids):
            child_params = params
            if params.n > 1 and params.seed is not None:
                child_params = dataclasses.replace(params, seed=params.seed + i)  # distinct, reproducible
            children.append(Request(cid, prompt_ids, child_params, self.eos_token_ids, time.monotonic()))
        added = []
        try:
            for child in children:
                self.scheduler.add_request(child)
                added.append(child.request_id)
        except InvalidRequestError:
            self.scheduler.abort_requests(added)
            raise
        make_detok = self._detokenizer_factory(prompt_ids, params)
        self.requests[request_id] = RequestState(request_id, prompt_text, prompt_ids, params, child_ids, make_detok)
        for cid in child_ids:
            self._child_to_parent[cid] = request_id
        return request_id

    def _detokenizer_factory(self, prompt_ids: list[int], params: SamplingParams):
        if self.tokenizer is None:
            return lambda: None
        from floorline.tokenizer import IncrementalDetokenizer

        return lambda: IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens)

    def abort_request(self, request_id: str) -> None:
        """Stops a request at once and frees its KV blocks; unknown ids are ignored."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return
        self.scheduler.abort_requests(list(state.children))
        for cid in state.children:
            self._child_to_parent.pop(cid, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- the loop ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One engine step; returns an output for every request that got new tokens or finished."""
        t0 = time.perf_counter()
        if not self.async_scheduling:
            sched_out = self._timed("schedule", self.scheduler.schedule)
            handle = self._launch(sched_out)
            updates = self._timed("update", self.scheduler.update, sched_out, self._wait(handle))
            outputs = self._timed("process", self._process, updates)
        else:
            outputs = self._step_async()
        self._step_s += time.perf_counter() - t0
        return outputs

    def _timed(self, phase: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        self._phase_s[phase] += time.perf_counter() - t0
        return result

    def _launch(self, sched_out):
        """runner.launch, its host time kept apart for graph replays and eager forwards."""
        t0 = time.perf_counter()
        handle = self.runner.launch(sched_out)
        kind = handle.kind
        if kind is not None:
            self._phase_s["launch_" + kind] += time.perf_counter() - t0
            self._num_steps[kind] += 1
        return handle

    def _wait(self, handle):
        """The step's RunnerOutput; the time spent blocked on the device is not host work."""
        t0 = time.perf_counter()
        result = handle.result()
        self._wait_s += time.perf_counter() - t0
        return result

    def reset_step_stats(self) -> None:
        self._step_s = self._wait_s = 0.0
        self._phase_s.clear()
        self._num_steps.clear()
        self.runner.device_busy_s = 0.0

    def step_stats(self) -> dict:
        """Host seconds spent in step() outside device waits, device-busy seconds (CUDA only), host
        seconds by phase (schedule, launch_graph, launch_eager, update, process; the launches include
        input preparation and sampling) and the number of launched steps by kind."""
        busy = self.runner.device_busy_s if self.device.type == "cuda" else None
        return {"host_s": self._step_s - self._wait_s, "wait_s": self._wait_s, "device_busy_s": busy,
                "phase_s": dict(self._phase_s), "num_steps": dict(self._num_steps)}

    def _step_async(self) -> list[RequestOutput]:
        """The same three calls, one step apart: step N+1 is scheduled and launched before N's tokens
        are read, so host work (update, detokenize, schedule, inputs) overlaps the GPU."""
        if self._inflight is None:
            sched_out = self._timed("schedule", self.scheduler.schedule)
            self._inflight = (sched_out, self._launch(sched_out))
        next_out = self._timed("schedule", self.scheduler.schedule, True)
        next_handle = self._launch(next_out)
        sched_out, handle = self._inflight
        self._inflight = (next_out, next_handle) if not next_out.is_empty else None
        updates = self._timed("update", self.scheduler.update, sched_out, self._wait(handle))
        return self._timed("process", self._process, updates)

    def _process(self, updates) -> list[RequestOutput]:
        now = time.perf_counter()
        touched: dict[str, RequestState] = {}
        for up in updates:
            parent_id = self._child_to_parent.get(up.request_id)
            if parent_id is None:
                continue
            state = self.requests[parent_id]
            child = state.children[up.request_id]
            if up.new_token_ids and state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            stop = child.add(up.new_token_ids, up.new_logprobs)
            finish_reason, stop_reason = up.finish_reason, up.stop_reason
            if stop is not None and finish_reason is None:
                self.scheduler.finish_requests([up.request_id], "stop", stop)
                finish_reason, stop_reason = "stop", stop
            if finish_reason is not None:
                child.output.finish_reason, child.output.stop_reason = finish_reason, stop_reason
            child.flush(finished=finish_reason is not None)
            touched[parent_id] = state
        outputs = []
        for parent_id, state in touched.items():
            if state.params.output_kind == "final_only" and not state.finished:
                continue  # reported once, whole, when it finishes
            out = state.take_output()
            if out.finished:
                state.metrics.finished_time = now
                del self.requests[parent_id]
                for cid in state.children:
                    self._child_to_parent.pop(cid, None)
            outputs.append(out)
        return outputs


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FloorlineError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    if not device.startswith(("cpu", "cuda")):
        raise FloorlineError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N")
    return torch.device(device)
