"""The batched sampler against simple per-row references."""

import math

import pytest
import torch

from floorline.runner.sampler import Sampler, SamplingMetadata, apply_top_k_top_p, make_generator
from floorline.sampling_params import SamplingParams as SP

VOCAB = 257
NEG_INF = float("-inf")


def build(params, prompts=None, outputs=None, vocab=VOCAB, eos=None, generators=None,
          device="cpu"):
    n = len(params)
    prompts = prompts if prompts is not None else [[1, 2, 3]] * n
    outputs = outputs if outputs is not None else [[]] * n
    if generators is None:
        generators = [make_generator(p, device) for p in params]
    return SamplingMetadata.build(params, prompts, outputs, generators, vocab, device,
                                  eos_token_ids=eos)


def random_logits(num_reqs, vocab=VOCAB, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_reqs, vocab, generator=g) * 3


def reference_truncate(row: torch.Tensor, p: SP) -> torch.Tensor:
    """Temperature, then top-k, top-p, min-p on one row, by sorting (float64)."""
    x = row.double() / p.temperature
    values, order = x.sort(descending=True)
    keep = torch.ones_like(values, dtype=torch.bool)
    if p.top_k > 0:
        keep[p.top_k:] = False
    probs = torch.where(keep, values, NEG_INF).softmax(0)
    mass_above = probs.cumsum(0) - probs
    keep &= mass_above < p.top_p
    probs = torch.where(keep, values, NEG_INF).softmax(0)
    keep &= probs >= p.min_p * probs.max()
    out = torch.full_like(x, NEG_INF)
    out[order[keep]] = x[order[keep]]
    return out


def reference_penalties(row, prompt, output, p: SP) -> torch.Tensor:
    """HF repetition penalty over prompt+output, OpenAI frequency/presence over output."""
    x = row.clone().double()
    for t in set(prompt) | set(output):
        x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    for t in set(output):
        x[t] -= p.frequency_penalty * output.count(t) + p.presence_penalty
    return x


TRUNCATION_CASES = [
    SP(temperature=0.7),
    SP(top_k=1),
    SP(top_k=10, temperature=1.3),
    SP(top_k=2000),  # beyond the vocab: off
    SP(top_p=0.9),
    SP(top_p=0.3, temperature=0.5),
    SP(top_k=40, top_p=0.8),
    SP(min_p=0.1),
    SP(top_k=50, top_p=0.95, min_p=0.05, temperature=0.8),
    SP(),
]


@pytest.mark.parametrize("vocab", [VOCAB, 3000])  # 3000 > top-k fast-path limit for top_k=2000
def test_truncation_masks_match_reference(vocab):
    params = TRUNCATION_CASES
    logits = random_logits(len(params), vocab, seed=vocab)
    got = Sampler.process_logits(logits, build(params, vocab=vocab))
    for i, p in enumerate(params):
        ref = reference_truncate(logits[i], p)
        assert torch.equal(torch.isinf(got[i]), torch.isinf(ref)), f"row {i}: {p}"
        kept = ~torch.isinf(ref)
        torch.testing.assert_close(got[i][kept].double(), ref[kept], rtol=1e-5, atol=1e-5)


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Uniform over 4 tokens: two of them reach exactly 0.5, so exactly two survive.
    got = Sampler.process_logits(torch.zeros(1, 4), build([SP(top_p=0.5)], vocab=4))
    assert int(torch.isfinite(got).sum()) == 2


def test_top_p_on_top_k_candidates_matches_reference():
    # Every sampled row has a top_k: top-p runs on the candidates, not the whole vocabulary.
    params = [SP(top_k=40, top_p=0.8), SP(top_k=5, top_p=0.5, temperature=0.6),
              SP(top_k=200, top_p=0.97, min_p=0.02), SP(top_k=3)]
    logits = random_logits(len(params) + 1, seed=11)
    meta = build(params + [SP(temperature=0)])
    assert meta.top_k_on_all_sampled_rows and meta.max_top_k == 200
    got = Sampler.process_logits(logits, meta)
    for i, p in enumerate(params):
        ref = reference_truncate(logits[i], p)
        assert torch.equal(torch.isinf(got[i]), torch.isinf(ref)), f"row {i}: {p}"
        kept = ~torch.isinf(ref)
        torch.testing.assert_close(got[i][kept].double(), ref[kept], rtol=1e-5, atol=1e-5)
    assert got[-1].argmax() == logits[-1].argmax()  # the greedy row keeps its argmax
    torch.manual_seed(0)
    assert Sampler()(logits, meta).token_ids[-1] == logits[-1].argmax()


