"""``n`` > 1: n engine requests under one lease, read as one stream of (choice, batch).

Why n requests and not the backend's ``num_return_sequences``: streamed responses of the
TensorRT-LLM backend then interleave the sequences (told apart by the ``sequence_index``
output), which our engine client does not demultiplex yet; n requests give the same result
with the backend's KV-cache reuse sharing the prompt. Each choice gets its own seed (the
request's seed + i, or a random base): TensorRT-LLM's default seed is the same for every
request, so n unseeded requests would sample n identical replies. n itself is bounded by
``max_n`` (request_limits.py).

:func:`open_choices` starts the requests; :class:`RequestRunner.run` (serving_base.py)
reads them through :class:`ChoiceStreams` into one sink per choice: n SSE formatters (each
chunk carries one choice with its ``index``, as OpenAI and vLLM stream n > 1) or n
``Collected`` merged into one reply by :func:`merge`. A choice that ends (final chunk, stop
string) has its engine request closed while the others go on; an engine failure on any
choice, a client disconnect or the stream's end closes them all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from trtllm_stack.proxy.engine import ChunkStream
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

_SEED_LIMIT = 2**64


def choice_count(n: int | None) -> int:
    return n or 1


def seeded(req: EngineRequest, n: int) -> list[EngineRequest]:
    base = req.seed if req.seed is not None else secrets.randbits(63)
    return [dataclasses.replace(req, seed=(base + i) % _SEED_LIMIT) for i in range(n)]


def merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One reply: the choices renumbered 0..n-1, completion tokens summed (the prompt once)."""
    out = dict(replies[0])
    choices = []
    completion = 0
    for i, reply in enumerate(replies):
        choice = dict(reply["choices"][0])
        choice["index"] = i
        choices.append(choice)
        completion += reply["usage"]["completion_tokens"]
    prompt = out["usage"]["prompt_tokens"]
    out["choices"] = choices
    out["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return out


class ChoiceStreams(Protocol):
    """The engine streams of a request's choices, read as one."""

    @property
    def index(self) -> int:
        """The choice of the batch :meth:`next_batch` returned last."""

    def next_batch(self) -> Awaitable[list[EngineChunk] | None]:
        """The next batch of some choice (None: that choice's stream ended); raises the
        first engine failure of any choice."""

    def drop(self, index: int) -> None:
        """That choice is done: close (cancel) its engine request, read it no more."""

    def close(self) -> None:
        """Close every engine request (idempotent)."""


class OneChoice:
    """n = 1: the engine stream itself (its own ``next_batch``, nothing in between)."""

    __slots__ = ("_pump", "next_batch")

    index = 0

    def __init__(self, pump: ChunkStream) -> None:
        self._pump = pump
        self.next_batch: Callable[[], Awaitable[list[EngineChunk] | None]] = pump.next_batch

    def drop(self, index: int) -> None:
        self._pump.close()

    def close(self) -> None:
        self._pump.close()


class MergedChoices:
    """n > 1: a reader task per choice moves its engine stream's batches into one queue,
    handed out in the order they arrived; an engine failure is queued after the batches
    that came before it. Memory is bounded as the engine streams' own buffers are (by the
    requests' max_tokens)."""

    __slots__ = ("_live", "_loop", "_readers", "_ready", "_waiter", "index")

    def __init__(self, pumps: list[ChunkStream]) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready: deque[tuple[int, list[EngineChunk] | Exception | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._live = len(pumps)
        self.index = 0
        self._readers = {
            i: (pump, self._loop.create_task(self._read(i, pump))) for i, pump in enumerate(pumps)
        }

    async def _read(self, index: int, pump: ChunkStream) -> None:
        ready = self._ready
        try:
            while True:
                try:
                    batch = await pump.next_batch()
                except Exception as exc:
                    ready.append((index, exc))
                    return
                ready.append((index, batch))
                self._wake()
                if batch is None or (batch and batch[-1].final):
                    return
        finally:
            self._live -= 1
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> list[EngineChunk] | None:
        ready = self._ready
        while not ready:
            if not self._live:
                raise RuntimeError("every choice has ended")  # run() stops before that
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.index, batch = ready.popleft()
        if isinstance(batch, Exception):
            raise batch
        return batch

    def drop(self, index: int) -> None:
        reader = self._readers.pop(index, None)
        if reader is not None:
            pump, task = reader
            task.cancel()
            pump.close()
            if any(i == index for i, _ in self._ready):  # read ahead past its stop string
                kept = [item for item in self._ready if item[0] != index]
                self._ready.clear()
                self._ready.extend(kept)

    def close(self) -> None:
        for index in list(self._readers):
            self.drop(index)
        self._ready.clear()


async def open_choices(ctx: Any, plan: Any, n: int) -> ChoiceStreams:
    """Start the request's n engine requests (closing those started if one fails)."""
    if n == 1:
        return OneChoice(await ctx.start(plan.engine_req, plan.request_id))
    pumps: list[ChunkStream] = []
    try:
        for i, req in enumerate(seeded(plan.engine_req, n)):
            pumps.append(await ctx.start(req, f"{plan.request_id}-{i}"))
    except BaseException:
        for pump in pumps:
            pump.close()
        raise
    return MergedChoices(pumps)
