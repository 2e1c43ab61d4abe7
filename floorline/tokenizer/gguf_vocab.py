"""Builds a `tokenizers.Tokenizer` from the vocabulary stored in GGUF metadata.

Two vocabulary kinds (`tokenizer.ggml.model`) are supported:
  gpt2   byte-level BPE; the text is split by a regex chosen from `tokenizer.ggml.pre`.
  llama  SentencePiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama); the merges
         are derived from the token scores when the file has none.
Control and user-defined tokens become added tokens, so they are matched whole in text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from floorline.errors import CorruptFileError, UnsupportedModelError

# llama.cpp token types (gguf `tokenizer.ggml.token_type`).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # SentencePiece's visible space

# Pre-tokenizer split patterns, as the models' own tokenizer.json files state them.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizerKind:
    """How a byte-level vocabulary splits text before BPE runs."""

    split: str | None  # a regex applied before byte-level mapping; None: GPT-2's built-in one
    digits: bool = False  # split every digit off on its own first (SmolLM, StarCoder)
    ignore_merges: bool = False  # a whole pre-token found in the vocab is taken as is (Llama 3)


_GPT2 = PreTokenizerKind(split=None)
_DIGITS_GPT2 = PreTokenizerKind(split=None, digits=True)
_LLAMA3 = PreTokenizerKind(split=_LLAMA3_SPLIT, ignore_merges=True)
_QWEN2 = PreTokenizerKind(split=_QWEN2_SPLIT)
_TEKKEN = PreTokenizerKind(split=_TEKKEN_SPLIT, ignore_merges=True)

# `tokenizer.ggml.pre` -> split; the names are llama.cpp's.
PRE_TOKENIZERS: dict[str, PreTokenizerKind] = {
    "default": _GPT2, "gpt2": _GPT2, "gpt-2": _GPT2, "mpt": _GPT2, "olmo": _GPT2,
    "smollm": _DIGITS_GPT2, "starcoder": _DIGITS_GPT2, "refact": _DIGITS_GPT2,
    "codeshell": _DIGITS_GPT2, "command-r": _DIGITS_GPT2,
    "llama-bpe": _LLAMA3, "llama3": _LLAMA3, "llama-v3": _LLAMA3, "smaug-bpe": _LLAMA3,
    "dbrx": _LLAMA3, "falcon3": _LLAMA3, "pixtral": _LLAMA3,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "stablelm2": _QWEN2, "megrez": _QWEN2,
    "tekken": _TEKKEN,
}


def _int_list(metadata: dict[str, Any], key: str, n: int, default: int) -> list[int]:
    values = metadata.get(key)
    if values is None:
        return [default] * n
    if len(values) != n:
        raise CorruptFileError(f"GGUF {key} has {len(values)} entries but the vocabulary has {n} tokens")
    return [int(v) for v in values]


def build_gguf_backend(metadata: dict[str, Any]) -> Backend:
    """The tokenizer that GGUF `metadata` describes (no post-processor: BOS/EOS are the caller's)."""
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedModelError("this GGUF file has no tokenizer (no tokenizer.ggml.tokens)")
    tokens = [str(t) for t in tokens]
    types = _int_list(metadata, "tokenizer.ggml.token_type", len(tokens), NORMAL)
    if model == "gpt2":
        backend = _byte_level_backend(metadata, tokens, types)
    elif model == "llama":
        backend = _sentencepiece_backend(metadata, tokens, types)
    else:
        raise UnsupportedModelError(
            f"unsupported GGUF tokenizer model {model!r}; supported: 'gpt2' (byte-level BPE),"
            " 'llama' (SentencePiece BPE)"
        )
    _add_special_tokens(backend, tokens, types)
    return backend


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # a repeated spelling keeps its first id, as llama.cpp does
    return vocab


def _parse_merges(merges: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for m in merges:
        left, sep, right = str(m).partition(" ")
        if not sep:
            raise CorruptFileError(f"GGUF tokenizer.ggml.merges holds {m!r}, not two tokens split by a space")
        pairs.append((left, right))
    return pairs


def _byte_level_backend(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Backend:
    pre = str(metadata.get("tokenizer.ggml.pre") or "default")
    kind = PRE_TOKENIZERS.get(pre)
    if kind is None:
        raise UnsupportedModelError(
            f"unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: "
            + ", ".join(sorted(PRE_TOKENIZERS))
        )
    merges = _parse_merges(metadata.get("tokenizer.ggml.merges") or [])
    bpe = models.BPE(vocab=_vocab(tokens), merges=merges, ignore_merges=kind.ignore_merges)
    backend = Backend(bpe)
    steps: list[Any] = []
    if kind.digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if kind.split is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps.append(pre_tokenizers.Split(Regex(kind.split), behavior="isolated"))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_backend(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Backend:
    vocab = _vocab(tokens)
    if metadata.get("tokenizer.ggml.merges"):
        merges = _parse_merges(metadata["tokenizer.ggml.merges"])
    else:
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise CorruptFileError("GGUF SentencePiece vocabulary needs tokenizer.ggml.scores, one per token")
        merges = merges_from_scores(tokens, types, [float(s) for s in scores])
    unk_id = int(metadata.get("tokenizer.ggml.unknown_token_id", 0))
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else None
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    backend = Backend(bpe)
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", SPM_SPACE)
    # Prepend runs on each stretch of text between added tokens: llama.cpp also puts the
    # prefix space back after every special token.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPM_SPACE), replace]) if add_prefix else replace
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))  # drop the space encode added
    backend.decoder = decoders.Sequence(steps)
    return backend


def merges_from_scores(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a normal token into two
    normal tokens, best (highest-scoring) result first.

    SentencePiece merges the adjacent pair whose concatenation scores highest; ranking the merges
    by that score makes `tokenizers`' lowest-rank-first BPE take the same steps.
    """
    normal = {}
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ == NORMAL:
            normal.setdefault(tok, i)
    ranked = []
    for tok, i in normal.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            li, ri = normal.get(left), normal.get(right)
            if li is not None and ri is not None:
                ranked.append((-scores[i], i, li, ri, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(backend: Backend, tokens: list[str], types: list[int]) -> None:
    """Control and unknown tokens become special (skipped by decode); user-defined ones become
    plain added tokens (kept by decode, like `<think>`). Both are never split in text."""
    seen: set[str] = set()
    special, plain = [], []
    for tok, typ in zip(tokens, types):
        if tok in seen or not tok:
            continue
        if typ in (CONTROL, UNKNOWN):
            special.append(AddedToken(tok, special=True, normalized=False))
        elif typ == USER_DEFINED:
            plain.append(AddedToken(tok, special=False, normalized=False))
        else:
            continue
        seen.add(tok)
    if special:
        backend.add_special_tokens(special)
    if plain:
        backend.add_tokens(plain)
