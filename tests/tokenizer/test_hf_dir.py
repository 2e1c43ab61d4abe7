"""Tokenizer.from_hf_dir on transformers' own save_pretrained output, and its companion files."""

from __future__ import annotations

import json
import shutil

import pytest

from floorline.errors import CorruptFileError, UnsupportedModelError
from floorline.tokenizer import Tokenizer
from tests.tokenizer.texts import CONVERSATIONS, SAMPLES, random_texts


@pytest.fixture(scope="module")
def dir_tok(hf_dir) -> Tokenizer:
    return Tokenizer.from_hf_dir(hf_dir)


def test_same_ids_as_transformers_and_gguf(dir_tok, hf_tok, tok):
    for text in SAMPLES + random_texts(seed=4):
        assert dir_tok.encode(text) == hf_tok.encode(text)
    for text in SAMPLES:
        assert dir_tok.encode(text) == tok.encode(text)
        ids = tok.encode(text)
        assert dir_tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)


def test_same_template_and_special_ids(dir_tok, hf_tok):
    for msgs in CONVERSATIONS.values():
        assert dir_tok.apply_chat_template(msgs) == hf_tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True)
    assert dir_tok.bos_token_id == 1 and dir_tok.eos_token_id == 2
    assert dir_tok.eos_token_ids == frozenset({0, 2})
    assert dir_tok.vocab_size == 49152


def _copy(hf_dir, tmp_path):
    out = tmp_path / "tok"
    shutil.copytree(hf_dir, out)
    return out


def _edit_json(path, **changes):
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


def test_extra_eos_ids_and_bos_flag(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 7, "bos_token_id": 1}))
    _edit_json(d / "tokenizer_config.json", add_bos_token=True)
    t = Tokenizer.from_hf_dir(d)
    assert t.eos_token_ids == frozenset({0, 2, 5, 7})
    assert t.encode("hi") == [1, *t.encode("hi", add_special_tokens=False)]
    # A template that writes BOS itself does not get a second one.
    ids = t.encode_chat([{"role": "user", "content": "x"}])
    assert ids[0] == 1 and ids[1] != 1


def test_template_sources(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    (d / "chat_template.jinja").unlink()
    _edit_json(d / "tokenizer_config.json", chat_template=[
        {"name": "default", "template": "D{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T{{ tools | length }}"},
    ])
    t = Tokenizer.from_hf_dir(d)
    msgs = [{"role": "user", "content": "x"}]
    assert t.apply_chat_template(msgs) == "Dx"
    assert t.apply_chat_template(msgs, tools=[{"name": "f"}]) == "T1"
    (d / "chat_template.jinja").write_text("J{{ messages | length }}")  # the .jinja file wins
    assert Tokenizer.from_hf_dir(d).apply_chat_template(msgs) == "J1"


def test_missing_and_corrupt_files(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedModelError, match="no tokenizer.json"):
        Tokenizer.from_hf_dir(d)
