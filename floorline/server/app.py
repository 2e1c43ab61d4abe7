"""The FastAPI app: OpenAI routes, /health, /metrics, middleware and the engine's lifespan."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from floorline.engine.async_engine import AsyncLLMEngine
from floorline.server.chat import create_chat_completion
from floorline.tokenizer.safe_chat import SafeChatEncoder
from floorline.server.completions import create_completion
from floorline.server.errors import APIError, install_handlers, to_api_error
from floorline.server.metrics import ServerMetrics
from floorline.server.middleware import CountRequests, LimitBody, RequireAPIKey
from floorline.server.protocol import ChatCompletionRequest, CompletionRequest
from floorline.server.serving import ServerContext

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class ServerConfig:
    """Server settings (the engine's are in EngineArgs)."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout_s: float = 30.0


async def _parse(request: Request, model: type[BaseModel]) -> BaseModel:
    """The body as `model`; every JSON or schema problem becomes a 400 naming the field."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except Exception as e:  # ValidationError, or a JSON decoding error
        raise to_api_error(e) from None


def _disconnect_waiter(request: Request):
    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    return wait


def build_app(engine: AsyncLLMEngine, config: ServerConfig) -> FastAPI:
    """The app around a started-or-not AsyncLLMEngine (its lifespan starts and stops it)."""
    llm = engine.engine
    if llm.tokenizer is None:
        raise APIError(500, "the server needs a model with a tokenizer")
    ctx = ServerContext(engine=engine, tokenizer=llm.tokenizer, model_name=config.model_name,
                        max_model_len=llm.max_model_len, chat_encoder=SafeChatEncoder(llm.tokenizer))
    metrics = ServerMetrics(config.model_name)
    engine.on_finish.append(lambda stream, out: metrics.on_finish(stream, out, time.perf_counter()))
    engine.on_abort.append(metrics.on_abort)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.shutdown(config.shutdown_timeout_s)

    app = FastAPI(title="floorline", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx, app.state.metrics, app.state.config = ctx, metrics, config
    install_handlers(app)
    # Outermost first: count every response (401/413 included), then the key, then the size limit.
    app.add_middleware(LimitBody, get_limit=lambda: config.max_body_bytes)
    app.add_middleware(RequireAPIKey, get_key=lambda: config.api_key)
    app.add_middleware(CountRequests, record=metrics.record_http)

    @app.get("/health")
    async def health() -> Response:
        if not engine.is_alive:
            reason = f"the engine is not running: {engine.error}" if engine.error else "the engine is not running"
            return JSONResponse({"status": "error", "message": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return PlainTextResponse(metrics.render(engine.stats, llm.num_blocks - 1),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(ctx)]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        ctx.check_model(model_id)
        return JSONResponse(_model_card(ctx))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await _parse(request, CompletionRequest)
        return await create_completion(ctx, req, _disconnect_waiter(request))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await _parse(request, ChatCompletionRequest)
        return await create_chat_completion(ctx, req, _disconnect_waiter(request))

    return app


def _model_card(ctx: ServerContext) -> dict:
    return {"id": ctx.model_name, "object": "model", "created": ctx.created, "owned_by": "floorline",
            "max_model_len": ctx.max_model_len}
