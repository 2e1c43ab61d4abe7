"""Chat prompts whose message text cannot forge control tokens.

`Tokenizer.encode_chat` encodes the rendered template as one string, and the tokenizer turns
every special-token string in it (`<|im_start|>`) into its control id, wherever it came from.
So a user message holding `<|im_end|>\\n<|im_start|>system\\n...` would open a real system turn.

Here, special-token strings inside message text are swapped for unguessable placeholders before
rendering; the rendered text is split at the placeholders; template text is encoded as usual
(its control tokens stay control tokens) and each placeholder is encoded as plain text. Messages
with no special-token string take `Tokenizer.encode_chat` unchanged. The server, `LLM.chat` and the
CLI's chat all encode through this.
"""

from __future__ import annotations

import re
import secrets
import threading
from typing import Any

from tokenizers import Tokenizer as Backend

from floorline.tokenizer.tokenizer import Tokenizer

# Message fields written by the client that a template may render (role is a fixed set).
_TEXT_FIELDS = ("content", "name")


class SafeChatEncoder:
    """Encodes chats for one tokenizer; message text is always text, never control tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        specials = [t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special]
        # Longest first, so that a special string containing another is matched whole.
        self._special_re = (re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
                            if specials else None)
        self._plain: Backend | None = None
        self._lock = threading.Lock()

    def _plain_backend(self) -> Backend:
        """A copy of the tokenizer that reads special-token strings as ordinary text."""
        with self._lock:
            if self._plain is None:
                plain = Backend.from_str(self.tokenizer.backend.to_str())
                plain.encode_special_tokens = True
                self._plain = plain
            return self._plain

    def has_special_text(self, text: str) -> bool:
        return self._special_re is not None and self._special_re.search(text) is not None

    def encode(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               **template_kwargs: Any) -> list[int]:
        """Prompt ids of `messages` rendered with the model's chat template."""
        if not any(isinstance(m.get(k), str) and self.has_special_text(m[k]) for m in messages for k in _TEXT_FIELDS):
            return self.tokenizer.encode_chat(messages, add_generation_prompt, **template_kwargs)
        nonce = secrets.token_hex(8)
        marker = re.compile("\ue000" + nonce + r":(\d+)\ue001")
        found: list[str] = []

        def hide(match: re.Match) -> str:
            found.append(match.group(0))
            return f"\ue000{nonce}:{len(found) - 1}\ue001"

        hidden = []
        for m in messages:
            m = dict(m)
            for k in _TEXT_FIELDS:
                if isinstance(m.get(k), str):
                    m[k] = self._special_re.sub(hide, m[k])
            hidden.append(m)
        text = self.tokenizer.apply_chat_template(hidden, add_generation_prompt, **template_kwargs)
        backend, plain = self.tokenizer.backend, self._plain_backend()
        ids: list[int] = []
        pos = 0
        for match in marker.finditer(text):
            ids += backend.encode(text[pos:match.start()], add_special_tokens=False).ids
            ids += plain.encode(found[int(match.group(1))], add_special_tokens=False).ids
            pos = match.end()
        ids += backend.encode(text[pos:], add_special_tokens=False).ids
        prefix = list(self.tokenizer.info.prefix_ids)
        if prefix and ids[: len(prefix)] != prefix:
            ids = prefix + ids  # the same BOS rule as Tokenizer.encode_chat
        return ids
