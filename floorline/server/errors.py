"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from floorline.engine.async_engine import EngineDeadError, QueueFullError
from floorline.errors import FloorlineError, InvalidRequestError

logger = logging.getLogger("floorline.server")

# status -> OpenAI's error type name
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error to send to the client as is."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code if code is not None else status}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), status_code=err.status,
                        headers=err.headers)


def to_api_error(e: BaseException) -> APIError:
    """The APIError for any exception a handler may meet (unknown ones are a 500, logged)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ValidationError):
        return validation_error(e.errors())
    if isinstance(e, InvalidRequestError):
        return APIError(400, str(e), param=e.param)
    if isinstance(e, QueueFullError):
        return APIError(429, str(e), headers={"Retry-After": str(e.retry_after_s)})
    if isinstance(e, EngineDeadError):
        return APIError(503, str(e))
    if isinstance(e, UnicodeError):  # e.g. a lone surrogate that the tokenizer cannot take
        return APIError(400, f"the request holds text that is not valid Unicode ({e.reason})")
    logger.error("internal error", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}: {e}")


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """A 400 naming the first bad field (`messages.0.role`) and what it accepts."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg', '')}".rstrip(": "))
    if not loc and first.get("type") == "model_type":
        return APIError(400, "the body must be a JSON object")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    param = ".".join(loc) or None
    text = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return APIError(400, text, param=param)


def install_handlers(app: FastAPI) -> None:
    """Every error the app can raise leaves as an OpenAI-shaped body; nothing leaves as a bare 500."""

    @app.exception_handler(APIError)
    async def _api(_: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(e.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404:
            message = "no such route; see /v1/models, /v1/completions, /v1/chat/completions"
        return error_response(APIError(e.status_code, message, headers=dict(e.headers or {})))

    # Known kinds are handled here (inside the app); the catch-all below is a last resort that
    # Starlette also logs as a crash.
    for kind in (FloorlineError, ValidationError, UnicodeError):
        app.add_exception_handler(kind, _known)

    @app.exception_handler(Exception)
    async def _any(_: Request, e: Exception) -> JSONResponse:
        return error_response(to_api_error(e))


async def _known(_: Request, e: Exception) -> JSONResponse:
    return error_response(to_api_error(e))
