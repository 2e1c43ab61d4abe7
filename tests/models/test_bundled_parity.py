"""The bundled SmolLM2-135M GGUF: floorline equals transformers' own GGUF loader (greedy tokens, logits)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from floorline.api import LLM  # noqa: E402
from floorline.sampling_params import SamplingParams  # noqa: E402
from floorline.weights.bundled import bundled_model_path  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
NUM_TOKENS = 64


@pytest.fixture(scope="module")
def hf_model():
    path = bundled_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # generate exactly NUM_TOKENS, like ignore_eos
    model.generation_config.pad_token_id = 0
    return tok, model


@pytest.fixture(scope="module")
def llm():
    return LLM(dtype="float32", device="cpu")


def test_greedy_tokens_equal_transformers(hf_model, llm):
    tok, model = hf_model
    prompt_ids = [tok.encode(p) for p in PROMPTS]
    ours = llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True))
    for ids, out in zip(prompt_ids, ours):
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS,
                                 do_sample=False)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == ref


def test_prefill_logits_close_to_transformers(hf_model, llm):
    tok, model = hf_model
    ids = tok.encode(PROMPTS[2])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1]
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=1, logprobs=5))[0]
    top = out.outputs[0].logprobs[0].top
    ref_logprobs = torch.log_softmax(ref, -1)
    for token_id, logprob in top.items():
        assert abs(logprob - ref_logprobs[token_id].item()) < 1e-3
    assert max(top, key=top.get) == int(ref.argmax())
