"""Defaults for a server on a user's workstation: web pages cannot drive it.

Without an API key and without ``--cors-origins``, browsers may talk to the proxy only
from localhost origins; a request carrying any other ``Origin`` is refused (403) before
any work, preflight or not. POST bodies must be JSON (``application/json`` or no
Content-Type, as FastAPI/vLLM accept), so a "simple" cross-site request (``text/plain``,
form encodings: no preflight) cannot reach the API (415). The ``Host`` header must name
the bound address, localhost or an ``--allowed-hosts`` entry (400), which defeats DNS
rebinding (a page whose name resolves to 127.0.0.1). With an API key a page cannot make
use of the API without the key, so origins default to ``*`` as before; an explicit
``--cors-origins`` is used as given (``--cors-origins '*'`` is the one flag that opens
the proxy to browser clients on other origins).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from trtllm_stack.proxy.errors import (
    BadHost,
    ForbiddenOrigin,
    ProxyError,
    UnsupportedMediaType,
    error_response,
)

# http(s)://localhost, 127.x.y.z or [::1], any port.
LOCAL_ORIGIN_REGEX = r"https?://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def cors_policy(settings: Any) -> tuple[list[str], str | None]:
    """(allowed origins, allowed-origin regex) the proxy applies."""
    if settings.cors_origins is not None:
        return list(settings.cors_origins), None
    if settings.api_key is not None:
        return ["*"], None
    return [], LOCAL_ORIGIN_REGEX


def allowed_hosts(settings: Any) -> frozenset[str] | None:
    """Host names accepted in the Host header; None: no check (``*``, or bound to every
    address without a list: the names the machine is reached by are not known)."""
    given = settings.allowed_hosts
    if given is not None and "*" in given:
        return None
    if given is None and settings.host in _WILDCARD_BINDS:
        return None
    hosts = set(_LOCAL_HOSTS) | set(given or ())
    if settings.host not in _WILDCARD_BINDS:
        hosts.add(settings.host.strip("[]").lower())
    return frozenset(h.lower() for h in hosts)


def _host_name(value: str) -> str:
    if value.startswith("["):  # [::1]:9000
        return value[1 : value.find("]")].lower() if "]" in value else value.lower()
    return value.rsplit(":", 1)[0].lower() if value.count(":") == 1 else value.lower()


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BrowserGuard:
    """Pure ASGI: Host, Origin and Content-Type checks before anything else runs."""

    def __init__(self, app: ASGIApp, *, settings: Any) -> None:
        self.app = app
        origins, regex = cors_policy(settings)
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.origin_regex = re.compile(regex) if regex else None
        self.hosts = allowed_hosts(settings)

    def _origin_ok(self, origin: str) -> bool:
        if self.any_origin or origin in self.origins:
            return True
        return self.origin_regex is not None and self.origin_regex.fullmatch(origin) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        error = self._check(scope, headers)
        if error is not None:
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: dict[bytes, bytes]) -> ProxyError | None:
        if self.hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            if _host_name(host) not in self.hosts:
                return BadHost(
                    f"Host '{host}' is not served here (setting allowed_hosts:"
                    " --allowed-hosts or TRTLLM_STACK_ALLOWED_HOSTS)"
                )
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] != "OPTIONS":
            text = origin.decode("latin-1")
            if not self._origin_ok(text):
                return ForbiddenOrigin(
                    f"browser origin '{text}' is not allowed (setting cors_origins:"
                    " --cors-origins or TRTLLM_STACK_CORS_ORIGINS; default: localhost only"
                    " without an API key)"
                )
        if scope["method"] == "POST":
            ctype = headers.get(b"content-type")
            if ctype is not None and not _is_json(ctype.decode("latin-1")):
                return UnsupportedMediaType(
                    f"Content-Type '{ctype.decode('latin-1')}' is not accepted: send"
                    " application/json"
                )
        return None
