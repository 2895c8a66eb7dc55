"""Server-sent events: byte framing and the streaming response.

Events are built from pre-serialised byte templates per request (id, model and created
are fixed for a stream), so a token costs one ``orjson.dumps`` of its text and a few byte
concatenations; several events produced together go out in one write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

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
    before the body iterator ever started (its ``finally`` would then never run)."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], None]) -> None:
        super().__init__(content, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
