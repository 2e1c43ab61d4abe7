"""The bundled GGUF's tokenizer, built by floorline, against transformers reading the same file."""

from __future__ import annotations

import copy
import random

import pytest

from tests.tokenizer.texts import SAMPLES, random_texts


@pytest.fixture(scope="module")
def hf_digits(hf_tok):
    """transformers' tokenizer with SmolLM2's own pre-tokenizer (digits split off first).

    The GGUF says `tokenizer.ggml.pre = smollm`, which llama.cpp (and the model's tokenizer.json)
    define as "split every digit off, then GPT-2's regex"; transformers' GGUF reader does not know
    `smollm` and uses GPT-2's regex alone. The two differ only on a run of spaces before a digit.
    """
    from tokenizers import pre_tokenizers

    backend = copy.deepcopy(hf_tok.backend_tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return backend


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_matches_transformers(tok, hf_tok, text):
    assert tok.encode(text) == hf_tok.encode(text)
    assert tok.encode(text, add_special_tokens=False) == hf_tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", SAMPLES + random_texts(60))
def test_encode_matches_transformers_smollm_pre(tok, hf_digits, text):
    assert tok.encode(text) == hf_digits.encode(text, add_special_tokens=False).ids


def test_spaces_before_digit_follow_smollm_pre(tok, hf_tok):
    ids = tok.encode("a  0")
    assert [tok.id_to_token(i) for i in ids] == ["a", "ĠĠ", "0"]  # llama.cpp's split for `smollm`
    assert hf_tok.convert_ids_to_tokens(hf_tok.encode("a  0")) == ["a", "Ġ", "Ġ", "0"]  # GPT-2 regex only


def test_special_tokens_in_text_are_single_ids(tok):
    ids = tok.encode("a<|im_start|>b<|im_end|>c<|endoftext|>")
    for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tok.token_to_id(name) in ids


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_transformers(tok, hf_tok, skip):
    for text in SAMPLES + random_texts(seed=1):
        ids = hf_tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)
    rng = random.Random(0)
    for _ in range(50):  # random ids, including special and partial-UTF-8 byte tokens
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)


def test_roundtrip(tok):
    for text in SAMPLES + random_texts(seed=2):
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_vocab_and_ids(tok, hf_tok, bundled_metadata):
    tokens = bundled_metadata["tokenizer.ggml.tokens"]
    assert tok.vocab_size == len(tokens) == len(hf_tok)
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.id_to_token(0) == "<|endoftext|>"
    assert tok.id_to_token(905) == hf_tok.convert_ids_to_tokens(905)
    # eos, and the end-of-text control token that is also in the vocabulary
    assert tok.eos_token_ids == frozenset({2, 0})
    assert tok.is_special(1) and not tok.is_special(905)
