"""Shared fixtures: the bundled model's tokenizer, built by floorline and by transformers."""

from __future__ import annotations

import pytest

from floorline.tokenizer import Tokenizer
from floorline.weights.bundled import bundled_model_path


@pytest.fixture(scope="session")
def bundled_metadata() -> dict:
    from floorline.weights.gguf_file import GGUFFile

    with GGUFFile(bundled_model_path()) as f:
        return dict(f.metadata)


@pytest.fixture(scope="session")
def tok(bundled_metadata, tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(bundled_metadata, cache_dir=tmp_path_factory.mktemp("tokcache"))


@pytest.fixture(scope="session")
def hf_tok():
    """transformers' own reading of the same GGUF: the independent reference."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    path = bundled_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def hf_dir(hf_tok, tmp_path_factory):
    """transformers' tokenizer saved as a Hugging Face directory."""
    path = tmp_path_factory.mktemp("hf_tokenizer")
    hf_tok.save_pretrained(str(path))
    return path
