"""ModelRunner: turns a SchedulerOutput into tensors, runs the model, samples, returns plain lists."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from floorline.config import ModelConfig
from floorline.engine.outputs import Logprob, RunnerOutput, SchedulerOutput
from floorline.runner.cuda_graphs import DecodeGraphs
from floorline.runner.forward_context import AttentionMetadata, forward_context
from floorline.runner.host_inputs import BlockTables, to_device_packed
from floorline.runner.sampler import Sampler, SamplingMetadata
from floorline.sampling_params import SamplingParams


@dataclass
class _RequestState:
    """The runner's own copy of a request: every known token (its block ids are rows of `ModelRunner.block_tables`)."""

    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    num_computed_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    generator: torch.Generator | None = None
    num_unresolved: int = 0  # sampled on the device, not yet copied into token_ids (async scheduling)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


@dataclass
class StepInputs:
    """The tensors of one step (built on the host, copied to the device once)."""

    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampled] rows of hidden that get logits
    sampled_request_ids: list[str] = field(default_factory=list)
    # Tokens still on the device (the previous step's samples): row fill_from[t] of the last sample is
    # token t (-1: input_ids holds it). None when there are none.
    fill_from: torch.Tensor | None = None


@dataclass
class StepHandle:
    """A launched step; `result()` waits for its sampled tokens (only them, not later steps)."""

    runner: "ModelRunner"
    request_ids: list[str] = field(default_factory=list)
    token_ids: torch.Tensor | None = None  # [num_sampled] on the host (pinned on CUDA)
    logprobs: torch.Tensor | None = None  # [num_sampled]
    top_ids: torch.Tensor | None = None  # [num_sampled, k]
    top_values: torch.Tensor | None = None
    event: torch.cuda.Event | None = None  # recorded after sampling: the tokens are ready
    start_event: torch.cuda.Event | None = None  # recorded before the step's first kernel
    kind: str | None = None  # "graph" | "eager"; None: nothing ran (for host-time reports)

    def result(self) -> RunnerOutput:
        if self.event is not None:
            self.event.synchronize()
        return self.runner._resolve(self)


