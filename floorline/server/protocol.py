"""OpenAI request schemas (pydantic) for /v1/completions and /v1/chat/completions, and their SamplingParams.

Models are strict (no "1" -> 1 or 1.0 -> 1 coercion, no NaN/inf) and ignore unknown fields, as
OpenAI's server does. Fields whose type is a union are checked by hand so that an error names
the field and what it accepts in one line, not one line per union member.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from floorline.errors import InvalidRequestError
from floorline.sampling_params import SamplingParams

# One API call's prompts, after validation: text or token ids each.
Prompt = str | list[int]

MAX_N = 128  # choices per prompt; each is a sequence in the engine
MAX_PROMPTS = 64  # prompts in one /v1/completions call


def _is_int(x: Any) -> bool:
    return type(x) is int  # bool is an int subclass and must not pass as a token id


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingRequest(_Strict):
    """Fields shared by both endpoints (OpenAI's, then vLLM-style extensions)."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: Any = None  # str | list[str]; SamplingParams checks it and names the field
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM names).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """SamplingParams for this request; raises InvalidRequestError(param=field) for bad values."""
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return SamplingParams(
            n=self.n,
            temperature=pick(self.temperature, 1.0),
            top_p=pick(self.top_p, 1.0),
            top_k=pick(self.top_k, -1),
            min_p=pick(self.min_p, 0.0),
            repetition_penalty=pick(self.repetition_penalty, 1.0),
            presence_penalty=pick(self.presence_penalty, 0.0),
            frequency_penalty=pick(self.frequency_penalty, 0.0),
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids or [],
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
        )


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions."""

    prompt: Any  # str | list[str] | list[int] | list[list[int]]; see `prompts`
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> list[Prompt]:
        what = "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists"
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value:
            raise ValueError(f"{what}; got {_kind(value)}")
        if all(isinstance(x, str) for x in value):
            prompts: list[Prompt] = list(value)
        elif all(_is_int(x) for x in value):
            prompts = [list(value)]
        elif all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in value):
            prompts = [list(x) for x in value]
        else:
            raise ValueError(f"{what}; got a list holding {_kind(next(x for x in value if not isinstance(x, str)))}")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
        return prompts

    @property
    def prompts(self) -> list[Prompt]:
        return self.prompt

    def sampling_params(self) -> SamplingParams:
        return self._sampling_params(self.max_tokens, self.logprobs)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None  # str | list of {"type": "text", "text": str} | None; see the validator
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> str:
        if value is None or isinstance(value, str):
            return value or ""
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError('content parts must be {"type": "text", "text": str} '
                                     "(only text is supported)")
                texts.append(part["text"])
            return "".join(texts)
        raise ValueError(f"content must be a string or a list of text parts, got {_kind(value)}")


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    def sampling_params(self) -> SamplingParams:
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs set to true", param="top_logprobs")
        try:
            return self._sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)
        except InvalidRequestError as e:
            # Name the field the client sent: SamplingParams knows only max_tokens and logprobs.
            renamed = {"max_tokens": self.max_tokens_param, "logprobs": "top_logprobs"}.get(e.param)
            if renamed is None or renamed == e.param:
                raise
            raise InvalidRequestError(str(e).replace(e.param, renamed, 1), param=renamed) from None

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
