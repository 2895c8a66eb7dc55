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
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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
    """``data: {<head>,"choices":[{"index":i,<field>:<value>,"logprobs":..,"finish_reason":..}]}``

    ``head`` (id, object, created, model) is serialised once per stream; ``field`` is
    ``delta`` for chat and ``text`` for text completions; ``index`` is the choice's (one
    template per choice when n > 1: each chunk carries one choice, as OpenAI and vLLM send).
    """

    __slots__ = ("head",)

    def __init__(self, head: dict[str, Any], field: str, index: int = 0) -> None:
        self.head = (
            b"data: "
            + dumps(head)[:-1]
            + b',"choices":[{"index":'
            + str(index).encode()
            + b',"'
            + field.encode()
            + b'":'
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


# Scope key under which ProxyApp leaves the server's own ``send``. Body messages of a stream
# go there directly: the middleware between (error handler, CORS, exception handlers)
# only acts on ``http.response.start``, and five wrapper calls per event add up at one
# event per token. The start message still passes through all of them.
RAW_SEND = "trtllm_stack.raw_send"


class SSEResponse(Response):
    """The event stream. It always runs ``cleanup``, and it stops early in two cases:

    - the client disconnects: a watcher on ``receive`` sees it at once (not at the next
      token), the stream stops and ``cleanup`` cancels the Triton request;
    - the client stops reading but keeps the connection open: writes block once the socket
      buffers are full, and after ``send_timeout`` seconds of one write not completing the
      stream is abandoned the same way (memory held is bounded by the socket buffers).

    ``on_abandon`` is told why (``client_disconnected`` or ``client_stalled``).
    """

    media_type = SSE_MEDIA_TYPE

    def __init__(
        self,
        content: AsyncIterator[bytes],
        cleanup: Callable[[], None],
        send_timeout: float | None = None,
        on_abandon: Callable[[str], None] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body_iterator = content
        self.init_headers(SSE_HEADERS)
        self._cleanup = cleanup
        self._send_timeout = send_timeout
        self._on_abandon = on_abandon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        body_send: Send = scope.get(RAW_SEND, send)
        timeout = self._send_timeout
        stop_reason: str | None = None
        state = _SendState()
        streaming: asyncio.Task[None] | None = None
        watcher: asyncio.Task[None] | None = None
        timer: asyncio.TimerHandle | None = None

        def stop(reason: str) -> None:
            nonlocal stop_reason
            if stop_reason is None and not state.finished and streaming is not None:
                stop_reason = reason
                streaming.cancel()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            stop("client_disconnected")

        def watch_send() -> None:
            # One timer per stream, re-armed every ``timeout`` s: no per-event timer work.
            nonlocal timer
            assert timeout is not None
            now = loop.time()
            since = state.sending_since
            if since is not None and now - since >= timeout:
                timer = None
                stop("client_stalled")
                return
            timer = loop.call_later(timeout if since is None else since + timeout - now, watch_send)

        iterator = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            # The events run in a task of their own: each wake-up per token then resumes
            # only that task's few frames, not the ~15 of the middleware stack above us.
            streaming = loop.create_task(_send_events(iterator, body_send, state, loop))
            watcher = loop.create_task(watch_disconnect())
            if timeout is not None:
                timer = loop.call_later(timeout, watch_send)
            await streaming
        except asyncio.CancelledError:
            if stop_reason is None:
                raise  # we were cancelled from outside (server shutdown): awaited task too
            if stop_reason == "client_stalled":
                log.warning(
                    "client stopped reading the stream for %g s: request cancelled", timeout
                )
            if self._on_abandon is not None:
                self._on_abandon(stop_reason)
        finally:
            state.finished = True
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()
            if streaming is not None and not streaming.done():
                streaming.cancel()
            self._cleanup()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and (streaming is None or streaming.done()):
                await aclose()


class _SendState:
    __slots__ = ("finished", "sending_since")

    def __init__(self) -> None:
        self.finished = False
        self.sending_since: float | None = None


async def _send_events(
    events: AsyncIterator[bytes], send: Send, state: _SendState, loop: asyncio.AbstractEventLoop
) -> None:
    async for chunk in events:
        state.sending_since = loop.time()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        state.sending_since = None
    state.finished = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})
