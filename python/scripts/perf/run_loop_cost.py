"""Per-token cost of ``RequestRunner.run`` (the one per-token loop) for an n = 1 chat
stream, without network or engine: a pre-built stream of one-token batches read through
the runner into (a) a sink that does nothing (the loop's own cost) and (b) the chat SSE
formatter (``DeltaOutput``: pipeline, detokenizer, chunk bytes). Then the same for n = 3
(three such streams merged, choices.MergedChoices), per token of all choices.

Run from the repo root: python python/scripts/perf/run_loop_cost.py [tokens] [repeats]
Prints the best of ``repeats`` runs in microseconds per token. It also runs on the
commits before n > 1 streaming (run() then took one engine stream and one sink), so a
before/after pair can be measured in the same hour.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trtllm_stack.proxy import choices
from trtllm_stack.proxy.metrics import ProxyMetrics
from trtllm_stack.proxy.protocol import ChatCompletionRequest
from trtllm_stack.proxy.serving_base import ServingContext
from trtllm_stack.proxy.serving_chat import ChatService
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton.client import EngineLimits
from trtllm_stack.triton.tensors import EngineChunk

TEXT = "The quick brown fox jumps over the lazy dog, again and again. " * 400


class Ready:
    """An engine stream whose batches are all there already."""

    def __init__(self, batches: list[list[EngineChunk]]) -> None:
        self._it = iter(batches)

    async def next_batch(self) -> list[EngineChunk] | None:
        return next(self._it, None)

    def close(self) -> None:
        pass


class NullSink:
    stopped = False

    def push(self, ids, batch, out) -> None:
        pass

    def finish(self, out, finish: str) -> str:
        return finish


class NoEngine:
    async def limits(self) -> EngineLimits:
        return EngineLimits(None, 1 << 20)


async def one_run(service: ChatService, plan, batches, null: bool, n: int = 1) -> float:
    head = service._head(plan)
    out: list[bytes] = []
    lease = service.ctx.admit()
    pump = Ready(batches)
    new_api = hasattr(choices, "OneChoice")
    if n > 1:
        sinks = [
            NullSink() if null else service.stream_output(plan, head, out, i) for i in range(n)
        ]
        merged = choices.MergedChoices([Ready(batches) for _ in range(n)])
        first = await merged.next_batch()
        gen = service.run(plan, merged, first, lease, sinks, out, head)
    elif new_api:
        sink = NullSink() if null else service.stream_output(plan, head, out, 0)
        streams = choices.OneChoice(pump)
        first = await streams.next_batch()
        gen = service.run(plan, streams, first, lease, [sink], out, head)
    else:  # the commit before: run(plan, pump, batch, lease, sink, out, head)
        sink = NullSink() if null else service.stream_output(plan, head, out)
        first = await pump.next_batch()
        gen = service.run(plan, pump, first, lease, sink, out, head)
    start = time.perf_counter()
    async for _ in gen:
        pass
    return time.perf_counter() - start


async def main(tokens: int, repeats: int) -> None:
    tokenizer = load_tokenizer(bundled_qwen3_tokenizer_dir())
    ids = tokenizer.encode(TEXT, add_special_tokens=False)[:tokens]
    batches = [[EngineChunk([t], None, k == len(ids) - 1)] for k, t in enumerate(ids)]
    ctx = ServingContext(ProxySettings(), NoEngine(), tokenizer, ProxyMetrics())  # type: ignore[arg-type]
    service = ChatService(ctx)
    body = ChatCompletionRequest(
        model=ctx.settings.served_model_name,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=len(ids),
    )
    plan = await service.plan(body)
    print(f"run() signature: {inspect.signature(service.run)}")
    for null in (True, False):
        best = min([await one_run(service, plan, batches, null) for _ in range(repeats)])
        label = "null sink" if null else "DeltaOutput"
        print(f"{label:12s} {best / len(ids) * 1e6:7.3f} us/token ({len(ids)} tokens)")
    if hasattr(choices, "MergedChoices"):
        for null in (True, False):
            runs = [await one_run(service, plan, batches, null, 3) for _ in range(repeats)]
            label = "n=3 null" if null else "n=3 Delta"
            print(f"{label:12s} {min(runs) / (3 * len(ids)) * 1e6:7.3f} us/token (all choices)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [4000, 15][len(args) :])))
