"""On-disk cache of tokenizers built from GGUF metadata, keyed by a hash of the vocabulary.

Building a BPE tokenizer from a GGUF vocabulary (and deriving SentencePiece merges) takes
seconds; loading the finished `tokenizer.json` takes a fraction of that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from tokenizers import Tokenizer as Backend

logger = logging.getLogger(__name__)

# Bump when gguf_vocab builds differently, so stale cache entries are never used.
BUILD_VERSION = 1

# The metadata that decides the built tokenizer (ids, chat template and flags do not).
_VOCAB_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_space_prefix",
)


def cache_dir() -> Path:
    """`$FLOORLINE_CACHE_DIR` (default `~/.cache/floorline`)."""
    env = os.environ.get("FLOORLINE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "floorline"


def vocab_hash(metadata: dict[str, Any]) -> str:
    """A stable hex digest of everything in `metadata` that shapes the built tokenizer."""
    h = hashlib.sha256(f"floorline-gguf-tokenizer-v{BUILD_VERSION}".encode())
    for key in _VOCAB_KEYS:
        value = metadata.get(key)
        if isinstance(value, (list, tuple)):
            value = list(value)
        h.update(key.encode())
        h.update(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def cached_build(metadata: dict[str, Any], build: Callable[[dict[str, Any]], Backend],
                 directory: Path | None = None) -> Backend:
    """The tokenizer for `metadata`: loaded from the cache, else built and stored there."""
    path = (directory or cache_dir() / "tokenizers") / f"{vocab_hash(metadata)}.json"
    if path.is_file():
        try:
            return Backend.from_file(str(path))
        except Exception as e:  # a damaged entry is rebuilt, never fatal
            logger.warning("ignoring unreadable tokenizer cache %s (%s)", path, e)
    backend = build(metadata)
    _write_atomic(path, backend.to_str())
    return backend


def _write_atomic(path: Path, text: str) -> None:
    """Writes via a temporary file and a rename, so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only home is no reason to fail: the cache is an optimisation
        logger.warning("cannot cache the tokenizer in %s (%s)", path.parent, e)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        logger.warning("cannot cache the tokenizer in %s (%s)", path, e)
