"""What the proxy needs from the inference backend.

:class:`Engine` is the interface of :class:`trtllm_stack.triton.client.EngineClient`. A
request is a :class:`ChunkStream`: ``next_batch()`` hands over every chunk that arrived
since the last call (one SSE event for several tokens when the writer falls behind), and
``close()`` cancels the request. ``EngineClient`` implements it natively on its gRPC
connection. Engines written as async generators (the unit tests' fakes) derive from
:class:`GeneratorEngine`, whose :class:`TokenPump` reads the generator in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from trtllm_stack.triton.client import (
    EngineError,
    EngineLimits,
    EngineSilent,
    EngineUnavailable,
    SilenceWatch,
)
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

__all__ = [
    "ChunkStream",
    "Engine",
    "EngineError",
    "EngineLimits",
    "EngineSilent",
    "EngineUnavailable",
    "GeneratorEngine",
    "TokenPump",
]


class ChunkStream(Protocol):
    async def next_batch(self) -> list[EngineChunk] | None: ...

    def close(self) -> None: ...


class Engine(Protocol):
    async def open(
        self, req: EngineRequest, request_id: str | None = None, *, timeout: float | None = None
    ) -> ChunkStream: ...

    async def is_ready(self) -> bool: ...

    async def limits(self) -> EngineLimits: ...

    async def close(self) -> None: ...


class GeneratorEngine:
    """Base for engines that produce a request's chunks with an async generator."""

    def generate(
        self, req: EngineRequest, request_id: str | None = None
    ) -> AsyncIterator[EngineChunk]:
        raise NotImplementedError

    async def open(
        self, req: EngineRequest, request_id: str | None = None, *, timeout: float | None = None
    ) -> ChunkStream:
        return TokenPump(self.generate(req, request_id), timeout)


class TokenPump:
    """Reads ``engine.generate(...)`` into a buffer; :meth:`next_batch` drains it.

    Buffered memory is bounded by the request's ``max_tokens``. :meth:`close` cancels the
    reading task, which closes the generator, which cancels the Triton request.
    """

    __slots__ = (
        "_done",
        "_exc",
        "_items",
        "_last",
        "_loop",
        "_task",
        "_waiter",
        "_watch",
    )

    def __init__(self, chunks: AsyncIterator[EngineChunk], timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[EngineChunk] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._exc: BaseException | None = None
        self._last = self._loop.time()
        self._task = self._loop.create_task(self._run(chunks))
        # The gRPC client's silence check (one timer, nothing per token), not a copy of it.
        self._watch = (
            SilenceWatch(timeout, lambda: self._last, self._silent) if timeout is not None else None
        )

    async def _run(self, chunks: AsyncIterator[EngineChunk]) -> None:
        try:
            async for chunk in chunks:
                self._items.append(chunk)
                self._last = self._loop.time()
                self._wake()
                if chunk.final:
                    break
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._exc = exc
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
            self._done = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _silent(self) -> None:
        if self._done:
            return
        assert self._watch is not None
        self._exc = self._watch.error()
        self._task.cancel()
        self._wake()

    async def next_batch(self) -> list[EngineChunk] | None:
        """All chunks available now (waiting for at least one); None at the end.

        Raises the backend's exception (EngineUnavailable, EngineError, EngineSilent) once
        the chunks that came before it have been handed out.
        """
        items = self._items
        while not items:
            if self._done or self._exc is not None:
                if self._exc is not None:
                    exc, self._exc = self._exc, None
                    self._done = True
                    raise exc
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(items) == 1:
            return [items.popleft()]
        batch = list(items)
        items.clear()
        return batch

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        if not self._task.done():
            self._task.cancel()
