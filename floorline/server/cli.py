"""`floorline serve`: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from floorline.cli import COMMANDS, add_engine_args, engine_args_from
from floorline.errors import FloorlineError


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("FLOORLINE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $FLOORLINE_API_KEY, else none)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: the --model value)")
    p.add_argument("--max-queued-requests", type=int, default=256,
                   help="sequences that may wait beyond --max-num-seqs; more get 429 (default 256)")
    p.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024,
                   help="largest request body; bigger ones get 413 (default 8 MiB)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds to let in-flight requests finish on shutdown (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine_args(p)


def build_server(ns: argparse.Namespace):
    """The uvicorn Server for these flags (the engine is built here, before anything binds)."""
    try:
        import uvicorn
    except ModuleNotFoundError as e:
        raise FloorlineError("floorline serve needs fastapi and uvicorn: pip install 'floorline[server]'") from e
    from floorline.engine.async_engine import AsyncLLMEngine
    from floorline.server.app import ServerConfig, build_app

    if not 0 <= ns.port <= 65535:
        raise FloorlineError(f"--port must be in [0, 65535], got {ns.port}")
    if ns.max_queued_requests < 0:
        raise FloorlineError(f"--max-queued-requests must be >= 0, got {ns.max_queued_requests}")
    if ns.max_request_bytes < 1:
        raise FloorlineError(f"--max-request-bytes must be >= 1, got {ns.max_request_bytes}")
    _check_bindable(ns.host, ns.port)  # before the model loads: a busy port should fail in a second
    engine = AsyncLLMEngine.from_engine_args(engine_args_from(ns), ns.max_queued_requests)
    if engine.engine.tokenizer is None:
        raise FloorlineError(f"{ns.model} has no tokenizer; the server needs one for text prompts and chat")
    name = ns.served_model_name or ns.model or engine.engine.model_config.name
    config = ServerConfig(model_name=name, api_key=ns.api_key or None, max_body_bytes=ns.max_request_bytes,
                          shutdown_timeout_s=ns.shutdown_timeout)
    app = build_app(engine, config)
    uv_config = uvicorn.Config(app, host=ns.host, port=ns.port, log_level=ns.log_level,
                               timeout_graceful_shutdown=ns.shutdown_timeout, access_log=ns.log_level == "debug")
    return uvicorn.Server(uv_config), name


def _check_bindable(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FloorlineError(f"--host {host!r} is not an address this machine can bind: {e}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise FloorlineError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _run(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=ns.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    server, name = build_server(ns)
    print(f"floorline serve: model '{name}' on http://{ns.host}:{ns.port}/v1", file=sys.stderr)
    server.run()
    return 0


COMMANDS["serve"] = (_add_args, _run)
