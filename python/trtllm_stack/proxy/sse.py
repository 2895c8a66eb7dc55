"""Server-sent events: byte framing and the streaming response.

Events are built from pre-serialised byte templates per request (id, model and created
are fixed for a stream), so a token costs one ``orjson.dumps`` of its text and a few byte
concatenations; several events produced together go out in one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("trtllm_stack.proxy")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"

dumps = orjson.dumps


def event(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def error_event(body: dict[str, Any]) -> bytes:
    return event(body)


class ChunkTemplate:
    """``data: {<head>,"choices":[{"index":0,<field>:<value>,"logprobs":..,"finish_reason":..}]}``

    ``head`` (id, object, created, model) is serialised once per stream; ``field`` is
    ``delta`` for chat and ``text`` for text completions.
    """

    __slots__ = ("head",)

    def __init__(self, head: dict[str, Any], field: str) -> None:
        self.head = (
            b"data: " + dumps(head)[:-1] + b',"choices":[{"index":0,"' + field.encode() + b'":'
        )

    def chunk(self, value: bytes, logprobs: bytes = b"null") -> bytes:
        """``value`` is the serialised delta object (chat) or text string (completions)."""
        return self.head + value + b',"logprobs":' + logprobs + b',"finish_reason":null}]}\n\n'

    def final(self, value: bytes, finish_reason: str) -> bytes:
        return (
            self.head
            + value
            + b',"logprobs":null,"finish_reason":"'
            + finish_reason.encode()
            + b'"}]}\n\n'
        )


class SSEResponse(StreamingResponse):
    """A streaming response that always runs its cleanup, even when the client vanished
    before the body iterator ever started (its ``finally`` would then never run).

    A client that stops reading (but keeps the connection open) blocks our writes once the
    socket buffers are full; after ``send_timeout`` seconds of one write not completing,
    the response is abandoned: the body iterator is closed (which cancels the Triton
    request), the lease released, and the server closes the connection. Memory held for
    such a client is bounded by the socket buffers and the tokens of one request.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        cleanup: Callable[[], None],
        send_timeout: float | None = None,
    ) -> None:
        super().__init__(content, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        self._cleanup = cleanup
        self._send_timeout = send_timeout
        self._sending_since: float | None = None
        self._timed_out = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self._send_timeout
        timer: asyncio.TimerHandle | None = None
        task = asyncio.current_task()
        try:
            if timeout is None or task is None:
                await super().__call__(scope, receive, send)
                return
            loop = asyncio.get_running_loop()

            async def guarded_send(message: Message) -> None:
                self._sending_since = loop.time()
                try:
                    await send(message)
                finally:
                    self._sending_since = None

            def watch() -> None:
                # One timer per stream, re-armed every ``timeout`` s: no per-event cost.
                nonlocal timer
                since = self._sending_since
                now = loop.time()
                if since is not None and now - since >= timeout:
                    self._timed_out = True
                    timer = None
                    task.cancel()
                    return
                delay = timeout if since is None else since + timeout - now
                timer = loop.call_later(delay, watch)

            timer = loop.call_later(timeout, watch)
            try:
                await super().__call__(scope, receive, guarded_send)
            except asyncio.CancelledError:
                if not self._timed_out:
                    raise
                task.uncancel()
                log.warning(
                    "client stopped reading the stream for %g s: request cancelled", timeout
                )
        finally:
            if timer is not None:
                timer.cancel()
            self._cleanup()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
