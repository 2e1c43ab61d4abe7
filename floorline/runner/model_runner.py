"""ModelRunner: turns a SchedulerOutput into tensors, runs the model, samples, returns plain lists."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from floorline.config import ModelConfig
from floorline.engine.outputs import Logprob, RunnerOutput, SchedulerOutput
from floorline.runner.cuda_graphs import DecodeGraphs
from floorline.runner.forward_context import AttentionMetadata, forward_context
from floorline.runner.sampler import Sampler, SamplingMetadata
from floorline.sampling_params import SamplingParams


@dataclass
class _RequestState:
    """The runner's own copy of a request: every known token and where its KV lives."""

    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    generator: torch.Generator | None = None

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
        self.graphs: DecodeGraphs | None = None

    def capture_cuda_graphs(self, max_batch: int, max_model_len: int) -> float:
        """Captures decode graphs for batch buckets up to `max_batch`; returns the seconds it took."""
        self.graphs = DecodeGraphs(self.model, self.cfg, max_batch, max_model_len, self.block_size, self.device)
        self.graphs.capture()
        return self.graphs.capture_seconds

    # ---- state ---------------------------------------------------------------------------------

    def _update_states(self, out: SchedulerOutput) -> None:
        for rid in out.finished_request_ids | out.preempted_request_ids:
            self.requests.pop(rid, None)
        for new in out.new_requests:
            params = new.sampling_params
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(params.seed)
            self.requests[new.request_id] = _RequestState(
                token_ids=list(new.token_ids), num_prompt_tokens=new.num_prompt_tokens, params=params,
                block_ids=list(new.block_ids), num_computed_tokens=new.num_computed_tokens,
                eos_token_ids=self.eos_token_ids, generator=gen,
            )
        for cached in out.cached_requests:
            state = self.requests[cached.request_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    # ---- inputs --------------------------------------------------------------------------------

    def _prepare_inputs(self, out: SchedulerOutput) -> StepInputs:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        logits_indices: list[int] = []
        sampled: list[str] = []
        for rid, n in out.num_scheduled_tokens.items():
            state = self.requests[rid]
            start = state.num_computed_tokens
            end = start + n
            input_ids.extend(state.token_ids[start:end])
            for pos in range(start, end):
                positions.append(pos)
                slots.append(state.block_ids[pos // bs] * bs + pos % bs)
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            tables.append(state.block_ids)
            if end == len(state.token_ids):  # reached the end of what is known: sample the next token
                logits_indices.append(query_start[-1] - 1)
                sampled.append(rid)
        width = max(len(t) for t in tables)
        table = torch.zeros(len(tables), width, dtype=torch.int32)
        for i, t in enumerate(tables):
            table[i, : len(t)] = torch.tensor(t, dtype=torch.int32)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64).to(dev, non_blocking=True),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32).to(dev, non_blocking=True),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(dev, non_blocking=True),
            block_tables=table.to(dev, non_blocking=True),
            max_query_len=max(out.num_scheduled_tokens.values()),
            max_seq_len=max(seq_lens),
        )
        return StepInputs(
            input_ids=torch.tensor(input_ids, dtype=torch.int64).to(dev, non_blocking=True),
            positions=torch.tensor(positions, dtype=torch.int64).to(dev, non_blocking=True),
            meta=meta,
            logits_indices=torch.tensor(logits_indices, dtype=torch.int64).to(dev, non_blocking=True),
            sampled_request_ids=sampled,
        )

    # ---- step ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        self._update_states(out)
        if out.is_empty:
            return RunnerOutput()
        inputs = self._prepare_inputs(out)
        num_seqs = inputs.meta.num_seqs
        if (self.graphs is not None and inputs.meta.is_decode_only and len(inputs.sampled_request_ids) == num_seqs
                and self.graphs.can_run(num_seqs, inputs.meta.max_seq_len)):
            logits = self.graphs.run(inputs.input_ids, inputs.positions, inputs.meta)
            return self._sample(logits, inputs.sampled_request_ids)
        with forward_context(inputs.meta):
            hidden = self.model(inputs.input_ids, inputs.positions)  # [num_tokens, hidden]
        if not inputs.sampled_request_ids:
            return RunnerOutput()
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [num_sampled, vocab] fp32
        return self._sample(logits, inputs.sampled_request_ids)

    def _sample(self, logits: torch.Tensor, request_ids: list[str]) -> RunnerOutput:
        states = [self.requests[rid] for rid in request_ids]
        meta = SamplingMetadata.build(
            params=[s.params for s in states],
            prompt_token_ids=[s.token_ids[: s.num_prompt_tokens] for s in states],
            output_token_ids=[s.output_token_ids for s in states],
            generators=[s.generator for s in states],
            vocab_size=logits.shape[-1],
            device=logits.device,
            eos_token_ids=[s.eos_token_ids for s in states],
        )
        result = self.sampler(logits, meta)
        token_ids = result.token_ids.tolist()
        output = RunnerOutput()
        want_logprobs = any(s.params.logprobs is not None for s in states)
        if want_logprobs:
            chosen = result.logprobs.tolist()
            top_ids = result.top_logprob_ids.tolist() if result.top_logprob_ids is not None else None
            top_vals = result.top_logprobs.tolist() if result.top_logprobs is not None else None
        for i, (rid, state) in enumerate(zip(request_ids, states)):
            token = token_ids[i]
            state.token_ids.append(token)
            output.sampled_token_ids[rid] = token
            k = state.params.logprobs
            if k is not None:
                top = {}
                if k > 0 and top_ids is not None:
                    top = dict(zip(top_ids[i][:k], top_vals[i][:k]))
                output.logprobs[rid] = Logprob(logprob=chosen[i], top=top)
        return output
