"""ASGI middleware: request counting by status, the API key, and the request body size limit.

Plain ASGI (not BaseHTTPMiddleware), so streaming responses and disconnects pass through
untouched.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from floorline.server.errors import error_body


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class CountRequests:
    """Calls `record(path, status)` once per HTTP response (for the requests-by-status metric)."""

    def __init__(self, app: ASGIApp, record: Callable[[str, int], None]):
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.record(scope.get("path", ""), int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)


class RequireAPIKey:
    """401 for /v1/* without `Authorization: Bearer <key>`; `get_key()` None turns the check off."""

    def __init__(self, app: ASGIApp, get_key: Callable[[], str | None]):
        self.app = app
        self.get_key = get_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.get_key()
        if key is None or scope["type"] != "http" or not scope.get("path", "").startswith("/v1"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            return await _send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        await self.app(scope, receive, send)


class LimitBody:
    """413 for a body over `get_limit()` bytes; the body is read whole first, then replayed to the app.

    Reading first (for JSON bodies of a few MB at most) means the app never sees a partial body;
    after the replay, `receive` goes to the server again so the app still hears the disconnect.
    """

    def __init__(self, app: ASGIApp, get_limit: Callable[[], int]):
        self.app = app
        self.get_limit = get_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.get_limit()
        headers = dict(scope.get("headers") or [])
        too_big = f"the request body is over the limit of {limit} bytes"
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _send_error(send, 400, "the Content-Length header is not an integer")
        if declared > limit:
            return await _send_error(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _send_error(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
