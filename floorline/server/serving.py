"""What both OpenAI endpoints share: admitting a call's engine requests, merging their outputs,
per-choice deltas, logprobs, usage and the context-length check."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from floorline.engine.async_engine import AsyncLLMEngine, RequestStream
from floorline.engine.output_processor import CompletionOutput, RequestOutput
from floorline.sampling_params import SamplingParams
from floorline.server.errors import APIError
from floorline.tokenizer import Tokenizer


@dataclass
class ServerContext:
    """What request handlers need: the engine front, the tokenizer, names and limits."""

    engine: AsyncLLMEngine
    tokenizer: Tokenizer
    model_name: str
    max_model_len: int
    chat_encoder: Any = None  # SafeChatEncoder, built by the app
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_context(num_prompt_tokens: int, max_tokens: int | None, max_model_len: int,
                  prompt_param: str, max_tokens_param: str) -> None:
    """400 with the numbers when the prompt, or prompt + max_tokens, does not fit the context."""
    if num_prompt_tokens >= max_model_len:
        raise APIError(400, f"this model's maximum context length is {max_model_len} tokens; the prompt has "
                            f"{num_prompt_tokens} tokens (at most {max_model_len - 1}, to leave room for one "
                            f"output token)", param=prompt_param, code="context_length_exceeded")
    if max_tokens is not None and num_prompt_tokens + max_tokens > max_model_len:
        raise APIError(400, f"this model's maximum context length is {max_model_len} tokens; the prompt has "
                            f"{num_prompt_tokens} tokens and {max_tokens_param} asks for {max_tokens} more "
                            f"({num_prompt_tokens + max_tokens} in all); lower {max_tokens_param} to at most "
                            f"{max_model_len - num_prompt_tokens}", param=max_tokens_param,
                       code="context_length_exceeded")


class ChoiceState:
    """What has been sent of one choice, so each frame carries only the new part.

    Deltas come from the cumulative `text` / `token_ids` rather than the engine's `delta_*`
    fields, which stay stale on a choice that got no update in a step (n > 1).
    """

    def __init__(self, index: int):
        self.index = index
        self.num_chars = 0
        self.num_tokens = 0
        self.finish_sent = False

    def advance(self, c: CompletionOutput) -> tuple[str, list[int], list]:
        """The text, token ids and logprobs not yet sent (and marks them sent)."""
        text, ids = c.text[self.num_chars:], c.token_ids[self.num_tokens:]
        logprobs = c.logprobs[self.num_tokens:len(c.token_ids)] if c.logprobs is not None else []
        self.num_chars, self.num_tokens = len(c.text), len(c.token_ids)
        return text, ids, logprobs


class Generation:
    """The engine requests behind one API call (one per prompt) and their merged outputs."""

    def __init__(self, engine: AsyncLLMEngine, streams: list[RequestStream], n: int):
        self.engine = engine
        self.streams = streams
        self.n = n
        self.num_prompt_tokens = sum(s.num_prompt_tokens for s in streams)

    @classmethod
    async def start(cls, engine: AsyncLLMEngine, call_id: str, prompts: list[list[int]],
                    params: SamplingParams) -> Generation:
        """Admits every prompt or none: a refusal aborts the ones already admitted."""
        streams: list[RequestStream] = []
        try:
            for i, ids in enumerate(prompts):
                rid = call_id if len(prompts) == 1 else f"{call_id}-{i}"
                streams.append(await engine.add_request(rid, ids, params))
        except BaseException:
            for s in streams:
                engine.abort(s.request_id)
            raise
        return cls(engine, streams, params.n)

    def abort(self) -> None:
        for s in self.streams:
            if not s.finished:
                self.engine.abort(s.request_id)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) as they come; leaving early aborts whatever is unfinished."""
        pending: dict[asyncio.Task, int] = {}
        try:
            for i, s in enumerate(self.streams):
                pending[asyncio.ensure_future(s.__anext__())] = i
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: pending[t]):
                    i = pending.pop(task)
                    try:
                        out = task.result()
                    except StopAsyncIteration:
                        continue
                    yield i, out
                    if not out.finished:
                        pending[asyncio.ensure_future(self.streams[i].__anext__())] = i
        finally:
            for task in pending:
                task.cancel()
            self.abort()

    async def collect(self) -> list[RequestOutput]:
        """The finished output of every prompt, in prompt order."""
        final: list[RequestOutput | None] = [None] * len(self.streams)
        async for i, out in self.outputs():
            if out.finished:
                final[i] = out
        return final  # type: ignore[return-value]


async def collect_or_abort(gen: Generation, wait_disconnect) -> list[RequestOutput] | None:
    """`gen.collect()`; None (and the requests aborted) if `wait_disconnect()` returns first."""
    collect = asyncio.ensure_future(gen.collect())
    watch = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():
            return None
        return collect.result()
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
        gen.abort()


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens}


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


@functools.lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """The printable character a byte-level BPE vocabulary uses for each byte, inverted.

    Bytes that are printable Latin-1 stand for themselves; the others (controls, space, ...)
    are moved, in order, to code points from 256 up.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def token_bytes(tokenizer: Tokenizer, token_id: int) -> list[int]:
    """The raw UTF-8 bytes of one token (a token may hold part of a character)."""
    piece = tokenizer.id_to_token(token_id)
    decoder = type(tokenizer.backend.decoder).__name__ if tokenizer.backend.decoder is not None else ""
    if piece is not None and not tokenizer.is_special(token_id):
        if decoder == "ByteLevel":
            table = _byte_level_table()
            if all(ch in table for ch in piece):
                return [table[ch] for ch in piece]
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
            try:
                return [int(piece[3:5], 16)]
            except ValueError:
                pass
    return list(token_text(tokenizer, token_id).encode("utf-8"))
