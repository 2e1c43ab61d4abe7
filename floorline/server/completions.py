"""POST /v1/completions: text or token-id prompts (one or many), streamed or whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse, Response

from floorline.engine.outputs import Logprob
from floorline.server.errors import APIError, error_body, to_api_error
from floorline.server.protocol import CompletionRequest
from floorline.server.serving import (
    ChoiceState,
    Generation,
    ServerContext,
    check_context,
    collect_or_abort,
    new_id,
    token_text,
    usage,
)
from floorline.server.sse import DONE_FRAME, EventStreamResponse, sse_frame


def _logprobs(ctx: ServerContext, ids: list[int], lps: list[Logprob], offset: int) -> dict[str, Any]:
    """OpenAI's legacy completions logprobs: tokens, their logprobs, top alternatives, char offsets."""
    tokens = [token_text(ctx.tokenizer, t) for t in ids]
    offsets = []
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{token_text(ctx.tokenizer, t): v for t, v in lp.top.items()} for lp in lps],
        "text_offset": offsets,
    }


def _prompt_ids(ctx: ServerContext, req: CompletionRequest) -> list[list[int]]:
    ids_list = []
    for p in req.prompts:
        ids = ctx.tokenizer.encode(p) if isinstance(p, str) else p
        check_context(len(ids), req.max_tokens, ctx.max_model_len, "prompt", "max_tokens")
        ids_list.append(ids)
    return ids_list


async def create_completion(ctx: ServerContext, req: CompletionRequest,
                            wait_disconnect: Callable[[], Awaitable[None]]) -> Response:
    ctx.check_model(req.model)
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported (prompt logprobs are not computed)",
                       param="echo")
    params = req.sampling_params()
    prompts = await asyncio.to_thread(_prompt_ids, ctx, req)  # tokenizing: off the event loop
    call_id = new_id("cmpl")
    gen = await Generation.start(ctx.engine, call_id, prompts, params)
    echoes = [ctx.tokenizer.decode(ids) if req.echo else "" for ids in prompts]
    if req.stream:
        return EventStreamResponse(_stream(ctx, req, call_id, gen, echoes))
    finals = await collect_or_abort(gen, wait_disconnect)
    if finals is None:
        return Response(status_code=499)  # nobody is listening
    choices, num_generated = [], 0
    for p, out in enumerate(finals):
        for c in out.outputs:
            num_generated += len(c.token_ids)
            choices.append({
                "index": p * req.n + c.index,
                "text": echoes[p] + c.text,
                "logprobs": _logprobs(ctx, c.token_ids, c.logprobs, 0) if c.logprobs is not None else None,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            })
    return JSONResponse({"id": call_id, "object": "text_completion", "created": ctx.created,
                         "model": ctx.model_name, "choices": choices,
                         "usage": usage(gen.num_prompt_tokens, num_generated)})


async def _stream(ctx: ServerContext, req: CompletionRequest, call_id: str, gen: Generation,
                  echoes: list[str]) -> AsyncIterator[str]:
    base = {"id": call_id, "object": "text_completion", "created": ctx.created, "model": ctx.model_name}
    states: dict[int, ChoiceState] = {}
    offsets: dict[int, int] = {}
    num_generated = 0
    try:
        for p, echo in enumerate(echoes):
            for i in range(req.n):
                if echo:
                    yield sse_frame({**base, "choices": [{"index": p * req.n + i, "text": echo, "logprobs": None,
                                                          "finish_reason": None}]})
        async for p, out in gen.outputs():
            for c in out.outputs:
                index = p * req.n + c.index
                state = states.setdefault(index, ChoiceState(index))
                text, ids, lps = state.advance(c)
                num_generated += len(ids)
                finish = c.finish_reason if c.finished and not state.finish_sent else None
                if not text and not ids and finish is None:
                    continue
                logprobs = None
                if c.logprobs is not None:
                    logprobs = _logprobs(ctx, ids, lps, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(t) for t in logprobs["tokens"])
                state.finish_sent |= finish is not None
                yield sse_frame({**base, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                      "finish_reason": finish,
                                                      "stop_reason": c.stop_reason if finish else None}]})
        if req.include_usage:
            yield sse_frame({**base, "choices": [], "usage": usage(gen.num_prompt_tokens, num_generated)})
    except Exception as e:  # the status line is gone; the error travels as an event
        err = to_api_error(e)
        yield sse_frame(error_body(err.status, err.message, err.param, err.code))
    yield DONE_FRAME
