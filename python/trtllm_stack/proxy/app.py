"""The FastAPI application: thin routes over the chat / completion services.

``create_app(settings)`` opens one :class:`EngineClient` (one gRPC channel) in the lifespan;
tests pass their own ``engine``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trtllm_stack.proxy import request_limits
from trtllm_stack.proxy.browser_guard import BrowserGuard, cors_policy
from trtllm_stack.proxy.engine import Engine
from trtllm_stack.proxy.errors import (
    BackendUnavailable,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
    error_response,
    install_error_handlers,
    json_response,
)
from trtllm_stack.proxy.metrics import ProxyMetrics
from trtllm_stack.proxy.openapi_doc import body_schema, install_openapi
from trtllm_stack.proxy.protocol import ChatCompletionRequest, CompletionRequest
from trtllm_stack.proxy.replicas import ReplicaMetrics, ReplicaPool, RoutingPolicy
from trtllm_stack.proxy.serving_base import ServingContext
from trtllm_stack.proxy.serving_chat import ChatService
from trtllm_stack.proxy.serving_completions import CompletionService
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.proxy.sse import RAW_SEND

log = logging.getLogger("trtllm_stack.proxy")


class GuardMiddleware:
    """API key and body size for ``/v1/*``; pure ASGI so that streams pass through untouched.

    With no key configured any key (or none) is accepted, as OpenWebUI's ``sk-dummy`` expects.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await error_response(
                    Unauthorized("missing or invalid API key (Authorization: Bearer <key>)")
                )(scope, receive, send)
                return
        length = headers.get(b"content-length")
        limit = self.max_body
        if length is not None:
            # The HTTP parser holds the body to its Content-Length, so checking it suffices.
            if length.isdigit() and int(length) > limit:
                await error_response(_too_large(int(length), limit))(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # Chunked upload: read it here (at most ``limit`` bytes kept), then replay it.
        parts: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                await error_response(_too_large(seen, limit))(scope, receive, send)
                return
            parts.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ProxyApp(FastAPI):
    """FastAPI that leaves the server's ``send`` in the scope for SSE bodies (see sse.RAW_SEND)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body validated straight from bytes (pydantic's JSON parser).

    FastAPI's own body handling (json.loads, then validation of the Python objects, then
    its dependency machinery) costs about 0.3 ms per request, all of it before the first
    token. Errors keep FastAPI's shape, so the same handler turns them into OpenAI errors.
    """
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body of {size}+ bytes exceeds the limit of {limit} bytes")


def _open_engine(settings: ProxySettings) -> Engine:
    """One Triton: its client, as before. Several: a pool routing between them."""
    from trtllm_stack.triton.client import EngineClient

    urls = settings.triton_urls()
    keepalive = settings.engine_keepalive()

    def client(url: str, model: str) -> Engine:
        return EngineClient(url, model, keepalive=keepalive)

    if len(urls) == 1:
        return client(urls[0], settings.triton_model)
    policy = RoutingPolicy(
        block_tokens=settings.prefix_affinity_tokens,
        balance_ratio=settings.affinity_balance_ratio,
        balance_slack=settings.affinity_balance_slack,
        health_interval=settings.replica_health_interval,
    )
    return ReplicaPool(urls, settings.triton_model, policy, engine_factory=client)


async def _pool_ready(pool: ReplicaPool) -> Response:
    """200 while at least one replica is ready; the body lists every replica."""
    replicas = await pool.status()
    n_ready = sum(r["ready"] for r in replicas)
    if n_ready:
        return json_response(
            200, {"status": "ready", "replicas_ready": n_ready, "replicas": replicas}
        )
    err = BackendUnavailable(f"none of the {len(replicas)} Triton replicas is ready")
    return json_response(err.status, {**err.body(), "replicas": replicas})


def create_app(
    settings: ProxySettings | None = None,
    *,
    engine: Engine | None = None,
    tokenizer: Any = None,
) -> FastAPI:
    settings = settings or ProxySettings()
    if tokenizer is None:
        from trtllm_stack.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(settings.resolve_tokenizer_dir())
    # Build the detokenizer's id->bytes tables now (~0.2 s), not inside the first request.
    from trtllm_stack.text.detokenizer import prepare

    prepare(tokenizer)
    metrics = ProxyMetrics()
    own_engine = engine is None
    if engine is None:
        engine = _open_engine(settings)
    pool = engine if isinstance(engine, ReplicaPool) else None
    if pool is not None:
        pool.attach_metrics(ReplicaMetrics(metrics.registry))
    ctx = ServingContext(settings, engine, tokenizer, metrics)
    chat = ChatService(ctx)
    completions = CompletionService(ctx)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            ctx.prompt.close()
        if own_engine:
            await ctx.engine.close()

    app = ProxyApp(
        title="trtllm-stack OpenAI-compatible proxy",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app, metrics.count_error)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=settings.max_body_bytes)
    origins, origin_regex = cors_policy(settings)
    if origins or origin_regex:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_origin_regex=origin_regex,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials="*" not in origins,
            max_age=600,
        )
    # Outermost: Host / Origin / Content-Type refused before anything reads the body.
    app.add_middleware(BrowserGuard, settings=settings)

    model_card = {
        "id": settings.served_model_name,
        "object": "model",
        "created": created,
        "owned_by": "trtllm-stack",
    }

    @app.get("/health")
    async def health() -> Response:
        return json_response(200, {"status": "ok"})

    @app.get("/health/ready")
    async def ready() -> Response:
        if pool is not None:
            return await _pool_ready(pool)
        if await ctx.engine.is_ready():
            return json_response(200, {"status": "ready"})
        return error_response(
            BackendUnavailable(f"Triton at {settings.triton_url} or its model is not ready")
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response(200, {"object": "list", "data": [model_card]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        if model_id != settings.served_model_name:
            raise ModelNotFound(f"model '{model_id}' does not exist", param="model")
        return json_response(200, model_card)

    @app.post("/v1/chat/completions", openapi_extra=body_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        body = await parse_body(request, ChatCompletionRequest)
        request_limits.check_chat(body, settings)
        return await chat.handle(request, body)

    @app.post("/v1/completions", openapi_extra=body_schema(CompletionRequest))
    async def text_completions(request: Request) -> Response:
        body = await parse_body(request, CompletionRequest)
        request_limits.check_completion(body, settings)
        return await completions.handle(request, body)

    install_openapi(
        app,
        [ChatCompletionRequest, CompletionRequest],
        streaming={"/v1/chat/completions", "/v1/completions"},
    )
    return app
