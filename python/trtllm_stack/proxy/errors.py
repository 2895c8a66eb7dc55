"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every failure a client can cause or see goes through :class:`ProxyError` or one of the
handlers installed by :func:`install_error_handlers`; none of them ever sends a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from trtllm_stack.triton.backend_errors import parse_engine_limit_error
from trtllm_stack.triton.client import EngineError
from trtllm_stack.triton.grpc_wire import Status

log = logging.getLogger("trtllm_stack.proxy")


class ProxyError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(ProxyError):
    status = 400


class Unauthorized(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(ProxyError):
    status = 413
    code = "request_too_large"


class ForbiddenOrigin(ProxyError):
    status = 403
    code = "origin_not_allowed"


class BadHost(ProxyError):
    status = 400
    code = "host_not_allowed"


class UnsupportedMediaType(ProxyError):
    status = 415
    code = "unsupported_media_type"


class Overloaded(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"


class BackendUnavailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "backend_unavailable"


class BackendFailed(ProxyError):
    status = 502
    type = "server_error"
    code = "backend_error"


class BackendTimeout(ProxyError):
    status = 504
    type = "server_error"
    code = "backend_timeout"


def engine_failure(exc: BaseException, doing: str = "the request") -> ProxyError:
    """The one mapping from an engine failure to the OpenAI error the client sees, by gRPC
    status: no engine to talk to (UNAVAILABLE, NOT_FOUND) 503, silence or a deadline
    (DEADLINE_EXCEEDED) 504, anything else the engine said 502. ``doing`` names the step."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, EngineError):
        status = exc.status
        if status in (Status.UNAVAILABLE, Status.NOT_FOUND):
            return BackendUnavailable(f"the inference backend is unavailable: {exc}")
        if status == Status.DEADLINE_EXCEEDED:
            return BackendTimeout(str(exc))
        limit = parse_engine_limit_error(str(exc))
        if limit is not None:
            # The executor's own prompt check, in TensorRT-LLM's words (triton/backend_errors.py):
            # the client's request is too long (a limit the proxy did not know), not a 5xx.
            return InvalidRequest(
                f"the prompt has {limit.prompt_len} tokens; this engine accepts at most"
                f" {limit.max_input_len} input tokens",
                code="context_length_exceeded",
            )
        return BackendFailed(f"the inference backend failed {doing}: {exc}")
    log.error("unexpected backend failure: %r", exc, exc_info=exc)
    return BackendFailed(f"the inference backend failed {doing}")


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    try:
        data = orjson.dumps(body)
    except TypeError:
        # Text echoed from the request (a model name, a template error) may hold lone
        # surrogates, which UTF-8 cannot carry: replace them rather than fail.
        data = orjson.dumps(_scrub(body))
    return Response(data, status_code=status, headers=headers, media_type="application/json")


def _scrub(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode("utf-8")
    if isinstance(obj, dict):
        return {_scrub(k): _scrub(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_scrub(v) for v in obj]
    return obj


def error_response(exc: ProxyError) -> Response:
    return json_response(exc.status, exc.body(), exc.headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"})


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    # ("body", "messages", 0, "str") -> "messages[0]"; pydantic adds union-branch labels
    # ("str", "list[TextPart]", "NamedToolChoice", "function-after[...]") that are not fields.
    out = ""
    for p in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(p, int):
            out += f"[{p}]"
            continue
        name = str(p)
        if name in _TYPE_TAGS or not name.isidentifier() or name[:1].isupper():
            continue
        out += f".{name}" if out else name
    return out or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        # e.g. "lone leading surrogate in hex escape at line 1 column 18": say where.
        detail = (first.get("ctx") or {}).get("error")
        return ("request body is not valid JSON" + (f": {detail}" if detail else "")), None
    loc = tuple(first.get("loc", ()))
    param = _loc_to_param(loc)
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        msg = "field required"
    text = f"{param}: {msg}" if param else msg
    others = {_loc_to_param(tuple(e.get("loc", ()))) for e in errors[1:]} - {param}
    if others:
        text += f" (and {len(others)} more invalid field{'s' if len(others) > 1 else ''})"
    return text, param


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """``on_error(kind)`` is called for each error response (metrics)."""

    def count(kind: str) -> None:
        if on_error is not None:
            on_error(kind)

    async def proxy_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        count(exc.code or exc.type)
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        count("invalid_request")
        return json_response(400, error_body(message, "invalid_request_error", param))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        count(f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        headers = dict(exc.headers or {})
        return json_response(exc.status_code, error_body(message, kind), headers)

    async def client_disconnect(_: Request, exc: Exception) -> Response:
        # The client went away while sending its body: a normal event, no traceback. The
        # response is never delivered.
        log.debug("client disconnected during upload")
        count("client_disconnected")
        return Response(status_code=400)

    async def unexpected(_: Request, exc: Exception) -> Response:
        # A bug of ours: log it for the operator, give the client a clean message only.
        log.error("unhandled error: %r", exc, exc_info=exc)
        count("internal")
        return json_response(500, error_body("internal server error", "server_error"))

    app.add_exception_handler(ProxyError, proxy_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_disconnect)
    app.add_exception_handler(Exception, unexpected)