def test_top_p_one_keeps_the_whole_vocabulary():
    # A peaked row: float32 cumulative mass hits 1.0 long before the tail.
    logits = torch.linspace(0, -5000, 5000)[None].repeat(2, 1)
    got = Sampler.process_logits(logits, build([SP(top_p=0.5), SP()], vocab=5000))
    assert int(torch.isfinite(got[1]).sum()) == 5000 and int(torch.isfinite(got[0]).sum()) == 1


def test_top_k_fast_path_equals_sort_path():
    params = [SP(top_k=k) for k in (1, 5, 17, -1, 100)]
    logits = random_logits(len(params), seed=3)
    meta = build(params)
    fast = apply_top_k_top_p(logits.clone(), meta.top_k, meta.max_top_k, None)
    # A max_top_k above the fast-path limit sends the same request down the full sort.
    sort = apply_top_k_top_p(logits.clone(), meta.top_k, 10**9, None)
    assert torch.equal(fast, sort)
    assert torch.isfinite(fast).sum(-1).tolist() == [1, 5, 17, VOCAB, 100]


def test_process_logits_does_not_write_the_input():
    logits = random_logits(3)
    before = logits.clone()
    params = [SP(top_k=3, temperature=0.5, repetition_penalty=1.5), SP(min_p=0.2), SP(top_p=0.5)]
    Sampler()(logits, build(params, outputs=[[1, 1], [2], []]))
    assert torch.equal(logits, before)


def test_greedy_is_argmax():
    logits = random_logits(6)
    meta = build([SP(temperature=0)] * 6)
    assert meta.all_greedy
    assert torch.equal(Sampler()(logits, meta).token_ids, logits.argmax(-1))


def test_mixed_batch_greedy_rows_take_argmax():
    params = [SP(temperature=0), SP(temperature=5.0), SP(temperature=0, top_k=3), SP()]
    logits = random_logits(4)
    torch.manual_seed(0)
    for _ in range(5):
        out = Sampler()(logits, build(params))
        assert out.token_ids[0] == logits[0].argmax() and out.token_ids[2] == logits[2].argmax()


def test_penalties_match_reference():
    g = torch.Generator().manual_seed(1)
    params = [
        SP(temperature=0, repetition_penalty=1.3),
        SP(temperature=0, frequency_penalty=0.7),
        SP(temperature=0, presence_penalty=-1.2),
        SP(temperature=0, repetition_penalty=0.8, frequency_penalty=-0.4, presence_penalty=1.5),
        SP(temperature=0),  # batch mate without penalties: untouched
    ]
    prompts = [torch.randint(0, VOCAB, (20,), generator=g).tolist() for _ in params]
    outputs = [torch.randint(0, 30, (int(n),), generator=g).tolist() for n in (12, 9, 0, 25, 4)]
    logits = random_logits(len(params), seed=2)
    got = Sampler.process_logits(logits, build(params, prompts, outputs))
    for i, p in enumerate(params):
        ref = reference_penalties(logits[i], prompts[i], outputs[i], p)
        torch.testing.assert_close(got[i].double(), ref, rtol=1e-5, atol=1e-5)


def test_no_penalty_tensors_without_penalties():
    meta = build([SP(), SP(temperature=0)], outputs=[[1, 2], [3]])
    assert meta.no_penalties and meta.prompt_mask is None and meta.output_counts is None
    meta = build([SP(frequency_penalty=0.5), SP()], outputs=[[1, 2], [3]])
    assert meta.output_counts is not None and meta.prompt_mask is None


def test_token_ids_beyond_vocab_are_ignored():
    params = [SP(temperature=0, repetition_penalty=2.0, frequency_penalty=1.0)]
    logits = random_logits(1)
    got = Sampler.process_logits(logits, build(params, [[VOCAB + 5, 4]], [[VOCAB, 4]]))
    ref = reference_penalties(logits[0], [4], [4], params[0])
    torch.testing.assert_close(got[0].double(), ref)


