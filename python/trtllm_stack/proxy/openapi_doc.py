"""The proxy's OpenAPI document, made to say what the server does.

FastAPI's generated document had request bodies whose ``#/$defs/*`` references did not
resolve (the routes read their bodies themselves, so the pydantic schemas were pasted in
with their local ``$defs``), no error responses, a 422 the server never returns (every
validation error is a 400) and ``/metrics`` as JSON. Here: body schemas reference
``#/components/schemas``, every status the server can return is documented with the
OpenAI error object, streaming endpoints list ``text/event-stream``, ``/metrics`` is
``text/plain``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_STATUS_TEXT = {
    "400": "invalid request (validation, limits, Host not allowed)",
    "401": "missing or invalid API key",
    "403": "browser origin not allowed",
    "404": "unknown model or path",
    "408": "request headers or body not received in time",
    "413": "request body too large",
    "415": "request body is not JSON",
    "429": "too many requests in flight",
    "502": "the inference backend failed the request",
    "503": "the inference backend is unavailable",
    "504": "the inference backend went silent",
}
# Statuses every route can return (Host/Origin guard, read timeouts); the rest per route.
_ANY_ROUTE = ("400", "403", "408")
_V1 = ("401", "404")
_GENERATION = ("413", "415", "429", "502", "503", "504")


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` from its JSON body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        }
    }


def _error(status: str) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def install_openapi(app: FastAPI, models: list[type[BaseModel]], streaming: set[str]) -> None:
    """Replace ``app.openapi`` by the corrected document (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        schemas["Error"] = ERROR_SCHEMA
        for key in ("HTTPValidationError", "ValidationError"):
            schemas.pop(key, None)
        for path, item in doc["paths"].items():
            for method, op in item.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                statuses = list(_ANY_ROUTE)
                if path.startswith("/v1/"):
                    statuses += _V1
                if method == "post":
                    statuses += _GENERATION
                if path == "/health/ready":
                    statuses.append("503")
                for status in statuses:
                    responses.setdefault(status, _error(status))
                ok = responses.setdefault("200", {"description": "OK"})
                if path == "/metrics":
                    ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
                elif path in streaming:
                    ok["content"] = {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    }
                else:
                    ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
