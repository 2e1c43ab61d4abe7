"""Server-sent events: `data: {json}\\n\\n` frames, and a response that always closes its generator.

Starlette's StreamingResponse stops iterating when the client leaves but may leave the body
generator suspended until garbage collection, which would keep the engine request (and its KV
blocks) alive. This response watches for the disconnect itself and always `aclose()`s the
generator, whose `finally` aborts the request at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE_FRAME = "data: [DONE]\n\n"


def sse_frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that stops and closes its body as soon as the client leaves."""

    def __init__(self, body: AsyncIterator[str], headers: dict[str, str] | None = None):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client left while a frame was being sent
                        pass
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