def run_steps(params, row_of_interest, num_steps=6, device="cpu"):
    """Sample num_steps times; the row of interest always sees the same logits per step."""
    generators = [make_generator(p, device) for p in params]
    tokens = []
    for step in range(num_steps):
        logits = random_logits(len(params), seed=100 + step)
        logits[row_of_interest] = random_logits(1, seed=1000 + step)[0]
        logits = logits.to(device)
        torch.manual_seed(step * 7 + len(params))  # batch mates' shared draws differ per case
        meta = build(params, generators=generators, device=device)
        tokens.append(int(Sampler()(logits, meta).token_ids[row_of_interest]))
    return tokens


def test_seeded_sampling_independent_of_batch():
    target = SP(seed=1234, temperature=1.5, top_p=0.95)
    alone = run_steps([target], 0)
    first = run_steps([target, SP(), SP(seed=5), SP(temperature=0)], 0)
    middle = run_steps([SP(seed=9, top_k=4), SP(), target, SP(repetition_penalty=1.2)], 2)
    assert alone == first == middle
    assert run_steps([SP(seed=1234, temperature=1.5, top_p=0.95)], 0) == alone  # reproducible
    # A different seed gives a different stream (flat logits at T=1.5: collisions are unlikely).
    assert run_steps([SP(seed=4321, temperature=1.5, top_p=0.95)], 0) != alone


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_unseeded_distribution_matches_softmax():
    # Fixed default-generator seed: the draw is deterministic, so the bound cannot flake. The
    # 99.9% point of chi-square with 7 degrees of freedom is 24.3.
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    temperature, num = 0.7, 20000
    torch.manual_seed(0)
    out = Sampler()(row.expand(num, -1).contiguous(), build([SP(temperature=temperature)] * num,
                                                          vocab=8))
    counts = torch.bincount(out.token_ids, minlength=8).double()
    assert chi_square(counts, (row.double() / temperature).softmax(0)) < 24.3


def test_top_k_distribution_is_renormalized():
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    num = 20000
    torch.manual_seed(1)
    out = Sampler()(row.expand(num, -1).contiguous(), build([SP(top_k=3)] * num, vocab=8))
    counts = torch.bincount(out.token_ids, minlength=8).double()
    top = torch.tensor([0, 6, 1])
    assert counts.sum() == counts[top].sum()
    # 2 degrees of freedom: 99.9% point is 13.8.
    assert chi_square(counts[top], row[top].double().softmax(0)) < 13.8


def test_seeded_distribution_matches_softmax():
    row = torch.tensor([1.0, 0.0, -1.0, 0.5])
    num = 4000
    params = [SP(seed=s) for s in range(num)]
    out = Sampler()(row.expand(num, -1).contiguous(), build(params, vocab=4))
    counts = torch.bincount(out.token_ids, minlength=4).double()
    assert chi_square(counts, row.double().softmax(0)) < 16.3  # 3 dof, 99.9%


def test_logprobs_are_of_raw_logits():
    params = [SP(temperature=0, repetition_penalty=1.8, logprobs=0), SP(temperature=0.3, top_k=5),
              SP(frequency_penalty=2.0, min_p=0.3), SP(temperature=0)]
    logits = random_logits(len(params))
    torch.manual_seed(0)
    out = Sampler()(logits, build(params, outputs=[[1, 2], [], [5, 5], []]))
    ref = logits.log_softmax(-1).gather(1, out.token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs, ref)
    assert out.logprobs.dtype == torch.float32 and out.token_ids.dtype == torch.int64
    assert out.top_logprobs is None and out.top_logprob_ids is None


def test_top_logprobs():
    params = [SP(logprobs=3), SP(temperature=0, logprobs=5), SP(), SP(logprobs=0)]
    logits = random_logits(len(params))
    out = Sampler()(logits, build(params))
    assert out.top_logprob_ids.shape == (4, 5) and out.top_logprobs.shape == (4, 5)
    ref_values, ref_ids = logits.log_softmax(-1).sort(-1, descending=True)
    assert torch.equal(out.top_logprob_ids, ref_ids[:, :5])
    torch.testing.assert_close(out.top_logprobs, ref_values[:, :5])
    # logprobs=0 alone: the sampled token's logprob, no alternatives.
    zero = Sampler()(logits, build([SP(logprobs=0)] * 4))
    assert zero.top_logprob_ids is None


