"""POST /v1/chat/completions: messages through the model's chat template, streamed or whole."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse, Response

from floorline.engine.outputs import Logprob
from floorline.server.errors import APIError, error_body, to_api_error
from floorline.server.protocol import ChatCompletionRequest
from floorline.server.serving import (
    ChoiceState,
    Generation,
    ServerContext,
    check_context,
    collect_or_abort,
    new_id,
    token_bytes,
    token_text,
    usage,
)
from floorline.server.sse import DONE_FRAME, EventStreamResponse, sse_frame

# Template switches a client may set (enable_thinking, ...): plain names, scalar values. Strings
# are refused because a template may print them, and names that the template reads as its own
# inputs (messages, tools, bos_token, chat_template) are refused so they cannot be replaced.
_KWARG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RESERVED_KWARGS = {"messages", "tools", "documents", "add_generation_prompt", "chat_template"}


def _template_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    kwargs = req.chat_template_kwargs or {}
    for name, value in kwargs.items():
        if (not _KWARG_NAME.match(name) or name in _RESERVED_KWARGS or name.endswith("_token")
                or not (value is None or isinstance(value, (bool, int, float)))):
            raise APIError(400, f"chat_template_kwargs.{name}: only lower-case switches with boolean or number "
                                f"values are accepted", param="chat_template_kwargs")
    return dict(kwargs)


def _logprobs(ctx: ServerContext, ids: list[int], lps: list[Logprob]) -> list[dict[str, Any]]:
    """OpenAI chat logprobs entries: the token, its logprob and bytes, and the top alternatives."""
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(ctx.tokenizer, token_id), "logprob": logprob,
                "bytes": token_bytes(ctx.tokenizer, token_id)}

    return [{**entry(t, lp.logprob), "top_logprobs": [entry(a, v) for a, v in lp.top.items()]}
            for t, lp in zip(ids, lps)]


async def create_chat_completion(ctx: ServerContext, req: ChatCompletionRequest,
                                 wait_disconnect: Callable[[], Awaitable[None]]) -> Response:
    ctx.check_model(req.model)
    params = req.sampling_params()
    # Rendering and tokenizing a long chat takes a while: off the event loop, so streams keep flowing.
    prompt_ids = await asyncio.to_thread(ctx.chat_encoder.encode, req.message_dicts(), req.add_generation_prompt,
                                         **_template_kwargs(req))
    check_context(len(prompt_ids), params.max_tokens, ctx.max_model_len, "messages", req.max_tokens_param)
    call_id = new_id("chatcmpl")
    gen = await Generation.start(ctx.engine, call_id, [prompt_ids], params)
    if req.stream:
        return EventStreamResponse(_stream(ctx, req, call_id, gen))
    finals = await collect_or_abort(gen, wait_disconnect)
    if finals is None:
        return Response(status_code=499)  # nobody is listening
    choices, num_generated = [], 0
    for c in finals[0].outputs:
        num_generated += len(c.token_ids)
        choices.append({
            "index": c.index,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": {"content": _logprobs(ctx, c.token_ids, c.logprobs)} if c.logprobs is not None else None,
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        })
    return JSONResponse({"id": call_id, "object": "chat.completion", "created": ctx.created,
                         "model": ctx.model_name, "choices": choices,
                         "usage": usage(gen.num_prompt_tokens, num_generated)})


async def _stream(ctx: ServerContext, req: ChatCompletionRequest, call_id: str,
                  gen: Generation) -> AsyncIterator[str]:
    base = {"id": call_id, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model_name}

    def frame(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
        return sse_frame({**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                               "finish_reason": finish}]})

    states = [ChoiceState(i) for i in range(req.n)]
    num_generated = 0
    try:
        for i in range(req.n):  # the role first, as OpenAI sends it
            yield frame(i, {"role": "assistant", "content": ""})
        async for _, out in gen.outputs():
            for c in out.outputs:
                state = states[c.index]
                text, ids, lps = state.advance(c)
                num_generated += len(ids)
                finish = c.finish_reason if c.finished and not state.finish_sent else None
                if not text and not ids and finish is None:
                    continue
                logprobs = {"content": _logprobs(ctx, ids, lps)} if c.logprobs is not None else None
                state.finish_sent |= finish is not None
                yield frame(c.index, {"content": text} if text or finish is None else {}, logprobs, finish)
        if req.include_usage:
            yield sse_frame({**base, "choices": [], "usage": usage(gen.num_prompt_tokens, num_generated)})
    except Exception as e:  # the status line is gone; the error travels as an event
        err = to_api_error(e)
        yield sse_frame(error_body(err.status, err.message, err.param, err.code))
    yield DONE_FRAME
