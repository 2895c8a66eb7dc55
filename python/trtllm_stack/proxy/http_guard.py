"""Connection-level limits uvicorn does not have: header and body read timeouts and a cap
on open connections.

uvicorn (0.54, httptools_impl.py) times out only idle keep-alive connections
(``timeout_keep_alive``; any received byte cancels it, ``_unset_keepalive_if_required``);
``limit_concurrency`` answers 503 but keeps the socket; ``h11_max_incomplete_event_size``
bounds header size, not time. A client trickling one header byte every few seconds, or a
body, holds a connection and a file descriptor for ever (issue 14: 500 and 200 such
connections were all open after 80 s and 45 s). This protocol, a subclass of uvicorn's
httptools one, adds:

- ``header_timeout``: from the first byte of a request (or the connection) to the end of
  its headers; past it: ``408`` and close;
- ``body_timeout``: from the end of the headers to the end of the body (the whole body,
  so a trickle cannot extend it); past it: ``408`` and close (the app sees a disconnect);
- ``max_connections``: beyond it a new connection is closed at once, before any read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def _408(message: str) -> bytes:
    body = (
        b'{"error":{"message":"' + message.encode() + b'","type":"invalid_request_error",'
        b'"param":null,"code":"request_timeout"}}'
    )
    return _TIMEOUT_408 % (len(body), body)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body read timeouts and a connection cap
    (class attributes, set by :func:`guarded_http_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 0  # 0: no cap
    refused = 0  # connections closed by the cap (process-wide)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out, seconds, what)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self, seconds: float, what: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_408(f"the {what} did not arrive within {seconds:g} s"))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.max_connections
        if cap and len(self.connections) >= cap:
            type(self).refused += 1
            transport.abort()
            return
        super().connection_made(transport)
        self._arm(self.header_timeout, "request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A keep-alive connection's next request: its headers get the same time.
        self._arm(self.header_timeout, "request headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout, "request body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_http_protocol(settings: Any) -> type[GuardedHttpProtocol]:
    """A protocol class with the settings' limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout": settings.header_timeout,
            "body_timeout": settings.body_timeout,
            "max_connections": settings.max_connections,
        },
    )