def test_no_logprobs_unless_a_row_asks():
    logits = random_logits(3)
    out = Sampler()(logits, build([SP(temperature=0), SP(), SP(temperature=0.5)]))
    assert out.logprobs is None and out.top_logprobs is None
    assert out.token_ids[0] == logits[0].argmax()


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.zeros(4, 10)
    logits[:, 7] = 50.0  # eos
    logits[:, 3] = 40.0  # a stop token id
    logits[:, 5] = 30.0
    params = [
        SP(temperature=0, min_tokens=2, stop_token_ids=[3], logprobs=0),  # 1 output so far: masked
        SP(temperature=0, min_tokens=2, stop_token_ids=[3]),  # 2 outputs: free
        SP(temperature=0, min_tokens=3, stop_token_ids=[3], ignore_eos=True),  # only stop ids
        SP(min_tokens=5, stop_token_ids=[3, 99]),  # sampled row; 99 is beyond the vocab
    ]
    outputs = [[1], [1, 2], [], [1]]
    meta = build(params, outputs=outputs, vocab=10, eos=[[7]] * 4)
    torch.manual_seed(0)
    out = Sampler()(logits, meta)
    assert out.token_ids.tolist()[:3] == [5, 7, 7]
    assert out.token_ids[3] not in (3, 7)
    assert math.isclose(float(out.logprobs[0]), float(logits[0].log_softmax(0)[5]), rel_tol=1e-6)


def test_build_checks_lengths():
    with pytest.raises(ValueError):
        SamplingMetadata.build([SP()], [[1]], [], [None], VOCAB, "cpu")


def test_half_precision_logits_are_upcast():
    logits = random_logits(2).half()
    out = Sampler()(logits, build([SP(temperature=0, logprobs=2)] * 2))
    assert out.logprobs.dtype == torch.float32
    assert torch.equal(out.token_ids, logits.float().argmax(-1))


@pytest.mark.gpu
def test_cuda_matches_cpu_and_seeds_hold():
    params = TRUNCATION_CASES + [SP(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5,
                                    min_tokens=2, stop_token_ids=[4])]
    prompts = [[1, 2, 3, 40]] * len(params)
    outputs = [[5, 5, 9]] * (len(params) - 1) + [[6]]
    logits = random_logits(len(params))
    cpu = Sampler.process_logits(logits, build(params, prompts, outputs))
    gpu = Sampler.process_logits(logits.cuda(), build(params, prompts, outputs, device="cuda"))
    assert torch.equal(torch.isinf(cpu), torch.isinf(gpu.cpu()))
    kept = torch.isfinite(cpu)
    torch.testing.assert_close(gpu.cpu()[kept], cpu[kept], rtol=1e-5, atol=1e-5)
    out = Sampler()(logits.cuda(), build(params, prompts, outputs, device="cuda"))
    assert out.token_ids.device.type == "cuda" and out.token_ids[-1] == cpu[-1].argmax()

    target = SP(seed=77, temperature=1.2, top_k=100)
    alone = run_steps([target], 0, device="cuda")
    assert alone == run_steps([SP(), SP(seed=3), target, SP(temperature=0)], 2, device="cuda")


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Synchronization debug mode")
def test_cuda_step_never_syncs():
    params = [SP(temperature=0, repetition_penalty=1.2, logprobs=3),
              SP(top_k=20, top_p=0.9, seed=1),
              SP(min_p=0.1, min_tokens=4, stop_token_ids=[2]), SP(top_p=0.8, frequency_penalty=1.0)]
    generators = [make_generator(p, "cuda") for p in params]
    logits = random_logits(len(params)).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        meta = SamplingMetadata.build(params, [[1, 2, 3]] * 4, [[4, 4], [], [5], [6, 6, 6]],
                                      generators, VOCAB, "cuda", eos_token_ids=[[0]] * 4)
        Sampler()(logits, meta)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
def test_gpu_row_argmax_is_argmax():
    """On CUDA the sampler's argmax is one launch of `kernels.argmax` over a Llama-3 vocabulary row."""
    from floorline.runner.sampler import row_argmax

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.randn(33, 128256, device="cuda")
    x[1, [7, 100000]] = 9.0
    x[2, [501, 502]] = 9.0
    x[3, 5] = float("nan")
    x[4] = 0.0
    assert torch.equal(row_argmax(x), x.argmax(dim=-1))
