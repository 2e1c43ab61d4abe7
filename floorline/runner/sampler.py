"""The batched sampler: penalties, greedy, temperature, top-k, top-p, min-p and sampling in tensors.

One step: `meta = SamplingMetadata.build(...)` once, then `Sampler()(logits, meta)`.
Order: min_tokens mask and penalties -> (greedy rows: argmax) -> temperature -> top-k -> top-p
-> min-p -> sample. Greedy rows carry neutral temperature/truncation values, so the argmax taken
after the whole processing equals the argmax right after the penalties.

Sampling is the exponential race, `argmax(probs / E)` with `E ~ Exp(1)`: an exact draw from
`probs`. A request with a seed draws its noise row from its own `torch.Generator`, so its
tokens do not depend on its batch mates or its row; unseeded rows share one draw from the
default generator of the logits' device.

Everything stays on the logits' device. Host work: building the metadata from Python lists
(a few pinned, non-blocking host-to-device copies) and a loop over the *seeded* requests.
Nothing syncs with the device; the caller's `.tolist()` on the output is the step's one sync.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from floorline.sampling_params import SamplingParams

# Above this many top-k candidates a full sort is cheaper than torch.topk.
_TOPK_FAST_PATH_MAX = 1024


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
    """The request's own generator, seeded once when the request starts (None without a seed)."""
    if params.seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed)
    return gen


def _host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor; pinned + non_blocking on CUDA so the copy does not block the host."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _host_to_device(torch.tensor(values, dtype=dtype), device)


def _flat_indices(
    token_lists: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """Index of every (row, token) into a flat [num_rows, vocab_size + 1] table. [num_tokens]

    Ids >= vocab_size land in the spill column `vocab_size`, which callers slice off. Built with
    numpy: a Python comprehension over ~10k tokens costs milliseconds per step.
    """
    lengths = [len(toks) for toks in token_lists]
    cols = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64,
                       count=sum(lengths))
    rows = np.repeat(np.arange(len(token_lists), dtype=np.int64), lengths)
    flat = rows * (vocab_size + 1) + np.minimum(cols, vocab_size)
    return _host_to_device(torch.from_numpy(flat), device)


