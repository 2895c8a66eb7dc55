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
from typing import Any, Protocol

from trtllm_stack.proxy.engine import ChunkStream
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

_SEED_LIMIT = 2**64

Item = tuple[int, "list[EngineChunk] | None"]  # (choice index, batch; None: its stream ended)


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

    async def next(self) -> Item:
        """The next batch of some choice (raises the first engine failure of any)."""

    def drop(self, index: int) -> None:
        """That choice is done: close (cancel) its engine request, read it no more."""

    def close(self) -> None:
        """Close every engine request (idempotent)."""


class OneChoice:
    """n = 1: the engine stream itself, no task in between."""

    __slots__ = ("_pump",)

    def __init__(self, pump: ChunkStream) -> None:
        self._pump = pump

    async def next(self) -> Item:
        return 0, await self._pump.next_batch()

    def drop(self, index: int) -> None:
        self._pump.close()

    def close(self) -> None:
        self._pump.close()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A read that fails after the request was given up (another choice failed first)
    # is not news: fetch its exception so that asyncio does not log it.
    if not task.cancelled():
        task.exception()


class MergedChoices:
    """n > 1: one pending ``next_batch()`` per live choice; batches handed out as they
    arrive (those that arrived together in choice order)."""

    __slots__ = ("_pending", "_pumps", "_ready")

    def __init__(self, pumps: list[ChunkStream]) -> None:
        self._pumps: dict[int, ChunkStream] = dict(enumerate(pumps))  # the live choices
        self._pending: dict[asyncio.Task[list[EngineChunk] | None], int] = {}
        self._ready: deque[Item] = deque()

    async def next(self) -> Item:
        ready = self._ready
        pending = self._pending
        while not ready:
            reading = set(pending.values())
            for i, pump in self._pumps.items():
                if i not in reading:
                    task = asyncio.ensure_future(pump.next_batch())
                    task.add_done_callback(_retrieve)
                    pending[task] = i
            if not pending:
                raise RuntimeError("every choice has ended")  # run() stops before that
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                i = pending.pop(task)
                ready.append((i, task.result()))
        return ready.popleft()

    def drop(self, index: int) -> None:
        pump = self._pumps.pop(index, None)
        if pump is not None:
            pump.close()
        for task, i in list(self._pending.items()):
            if i == index:
                del self._pending[task]
                task.cancel()

    def close(self) -> None:
        for task in self._pending:
            task.cancel()
        self._pending.clear()
        self._ready.clear()
        pumps = list(self._pumps.values())
        self._pumps.clear()
        for pump in pumps:
            pump.close()


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
