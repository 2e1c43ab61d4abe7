"""Tokenization: `Tokenizer` (HF directory or GGUF metadata), chat templates, streaming detokenizer."""

from floorline.tokenizer.chat_template import render_chat, validate_messages
from floorline.tokenizer.detokenizer import IncrementalDetokenizer
from floorline.tokenizer.sources import TokenizerInfo
from floorline.tokenizer.tokenizer import END_OF_TURN_TOKENS, Tokenizer

__all__ = [
    "END_OF_TURN_TOKENS",
    "IncrementalDetokenizer",
    "Tokenizer",
    "TokenizerInfo",
    "render_chat",
    "validate_messages",
]