@dataclass
class SamplingMetadata:
    """Per-step sampling inputs as padded tensors; optional ones are None when no row uses them.

    Greedy rows carry neutral temperature / top-k / top-p / min-p values (they take the argmax),
    so the optional tensors exist only when a *sampled* row needs them.
    """

    num_reqs: int
    vocab_size: int
    all_greedy: bool
    all_random: bool
    greedy_mask: torch.Tensor | None  # [num_reqs] bool; None when all_greedy or all_random
    temperature: torch.Tensor | None  # [num_reqs] float32 (1.0 on greedy rows); None if all 1
    top_k: torch.Tensor | None  # [num_reqs] int64 in [1, vocab]; vocab = off
    max_top_k: int  # largest active top_k (0 when top_k is None)
    top_k_on_all_sampled_rows: bool  # then top-p can work on the top-k candidates only
    top_p: torch.Tensor | None  # [num_reqs] float32; 1.0 = off
    min_p: torch.Tensor | None  # [num_reqs] float32; 0.0 = off
    repetition_penalty: torch.Tensor | None  # [num_reqs] float32; None when no row uses it
    presence_penalty: torch.Tensor | None  # [num_reqs] float32
    frequency_penalty: torch.Tensor | None  # [num_reqs] float32
    prompt_mask: torch.Tensor | None  # [num_reqs, vocab] bool: token occurs in the prompt
    output_counts: torch.Tensor | None  # [num_reqs, vocab] float32: occurrences in the output
    min_tokens_mask: torch.Tensor | None  # [n] int64 flat (row * vocab + token) ids set to -inf
    seeded: list[tuple[int, torch.Generator]] = field(default_factory=list)  # (row, generator)
    any_unseeded_random: bool = False
    max_num_logprobs: int | None = None  # None: no row asks; 0: only the sampled token's

    @property
    def no_penalties(self) -> bool:
        return self.output_counts is None

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        generators: list[torch.Generator | None],
        vocab_size: int,
        device: torch.device | str,
        eos_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> SamplingMetadata:
        """Gather the batch's params into tensors on `device` (row i = request i).

        `generators[i]` is request i's generator from `make_generator` (on `device`), or None.
        `eos_token_ids[i]` are the ids masked, with `stop_token_ids`, while request i has fewer
        than `min_tokens` outputs (ignored when the request sets `ignore_eos`).
        """
        device = torch.device(device)
        num_reqs = len(params)
        if not (len(prompt_token_ids) == len(output_token_ids) == len(generators) == num_reqs):
            raise ValueError("params, prompt_token_ids, output_token_ids and generators differ "
                             "in length")
        greedy = [p.greedy for p in params]
        all_greedy = all(greedy)
        all_random = not any(greedy)
        random = [not g for g in greedy]

        temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]
        top_ks = [
            p.top_k if r and 0 < p.top_k < vocab_size else vocab_size
            for p, r in zip(params, random)
        ]
        top_ps = [p.top_p if r else 1.0 for p, r in zip(params, random)]
        min_ps = [p.min_p if r else 0.0 for p, r in zip(params, random)]
        active_ks = [k for k in top_ks if k < vocab_size]

        def maybe(values: list, neutral: float | int, dtype: torch.dtype) -> torch.Tensor | None:
            if all(v == neutral for v in values):
                return None
            return _to_device(values, dtype, device)

        meta = cls(
            num_reqs=num_reqs,
            vocab_size=vocab_size,
            all_greedy=all_greedy,
            all_random=all_random,
            greedy_mask=None if all_greedy or all_random
            else _to_device(greedy, torch.bool, device),
            temperature=maybe(temps, 1.0, torch.float32),
            top_k=maybe(top_ks, vocab_size, torch.int64),
            max_top_k=max(active_ks, default=0),
            top_k_on_all_sampled_rows=all(k < vocab_size for k, r in zip(top_ks, random) if r),
            top_p=maybe(top_ps, 1.0, torch.float32),
            min_p=maybe(min_ps, 0.0, torch.float32),
            repetition_penalty=None,
            presence_penalty=None,
            frequency_penalty=None,
            prompt_mask=None,
            output_counts=None,
            min_tokens_mask=None,
            seeded=[(i, g) for i, (g, r) in enumerate(zip(generators, random))
                    if r and g is not None],
            any_unseeded_random=any(r and g is None for g, r in zip(generators, random)),
            max_num_logprobs=max(
                (p.logprobs for p in params if p.logprobs is not None), default=None
            ),
        )
        if any(p.uses_penalties for p in params):
            meta._build_penalties(params, prompt_token_ids, output_token_ids, device)
        meta._build_min_tokens(params, output_token_ids, eos_token_ids, device)
        return meta

    def _build_penalties(
        self,
        params: list[SamplingParams],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        device: torch.device,
    ) -> None:
        """Penalty tensors and token counts (scattered on the device, one spill column)."""
        n, vocab = self.num_reqs, self.vocab_size
        self.presence_penalty = _to_device([p.presence_penalty for p in params], torch.float32,
                                           device)
        self.frequency_penalty = _to_device([p.frequency_penalty for p in params], torch.float32,
                                            device)
        # index_add_ on flat indices: index_put_(accumulate=True) costs ~0.5 ms of host time.
        flat = _flat_indices(output_token_ids, vocab, device)
        counts = torch.zeros(n * (vocab + 1), dtype=torch.float32, device=device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        self.output_counts = counts.view(n, vocab + 1)[:, :vocab]
        reps = [p.repetition_penalty for p in params]
        if any(r != 1.0 for r in reps):
            self.repetition_penalty = _to_device(reps, torch.float32, device)
            # Only rows with a repetition penalty need their prompt scattered.
            prompts = [toks if p.repetition_penalty != 1.0 else []
                       for p, toks in zip(params, prompt_token_ids)]
            mask = torch.zeros(n * (vocab + 1), dtype=torch.bool, device=device)
            mask.index_fill_(0, _flat_indices(prompts, vocab, device), True)
            self.prompt_mask = mask.view(n, vocab + 1)[:, :vocab]

    def _build_min_tokens(
        self,
        params: list[SamplingParams],
        output_token_ids: list[list[int]],
        eos_token_ids: Sequence[Sequence[int]] | None,
        device: torch.device,
    ) -> None:
        """(row, token) pairs to mask: eos and stop ids of rows still short of min_tokens."""
        flat: list[int] = []
        for i, (p, out) in enumerate(zip(params, output_token_ids)):
            if len(out) >= p.min_tokens:
                continue
            ids = set(p.stop_token_ids)
            if eos_token_ids is not None and not p.ignore_eos:
                ids.update(eos_token_ids[i])
            flat += sorted(i * self.vocab_size + t for t in ids if 0 <= t < self.vocab_size)
        if flat:
            self.min_tokens_mask = _to_device(flat, torch.int64, device)


@dataclass
class SamplerOutput:
    """One sampled token per row, with raw-logit logprobs.

    Logprobs are `log_softmax` of the *raw* logits given to the sampler (before min_tokens masks,
    penalties, temperature and truncation), as OpenAI and vLLM report them.
    """

    token_ids: torch.Tensor  # [num_reqs] int64
    logprobs: torch.Tensor | None  # [num_reqs] float32, of the sampled token; None when no row asks
    top_logprob_ids: torch.Tensor | None = None  # [num_reqs, max_num_logprobs] int64
    top_logprobs: torch.Tensor | None = None  # [num_reqs, max_num_logprobs] float32, descending


def apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Repetition (HF), frequency and presence (OpenAI) penalties, in place. [num_reqs, vocab]"""
    counts = meta.output_counts
    assert counts is not None and meta.frequency_penalty is not None
    seen_in_output = counts > 0
    if meta.repetition_penalty is not None:
        assert meta.prompt_mask is not None
        rep = meta.repetition_penalty[:, None]
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(meta.prompt_mask | seen_in_output, penalized, logits)
    logits -= meta.frequency_penalty[:, None] * counts
    logits -= meta.presence_penalty[:, None] * seen_in_output
    return logits


def apply_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    max_top_k: int,
    top_p: torch.Tensor | None,
    top_k_on_all_rows: bool = False,
) -> torch.Tensor:
    """Set logits outside each row's top-k, then outside its top-p nucleus, to -inf (in place).

    top-p keeps the smallest set of highest tokens whose probability (renormalized after top-k)
    reaches p; the top token always survives. Tokens tied with the k-th largest logit may
    survive top-k too. `top_k_on_all_rows` (every row that matters has a top_k; rows with
    top_k = vocab only keep their argmax) lets top-p sort the top-k candidates instead of the
    vocabulary.
    """
    if top_k is None and top_p is None:
        return logits
    vocab = logits.shape[-1]
    if top_k is not None and max_top_k <= _TOPK_FAST_PATH_MAX:
        if top_p is None:
            top_values = logits.topk(max_top_k, dim=-1).values  # [num_reqs, max_top_k]
            kth = top_values.gather(1, (top_k.clamp(max=max_top_k) - 1)[:, None])
            kth = torch.where(top_k[:, None] >= vocab, float("-inf"), kth)
            return logits.masked_fill_(logits < kth, float("-inf"))
        if top_k_on_all_rows:
            values, ids = logits.topk(max_top_k, dim=-1)  # descending, [num_reqs, max_top_k]
            values = _truncate_sorted(values, top_k.clamp(max=max_top_k), top_p)
            return logits.fill_(float("-inf")).scatter_(1, ids, values)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    return logits.scatter_(1, order, _truncate_sorted(sorted_logits, top_k, top_p))


def _truncate_sorted(
    values: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """top-k then top-p on rows sorted in descending order, in place. [num_reqs, width]"""
    if top_k is not None:
        kth = values.gather(1, (top_k - 1)[:, None])
        values.masked_fill_(values < kth, float("-inf"))
    if top_p is not None:
        probs = values.softmax(dim=-1)
        # Probability of the strictly higher tokens: once it reaches p, this token is not needed.
        mass_above = probs.cumsum(dim=-1) - probs
        # float32 cumsums reach 1.0 before the tail; rows with p = 1 must keep everything.
        drop = (mass_above >= top_p[:, None]) & (top_p < 1)[:, None]
        values.masked_fill_(drop, float("-inf"))
    return values


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens with prob < min_p * max prob; in logit space (the normalizer cancels)."""
    threshold = logits.amax(dim=-1, keepdim=True) + torch.log(min_p)[:, None]
    return logits.masked_fill_(logits < threshold, float("-inf"))


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(dim=-1)` of [num_reqs, vocab] (the first maximal index, as torch's). On CUDA one Triton
    launch (`kernels.argmax`): torch reduces a row with one thread block, 27 us for one 128256-wide row
    on an H200, more than 1% of a 4-bit decode step."""
    if x.device.type != "cuda":
        return x.argmax(dim=-1)
    from floorline.kernels.argmax import argmax_rows

    return argmax_rows(x if x.stride(-1) == 1 else x.contiguous())


def exponential_race(probs: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """argmax(probs / E), E ~ Exp(1): an exact draw from each row of `probs`. [num_reqs] int64"""
    noise = torch.empty_like(probs)
    if meta.any_unseeded_random:
        noise.exponential_()
    for row, gen in meta.seeded:
        # Always a full-vocab row from the request's own generator: the same draw whatever
        # the batch looks like.
        noise[row].exponential_(generator=gen)
    # Exp(1) can return 0 on some backends; 0/0 would be NaN, which argmax would pick.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return row_argmax(probs.div_(noise))


class Sampler(torch.nn.Module):
    """Turn a step's logits into one token per request (see the module docstring for the order)."""

    def forward(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """logits: [num_reqs, vocab] (float32; other dtypes are upcast)."""
        raw = logits.float().contiguous()  # flat indexing below needs a dense row-major tensor
        token_ids = self._pick(raw, meta)
        if meta.max_num_logprobs is None:  # no row asks: skip the normalizer's three passes over the logits
            return SamplerOutput(token_ids, None)
        # The normalizer of the raw logits: enough for every logprob without materializing
        # a [num_reqs, vocab] log_softmax.
        log_z = torch.logsumexp(raw, dim=-1)  # [num_reqs]
        top_ids = top_logprobs = None
        if meta.max_num_logprobs:
            k = min(meta.max_num_logprobs, raw.shape[-1])
            values, top_ids = raw.topk(k, dim=-1)
            top_logprobs = values - log_z[:, None]
        logprobs = raw.gather(1, token_ids[:, None]).squeeze(1) - log_z
        return SamplerOutput(token_ids, logprobs, top_ids, top_logprobs)

    @staticmethod
    def process_logits(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """min_tokens mask, penalties, temperature, top-k, top-p, min-p. [num_reqs, vocab]

        Greedy rows carry neutral temperature and truncation values: processing never moves
        their argmax, which is the greedy token. `logits` is never written to.
        """
        writes = (
            meta.min_tokens_mask is not None or not meta.no_penalties
            or meta.temperature is not None or meta.top_k is not None
            or meta.top_p is not None or meta.min_p is not None
        )
        x = logits.clone(memory_format=torch.contiguous_format) if writes else logits
        if meta.min_tokens_mask is not None:
            x.view(-1).index_fill_(0, meta.min_tokens_mask, float("-inf"))
        if not meta.no_penalties:
            x = apply_penalties(x, meta)
        if meta.temperature is not None:
            x.div_(meta.temperature[:, None])
        x = apply_top_k_top_p(x, meta.top_k, meta.max_top_k, meta.top_p,
                              meta.top_k_on_all_sampled_rows)
        if meta.min_p is not None:
            x = apply_min_p(x, meta.min_p)
        return x

    def _pick(self, raw: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Token ids: argmax on greedy rows, an exponential race on the others."""
        x = self.process_logits(raw, meta)
        if meta.all_greedy:
            return row_argmax(x)
        sampled = exponential_race(x.softmax(dim=-1), meta)
        if meta.all_random:
            return sampled
        assert meta.greedy_mask is not None
        return torch.where(meta.greedy_mask, row_argmax(x), sampled)
