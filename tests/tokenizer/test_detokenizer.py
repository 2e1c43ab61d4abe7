"""IncrementalDetokenizer: deltas join to the full decode, never hold broken UTF-8, stay cheap."""

from __future__ import annotations

import random

import pytest

from floorline.tokenizer import IncrementalDetokenizer
from tests.tokenizer.texts import SAMPLES, random_texts

STREAM_TEXTS = [
    "Héllo wörld! 你好，世界 😀🦀👨‍👩‍👧‍👦 done.",
    "  leading and   inner spaces\n\n  indented\tline",
    "def f(x):\n    return x  # ok\n",
    "日本語のテキストと한국어 텍스트🇫🇷",
] + SAMPLES


def stream(tok, ids, chunks=None, skip=True):
    """Feeds `ids` in chunks; returns (deltas, flushed tail, detokenizer)."""
    detok = IncrementalDetokenizer(tok, [1, 2, 3], skip_special_tokens=skip)
    deltas, i = [], 0
    for size in chunks or [1] * len(ids):
        deltas.append(detok.add(ids[i:i + size]))
        i += size
    assert i == len(ids)
    return deltas, detok.flush(), detok


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_token_by_token_equals_full_decode(tok, text):
    ids = tok.encode(text)
    deltas, tail, detok = stream(tok, ids)
    assert tail == ""
    assert "".join(deltas) == detok.text == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)  # never half a character


def test_random_chunks(tok):
    rng = random.Random(0)
    for text in STREAM_TEXTS + random_texts(30, seed=3):
        ids = tok.encode(text)
        chunks = []
        while sum(chunks) < len(ids):
            chunks.append(min(rng.randint(1, 4), len(ids) - sum(chunks)))
        for skip in (True, False):
            deltas, tail, _ = stream(tok, ids, chunks, skip=skip)
            assert "".join(deltas) + tail == tok.decode(ids, skip_special_tokens=skip)


_PRINTABLE = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
_UNPRINTABLE = sorted(set(range(256)) - set(_PRINTABLE))


def byte_token(tok, byte: int) -> int | None:
    """The byte-level token that spells one raw byte (GPT-2's byte alphabet), if the vocab has it."""
    char = chr(byte) if byte in _PRINTABLE else chr(256 + _UNPRINTABLE.index(byte))
    return tok.token_to_id(char)


def test_multibyte_character_is_held_back(tok):
    per_byte = [byte_token(tok, b) for b in "😀".encode("utf-8")]  # one token per byte: 4 steps
    detok = IncrementalDetokenizer(tok, [])
    assert detok.add(tok.encode("a")) == "a"
    assert [detok.add([t]) for t in per_byte] == ["", "", "", "😀"]
    assert detok.add(tok.encode(" ok")) == " ok"
    assert detok.text == "a😀 ok"


def test_invalid_bytes_are_released_once_text_follows(tok):
    b80, be4, x = byte_token(tok, 0x80), byte_token(tok, 0xE4), tok.encode("x")[0]
    detok = IncrementalDetokenizer(tok, [])
    assert detok.add([b80]) == ""  # U+FFFD at the tail: held, it might be a character's start
    assert detok.add([be4]) == ""  # still only U+FFFD: held
    assert detok.add([x]) == "\ufffd\ufffdx"  # real text follows: the bad bytes are final
    assert detok.add([b80, x, be4]) == "\ufffdx"  # emits up to the unfinished 0xE4
    assert detok.flush() == "\ufffd"  # end of stream: the unfinished character is shown as is
    assert detok.text == tok.decode([b80, be4, x, b80, x, be4])


def test_random_token_sequences(tok):
    """Arbitrary ids (lone continuation bytes, cut characters, special tokens) still join exactly."""
    rng = random.Random(1)
    byte_tokens = [t for b in range(0x80, 0x100) if (t := byte_token(tok, b)) is not None]
    for _ in range(200):
        ids = [rng.choice(byte_tokens) if rng.random() < 0.5 else rng.randrange(tok.vocab_size)
               for _ in range(rng.randint(1, 40))]
        for skip in (True, False):
            deltas, tail, detok = stream(tok, ids, skip=skip)
            assert "".join(deltas) + tail == tok.decode(ids, skip_special_tokens=skip)
            assert detok.text == tok.decode(ids, skip_special_tokens=skip)


def test_special_tokens_skipped_or_kept(tok):
    ids = tok.encode("Hi<|im_end|> there")
    assert "".join(stream(tok, ids)[0]) == "Hi there"
    assert "".join(stream(tok, ids, skip=False)[0]) == "Hi<|im_end|> there"


def test_cost_per_step_is_a_few_tokens(tok):
    """Each step decodes a short window, never the whole output."""
    calls = []
    real = tok.decode

    class Spy:
        def __getattr__(self, name):
            return getattr(tok, name)

        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return real(ids, skip_special_tokens)

    ids = tok.encode("The quick brown fox jumps over the lazy dog. 你好 😀 " * 40)
    detok = IncrementalDetokenizer(Spy(), [])
    for t in ids:
        detok.add([t])
    assert len(ids) > 400
    assert detok.text == tok.decode(ids)
    assert max(calls) <= 8
    assert len(calls) <= 3 * len(ids)
