"""The built-tokenizer cache: second build loads from disk, fast; writes are atomic."""

from __future__ import annotations

import time

import pytest

from floorline.tokenizer import Tokenizer
from floorline.tokenizer import sources
from floorline.tokenizer.build_cache import vocab_hash


def test_second_build_comes_from_cache(bundled_metadata, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOORLINE_CACHE_DIR", str(tmp_path))
    first = Tokenizer.from_gguf_metadata(bundled_metadata)
    files = list((tmp_path / "tokenizers").iterdir())
    assert [f.name for f in files] == [f"{vocab_hash(bundled_metadata)}.json"]  # no temp files left

    def no_build(_metadata):
        raise AssertionError("rebuilt although the cache holds this vocabulary")

    monkeypatch.setattr(sources, "build_gguf_backend", no_build)
    t0 = time.perf_counter()
    second = Tokenizer.from_gguf_metadata(bundled_metadata)
    assert time.perf_counter() - t0 < 2.0
    text = "Cache me if you can: 你好 😀 <|im_end|>"
    assert second.encode(text) == first.encode(text)
    assert second.eos_token_ids == first.eos_token_ids


def test_hash_follows_the_vocabulary(bundled_metadata):
    changed = dict(bundled_metadata, **{"tokenizer.ggml.pre": "qwen2"})
    assert vocab_hash(changed) != vocab_hash(bundled_metadata)
    same = dict(bundled_metadata, **{"tokenizer.chat_template": "other"})  # not part of the build
    assert vocab_hash(same) == vocab_hash(bundled_metadata)


def test_damaged_cache_entry_is_rebuilt(bundled_metadata, tmp_path):
    entry = tmp_path / f"{vocab_hash(bundled_metadata)}.json"
    entry.write_text('{"truncated')
    t = Tokenizer.from_gguf_metadata(bundled_metadata, cache_dir=tmp_path)
    assert t.encode("hello") == [28120]
    assert Tokenizer.from_gguf_metadata(bundled_metadata, cache_dir=tmp_path).encode("hello") == [28120]


def test_unwritable_cache_is_not_fatal(bundled_metadata, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache directory should be
    t = Tokenizer.from_gguf_metadata(bundled_metadata, cache_dir=blocker / "sub")
    assert t.encode("hello") == [28120]


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "default", "tekken"])
def test_other_pre_tokenizers_build(bundled_metadata, tmp_path, pre):
    """The bundled vocabulary under each split rule: builds, round-trips, keeps special tokens whole."""
    t = Tokenizer.from_gguf_metadata(dict(bundled_metadata, **{"tokenizer.ggml.pre": pre}), cache_dir=tmp_path)
    text = "Hello  world 12345\n\n  <|im_end|> it's"
    ids = t.encode(text)
    assert t.decode(ids, skip_special_tokens=False) == text
    assert 2 in ids


def test_unknown_pre_tokenizer_is_refused(bundled_metadata, tmp_path):
    from floorline.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="tokenizer.ggml.pre='nope'"):
        Tokenizer.from_gguf_metadata(dict(bundled_metadata, **{"tokenizer.ggml.pre": "nope"}), cache_dir=tmp_path)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "tekken"])
def test_split_regexes_match_transformers(bundled_metadata, hf_tok, tmp_path, pre):
    """Each split rule against transformers' table of the same llama.cpp pre-tokenizer names."""
    import copy

    from tokenizers import Regex, pre_tokenizers

    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    from tests.tokenizer.texts import SAMPLES, random_texts

    ref = copy.deepcopy(hf_tok.backend_tokenizer)
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(mapping.GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    t = Tokenizer.from_gguf_metadata(dict(bundled_metadata, **{"tokenizer.ggml.pre": pre}), cache_dir=tmp_path)
    for text in SAMPLES + random_texts(40, seed=5):
        assert t.encode(text) == ref.encode(text, add_special_tokens=False).ids
