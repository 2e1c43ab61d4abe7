"""Reads a tokenizer and its settings from a Hugging Face directory or from GGUF metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from floorline.errors import CorruptFileError, ModelNotFoundError, UnsupportedModelError
from floorline.tokenizer.build_cache import cached_build
from floorline.tokenizer.gguf_vocab import build_gguf_backend

DEFAULT_TEMPLATE = "default"


@dataclass(frozen=True)
class TokenizerInfo:
    """What a model's files say beyond the vocabulary: special ids, BOS/EOS use, chat templates."""

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    prefix_ids: tuple[int, ...] = ()  # added before encoded text (BOS) when add_special_tokens
    suffix_ids: tuple[int, ...] = ()  # added after it (EOS, for the rare model that wants it)
    extra_eos_ids: tuple[int, ...] = ()  # generation_config / config.json / GGUF eot, eom
    named_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... for templates
    chat_templates: dict[str, str] = field(default_factory=dict)  # name -> Jinja source
    vocab_size: int | None = None  # GGUF: the token count (repeated spellings included)


# ---------------------------------------------------------------- Hugging Face directory


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config: a string, or a serialized AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _id_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _hf_chat_templates(path: Path, config: dict[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    raw = config.get("chat_template")
    if isinstance(raw, str):
        templates[DEFAULT_TEMPLATE] = raw
    elif isinstance(raw, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        templates.update({t["name"]: t["template"] for t in raw if isinstance(t, dict) and "name" in t})
    extra = path / "additional_chat_templates"
    if extra.is_dir():
        templates.update({f.stem: f.read_text(encoding="utf-8") for f in sorted(extra.glob("*.jinja"))})
    legacy = _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(legacy, str):
        templates[DEFAULT_TEMPLATE] = legacy
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():  # transformers saves the template here and prefers it
        templates[DEFAULT_TEMPLATE] = jinja_file.read_text(encoding="utf-8")
    return templates


def _post_processor_ids(backend: Backend) -> tuple[list[int], list[int]]:
    """The ids tokenizer.json's post-processor puts before and after a text."""
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def load_hf_dir(path: str | Path) -> tuple[Backend, TokenizerInfo]:
    """tokenizer.json plus tokenizer_config.json, chat_template.jinja, generation_config.json, config.json."""
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path}: tokenizer directory not found")
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        hint = " (it has only a slow SentencePiece tokenizer.model)" if (path / "tokenizer.model").is_file() else ""
        raise UnsupportedModelError(f"{path}: no tokenizer.json{hint}; floorline reads tokenizer.json files")
    try:
        backend = Backend.from_file(str(tok_file))
    except Exception as e:
        raise CorruptFileError(f"{tok_file}: cannot be read as a tokenizer ({e})") from e
    cfg = _read_json(path / "tokenizer_config.json")
    gen = _read_json(path / "generation_config.json")
    model_cfg = _read_json(path / "config.json")

    named = {k: t for k in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                            "mask_token") if (t := _token_text(cfg.get(k))) is not None}
    ids = {k: backend.token_to_id(t) for k, t in named.items()}
    bos_id = ids.get("bos_token")
    if bos_id is None:
        bos_id = next(iter(_id_list(model_cfg.get("bos_token_id"))), None)
    eos_id = ids.get("eos_token")
    extra_eos = _id_list(gen.get("eos_token_id")) + _id_list(model_cfg.get("eos_token_id"))
    if eos_id is None and extra_eos:
        eos_id = extra_eos[0]

    prefix, suffix = _post_processor_ids(backend)
    # An explicit flag in tokenizer_config overrides the post-processor, as in transformers.
    if isinstance(cfg.get("add_bos_token"), bool):
        prefix = [bos_id] if cfg["add_bos_token"] and bos_id is not None else []
    if isinstance(cfg.get("add_eos_token"), bool):
        suffix = [eos_id] if cfg["add_eos_token"] and eos_id is not None else []

    info = TokenizerInfo(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=ids.get("pad_token"),
        prefix_ids=tuple(prefix),
        suffix_ids=tuple(suffix),
        extra_eos_ids=tuple(extra_eos),
        named_tokens=named,
        chat_templates=_hf_chat_templates(path, cfg),
    )
    return backend, info


# ---------------------------------------------------------------- GGUF metadata


def load_gguf_metadata(metadata: dict[str, Any], cache_dir: Path | None = None) -> tuple[Backend, TokenizerInfo]:
    """The tokenizer stored in GGUF key/values (built once, then loaded from the cache)."""
    backend = cached_build(metadata, build_gguf_backend, cache_dir)
    tokens = metadata["tokenizer.ggml.tokens"]

    def token_id(name: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if value is None or not 0 <= int(value) < len(tokens):
            return None  # some files carry -1 or an id past the vocabulary for "none"
        return int(value)

    bos_id, eos_id = token_id("bos"), token_id("eos")
    is_spm = metadata.get("tokenizer.ggml.model") == "llama"
    # llama.cpp's defaults when a file does not say: SentencePiece vocabularies want BOS.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", is_spm))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    named = {}
    for key, name in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        tid = token_id(name)
        if tid is not None:
            named[key] = str(tokens[tid])
    templates = {}
    if isinstance(metadata.get("tokenizer.chat_template"), str):
        templates[DEFAULT_TEMPLATE] = metadata["tokenizer.chat_template"]
    for name in metadata.get("tokenizer.chat_templates") or []:
        source = metadata.get(f"tokenizer.chat_template.{name}")
        if isinstance(source, str):
            templates[str(name)] = source
    info = TokenizerInfo(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=token_id("padding"),
        prefix_ids=(bos_id,) if add_bos and bos_id is not None else (),
        suffix_ids=(eos_id,) if add_eos and eos_id is not None else (),
        extra_eos_ids=tuple(i for i in (token_id("eot"), token_id("eom")) if i is not None),
        named_tokens=named,
        chat_templates=templates,
        vocab_size=len(tokens),
    )
    return backend, info