class ModelRunner:
    """Holds the model, its KV cache and per-request state; one `execute` per engine step."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, block_size: int, device: torch.device,
                 eos_token_ids: frozenset[int] = frozenset()):
        self.model = model
        self.cfg = cfg
        self.block_size = block_size
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.sampler = Sampler()
        self.requests: dict[str, _RequestState] = {}
        self.block_tables = BlockTables()  # each request's block ids, as rows of one array
        self.graphs: DecodeGraphs | None = None
        self._last_sampled: torch.Tensor | None = None  # [num_sampled] token ids of the last launched step
        self._last_rows: dict[str, int] = {}  # request id -> row of _last_sampled
        self.device_busy_s = 0.0  # device time of resolved steps (CUDA events), for idle-share reports

    def capture_cuda_graphs(self, max_batch: int, max_model_len: int) -> float:
        """Captures decode graphs for batch buckets up to `max_batch`; returns the seconds it took."""
        self.graphs = DecodeGraphs(self.model, self.cfg, max_batch, max_model_len, self.block_size, self.device)
        self.graphs.capture()
        return self.graphs.capture_seconds

    # ---- state ---------------------------------------------------------------------------------

    def _update_states(self, out: SchedulerOutput) -> None:
        for rid in out.finished_request_ids | out.preempted_request_ids:
            self.requests.pop(rid, None)
            self.block_tables.remove(rid)
        for new in out.new_requests:
            params = new.sampling_params
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(params.seed)
            self.requests[new.request_id] = _RequestState(
                token_ids=list(new.token_ids), num_prompt_tokens=new.num_prompt_tokens, params=params,
                num_computed_tokens=new.num_computed_tokens,
                eos_token_ids=self.eos_token_ids, generator=gen,
            )
            self.block_tables.add(new.request_id, new.block_ids)
        for cached in out.cached_requests:
            state = self.requests[cached.request_id]
            self.block_tables.extend(cached.request_id, cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    # ---- inputs --------------------------------------------------------------------------------

    def _prepare_inputs(self, out: SchedulerOutput) -> StepInputs:
        """The step's tensors: one Python pass over the requests for token ids and sampling rows,
        positions and slots in numpy, one packed host-to-device copy (see `host_inputs`)."""
        bs = self.block_size
        scheduled = out.num_scheduled_tokens
        # Decode rows (one new token) first: the attention call runs rows 0..num_decodes-1 through
        # the flash-decoding kernel and only the chunks through the prefill kernel.
        order = [rid for rid, n in scheduled.items() if n == 1]
        num_decodes = len(order)
        if num_decodes < len(scheduled):
            order += [rid for rid, n in scheduled.items() if n != 1]
        num_seqs = len(order)
        q_lens = np.fromiter((scheduled[rid] for rid in order), dtype=np.int64, count=num_seqs)
        starts = np.fromiter((self.requests[rid].num_computed_tokens for rid in order), dtype=np.int64,
                             count=num_seqs)
        query_start = np.zeros(num_seqs + 1, dtype=np.int64)
        np.cumsum(q_lens, out=query_start[1:])
        input_ids: list[int] = []
        logits_indices: list[int] = []
        sampled: list[str] = []
        fill_rows: list[int] = []  # tokens still on the device: (row of input_ids, row of the last sample)
        fill_from: list[int] = []
        for rid in order:
            state = self.requests[rid]
            start = state.num_computed_tokens
            end = start + scheduled[rid]
            known = len(state.token_ids)
            input_ids.extend(state.token_ids[start:end])
            if end > known:  # the previous step's token, sampled but not yet copied back
                if end != known + 1 or state.num_unresolved != 1 or rid not in self._last_rows:
                    raise RuntimeError(f"{rid}: scheduled past its known tokens ({end} > {known})")
                input_ids.append(0)
                fill_rows.append(len(input_ids) - 1)
                fill_from.append(self._last_rows[rid])
            if end == known + state.num_unresolved:  # reached the end of what is known: sample
                logits_indices.append(len(input_ids) - 1)
                sampled.append(rid)
        table = self.block_tables.gather(order)  # [num_seqs, max_blocks] int32
        # Token t of sequence i sits at position starts[i] + (t - query_start[i]).
        seq_of_token = np.repeat(np.arange(num_seqs), q_lens)
        positions = np.arange(int(query_start[-1]), dtype=np.int64) + np.repeat(starts - query_start[:-1], q_lens)
        slots = table[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        seq_lens = (starts + q_lens).astype(np.int32)
        fill = np.full(len(input_ids) if fill_rows else 0, -1, dtype=np.int64)  # nothing to copy without fills
        fill[fill_rows] = fill_from
        (input_ids_t, positions_t, slots_t, query_start_t, seq_lens_t, table_t, logits_t, fill_t) = to_device_packed(
            [np.asarray(input_ids, dtype=np.int64), positions, slots, query_start.astype(np.int32), seq_lens, table,
             np.asarray(logits_indices, dtype=np.int64), fill],
            self.device,
        )
        meta = AttentionMetadata(
            slot_mapping=slots_t, query_start_loc=query_start_t, seq_lens=seq_lens_t, block_tables=table_t,
            max_query_len=int(q_lens.max()), max_seq_len=int(seq_lens.max()), num_decodes=num_decodes,
        )
        return StepInputs(input_ids=input_ids_t, positions=positions_t, meta=meta, logits_indices=logits_t,
                          sampled_request_ids=sampled, fill_from=fill_t if fill_rows else None)

    # ---- step ----------------------------------------------------------------------------------

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Runs one step and waits for its tokens."""
        return self.launch(out).result()

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput) -> StepHandle:
        """Queues one step on the device and returns without waiting for it (async scheduling)."""
        self._update_states(out)
        if out.is_empty:
            return StepHandle(self)
        start_event = None
        if self.device.type == "cuda":
            start_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        handle = self._launch(out)
        handle.start_event = start_event
        return handle

    def _launch(self, out: SchedulerOutput) -> StepHandle:
        inputs = self._prepare_inputs(out)
        num_seqs = inputs.meta.num_seqs
        if (self.graphs is not None and inputs.meta.is_decode_only and len(inputs.sampled_request_ids) == num_seqs
                and self.graphs.can_run(num_seqs, inputs.meta.max_seq_len)):
            last = self._last_sampled if inputs.fill_from is not None else None
            logits = self.graphs.run(inputs.input_ids, inputs.positions, inputs.meta, inputs.fill_from, last)
            return self._sample(logits, inputs.sampled_request_ids, "graph")
        if inputs.fill_from is not None:  # (the graph's staging kernel does this itself) no mask: no sync
            src = inputs.fill_from
            inputs.input_ids.copy_(torch.where(src >= 0, self._last_sampled[src.clamp(min=0)], inputs.input_ids))
        with forward_context(inputs.meta):
            hidden = self.model(inputs.input_ids, inputs.positions)  # [num_tokens, hidden]
        if not inputs.sampled_request_ids:
            return StepHandle(self, kind="eager")
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [num_sampled, vocab] fp32
        return self._sample(logits, inputs.sampled_request_ids, "eager")

    def _sample(self, logits: torch.Tensor, request_ids: list[str], kind: str) -> StepHandle:
        """Samples on the device and starts copying the tokens back; the next step reads them there."""
        states = [self.requests[rid] for rid in request_ids]
        for state in states:
            if state.generator is not None:
                # Noise depends only on (seed, output index): the same tokens whatever the batch,
                # preemption (the request restarts) or async scheduling did.
                index = len(state.token_ids) - state.num_prompt_tokens + state.num_unresolved
                state.generator.manual_seed((state.params.seed * 1_000_003 + index) % (1 << 63))
        # Token histories are copied only when some request reads them (penalties, min_tokens):
        # slicing every request's tokens each step would cost O(context) per request.
        history = any(s.params.uses_penalties or s.params.min_tokens for s in states)
        meta = SamplingMetadata.build(
            params=[s.params for s in states],
            prompt_token_ids=[s.token_ids[: s.num_prompt_tokens] if history else [] for s in states],
            output_token_ids=[s.output_token_ids if history else [] for s in states],
            generators=[s.generator for s in states],
            vocab_size=logits.shape[-1],
            device=logits.device,
            eos_token_ids=[s.eos_token_ids for s in states],
        )
        result = self.sampler(logits, meta)
        self._last_sampled = result.token_ids
        self._last_rows = {rid: i for i, rid in enumerate(request_ids)}
        for state in states:
            state.num_unresolved += 1
        handle = StepHandle(self, request_ids, kind=kind)
        want_logprobs = any(s.params.logprobs is not None for s in states)
        handle.token_ids = _to_host(result.token_ids)
        if want_logprobs:
            handle.logprobs = _to_host(result.logprobs)
            if result.top_logprob_ids is not None:
                handle.top_ids, handle.top_values = _to_host(result.top_logprob_ids), _to_host(result.top_logprobs)
        if logits.is_cuda:
            handle.event = torch.cuda.Event(enable_timing=True)
            handle.event.record()
        return handle

    def _resolve(self, handle: StepHandle) -> RunnerOutput:
        """Appends a finished step's tokens to the runner's requests and lists them for the scheduler."""
        output = RunnerOutput()
        if handle.start_event is not None and handle.event is not None:
            self.device_busy_s += handle.start_event.elapsed_time(handle.event) / 1e3
        if not handle.request_ids:
            return output
        token_ids = handle.token_ids.tolist()
        chosen = handle.logprobs.tolist() if handle.logprobs is not None else None
        top_ids = handle.top_ids.tolist() if handle.top_ids is not None else None
        top_vals = handle.top_values.tolist() if handle.top_values is not None else None
        for i, rid in enumerate(handle.request_ids):
            token = token_ids[i]
            output.sampled_token_ids[rid] = token
            state = self.requests.get(rid)
            if state is None:
                continue  # finished or aborted while this step was in flight
            state.token_ids.append(token)
            state.num_unresolved -= 1
            k = state.params.logprobs
            if k is not None and chosen is not None:
                top = {}
                if k > 0 and top_ids is not None:
                    top = dict(zip(top_ids[i][:k], top_vals[i][:k]))
                output.logprobs[rid] = Logprob(logprob=chosen[i], top=top)
        return output


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Starts a device-to-host copy that does not wait (pinned memory) on CUDA; a no-op on CPU."""
    if not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
