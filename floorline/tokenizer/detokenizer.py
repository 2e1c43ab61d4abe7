"""Incremental detokenization: the new text of each step, in O(few tokens) per step.

Decoding one token at a time loses information: a SentencePiece token's leading space is
stripped when it starts the decoded text, and a character split over several byte tokens is
U+FFFD until its last byte arrives. So each step decodes a short window that starts at the
previous emission point twice, with and without the new tokens, and emits the difference.

    window = ids[start:]            start: where the text emitted last step began
    seen   = decode(ids[start:read])   read: everything before it has been emitted
    delta  = decode(window)[len(seen):]

A tail that decodes to U+FFFD is held back until more tokens arrive: it may be the start of a
multi-byte character. It is released once later text follows it (bytes that cannot complete a
character stay U+FFFD forever), and by `flush()` at the end of the stream.

Limit: a byte-fallback (SentencePiece) decoder judges a whole run of byte tokens at once, so
a valid character followed directly by invalid byte tokens decodes to U+FFFD in `decode()` but
was already streamed as the character. Only garbage output (never real text) does this.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from floorline.tokenizer.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
# How many held-back tokens are tried as release points: a UTF-8 character is at most 4 bytes.
_MAX_RELEASE_PROBES = 4


class IncrementalDetokenizer:
    """Turns a stream of generated ids into text deltas; `"".join(deltas) + flush()` equals
    `tokenizer.decode(output_ids)`.

    `prompt_ids` is accepted for the caller's convenience but does not change the text: the
    output is decoded as `decode(output_ids)` decodes it (so a SentencePiece model's first
    output token loses its leading space, as in transformers).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] | None = None,
                 skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.num_prompt_tokens = len(prompt_ids) if prompt_ids is not None else 0
        self.skip_special_tokens = skip_special_tokens
        self.output_ids: list[int] = []
        self._start = 0  # window start: a point where decoding can restart cleanly
        self._read = 0  # ids before this have been emitted
        self._seen = ""  # decode(output_ids[_start:_read])
        self._parts: list[str] = []
        self._text_cache: str | None = ""

    @property
    def text(self) -> str:
        """All the text emitted so far."""
        if self._text_cache is None:
            self._text_cache = "".join(self._parts)
        return self._text_cache

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.output_ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: Iterable[int]) -> str:
        """Appends generated ids; returns the text they complete ("" while a character is partial)."""
        before = len(self.output_ids)
        self.output_ids.extend(int(t) for t in token_ids)
        end = len(self.output_ids)
        if end == before:
            return ""
        full = self._decode(self._start)
        if not full.endswith(REPLACEMENT):
            return self._emit(full, end)
        # The tail may be an unfinished character; emit what comes before it. Text that ends
        # in U+FFFD is final only once real text (not just more U+FFFD) follows it: bytes that
        # cannot complete a character stay U+FFFD whatever comes next. (ByteFallback decoders
        # write one U+FFFD per bad byte, so more U+FFFD alone proves nothing.)
        for cut in range(end - 1, max(self._read, end - 1 - _MAX_RELEASE_PROBES), -1):
            head = self._decode(self._start, cut)
            if full.startswith(head) and (not head.endswith(REPLACEMENT) or full[len(head):].strip(REPLACEMENT)):
                return self._emit(head, cut)
        return ""

    def _emit(self, window_text: str, upto: int) -> str:
        """Emits `window_text` (the decode of ids[_start:upto]) past what was already emitted."""
        if len(window_text) <= len(self._seen):
            return ""  # nothing visible yet (e.g. only skipped special tokens): keep the window
        delta = window_text[len(self._seen):]
        self._start, self._read = self._read, upto
        self._seen = self._decode(self._start, self._read)
        self._parts.append(delta)
        self._text_cache = None
        return delta

    def flush(self) -> str:
        """At the end of the stream: the held-back tail (invalid bytes, shown as U+FFFD)."""
        if self._read == len(self.output_ids):
            return ""
        return self._emit(self._decode(self._start), len(self.output_ids))
