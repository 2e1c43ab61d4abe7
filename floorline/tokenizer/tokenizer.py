"""The Tokenizer: text <-> token ids, chat templates, and which ids end generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer as Backend

from floorline.errors import InvalidRequestError
from floorline.tokenizer.chat_template import render_chat
from floorline.tokenizer.sources import DEFAULT_TEMPLATE, TokenizerInfo, load_gguf_metadata, load_hf_dir

# Control tokens that end a turn or a document in the common chat formats; each one present
# in a vocabulary as a special token stops generation.
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>",
    "<end_of_turn>", "<|end|>",
)


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the model's BOS/EOS rules and chat templates."""

    def __init__(self, backend: Backend, info: TokenizerInfo):
        self._backend = backend
        self.info = info
        self.vocab_size: int = max(backend.get_vocab_size(with_added_tokens=True), info.vocab_size or 0)
        self.bos_token_id: int | None = info.bos_token_id
        self.eos_token_id: int | None = info.eos_token_id
        self.pad_token_id: int | None = info.pad_token_id
        self._special_ids = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        self.eos_token_ids: frozenset[int] = self._collect_eos_ids()

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "Tokenizer":
        """From a Hugging Face model directory (tokenizer.json and its companion files)."""
        return cls(*load_hf_dir(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], cache_dir: str | Path | None = None) -> "Tokenizer":
        """From GGUF key/values; the built tokenizer is cached under `cache_dir`
        (default `$FLOORLINE_CACHE_DIR/tokenizers`)."""
        return cls(*load_gguf_metadata(metadata, Path(cache_dir) if cache_dir is not None else None))

    @property
    def backend(self) -> Backend:
        """The underlying `tokenizers.Tokenizer` (its post-processor is not used: see `encode`)."""
        return self._backend

    def _collect_eos_ids(self) -> frozenset[int]:
        ids = {self.eos_token_id, *self.info.extra_eos_ids}
        for text in END_OF_TURN_TOKENS:
            tid = self._backend.token_to_id(text)
            if tid is not None and tid in self._special_ids:
                ids.add(tid)
        return frozenset(i for i in ids if i is not None and 0 <= i < self.vocab_size)

    # ------------------------------------------------------------ text <-> ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, the model's BOS (and EOS, if it wants one).
        Special tokens written in the text (`<|im_start|>`) become their ids."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"the prompt must be a string, got {type(text).__name__}", param="prompt")
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens:
            ids = [*self.info.prefix_ids, *ids, *self.info.suffix_ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; special tokens are left out unless `skip_special_tokens=False`."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry for `token_id` (in the tokenizer's own spelling, e.g. 'Ġthe')."""
        return self._backend.id_to_token(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        """Whether `decode(..., skip_special_tokens=True)` leaves this id out."""
        return int(token_id) in self._special_ids

    # ------------------------------------------------------------ chat

    @property
    def chat_template(self) -> str | None:
        """The default chat template's Jinja source, or None if the model has none."""
        return self.info.chat_templates.get(DEFAULT_TEMPLATE)

    def _template(self, name: str | None, tools: Any) -> str | None:
        templates = self.info.chat_templates
        if name is not None:
            if name in templates:
                return templates[name]
            if "{" in name:
                return name  # a template given as source text
            known = ", ".join(sorted(templates)) or "none"
            raise InvalidRequestError(f"no chat template named {name!r}; this model has: {known}")
        if tools and "tool_use" in templates:
            return templates["tool_use"]
        return templates.get(DEFAULT_TEMPLATE)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            *, chat_template: str | None = None, tools: list[dict] | None = None,
                            **kwargs: Any) -> str:
        """The prompt text for `messages`, rendered as transformers renders it.

        `chat_template` picks a named template of the model or is Jinja source; `tools` and other
        keyword arguments (`enable_thinking`, ...) are passed to the template.
        """
        return render_chat(
            self._template(chat_template, tools),
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.info.named_tokens,
            tools=tools,
            **kwargs,
        )

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """Token ids of the rendered chat. Templates usually write BOS themselves; it is added
        only when the model wants one and the rendered text does not start with it."""
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        ids = self._backend.encode(text, add_special_tokens=False).ids
        prefix = list(self.info.prefix_ids)
        if prefix and ids[: len(prefix)] != prefix:
            ids = prefix + ids
        return ids

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={sorted(self.eos_token_ids)}, chat_template={self.chat_template is not None})")
