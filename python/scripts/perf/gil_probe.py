"""Which prompt calls release the GIL? A loop-lag probe (python/docs/bench.md, prompt time).

An asyncio task sleeps 1 ms in a loop and records how late each wake-up is while one
piece of prompt work runs elsewhere: inline, in a thread (``asyncio.to_thread``), or in a
spawned worker process. A call that holds the GIL shows up as long wake-up gaps even in a
thread. Also prints the single-call costs (template render, encode, pickling both ways) and
the inline cost against prompt size, from which the inline/offload threshold is chosen.

Run from the repo root: python python/scripts/perf/gil_probe.py [--repeat 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import statistics
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

from trtllm_stack.bench.long_prompts import conversation, prose
from trtllm_stack.text.token_cache import BlockTokenCache
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

_TOK: Any = None


def _init() -> None:
    global _TOK
    _TOK = load_tokenizer(bundled_qwen3_tokenizer_dir())


def _render_encode(messages: list[dict[str, Any]], tools: Any) -> bytes:
    text = _TOK.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    ids = _TOK.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return array("i", ids).tobytes()


async def lag_during(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(max, p99) wake-up lateness in ms of a 1 ms sleep loop while ``work`` runs."""
    lags: list[float] = []
    done = False

    async def probe() -> None:
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1000)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    lags.clear()
    await work()
    done = True
    await task
    lags.sort()
    return lags[-1], lags[int(len(lags) * 0.99)] if lags else 0.0


def ms(fn: Callable[[], Any], n: int = 5) -> float:
    fn()
    best = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t)
    return statistics.median(best) * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=8)
    args = ap.parse_args()
    _init()
    tok = _TOK
    backend = tok.backend_tokenizer
    messages, tools = conversation(10, tools=30, seed=1)
    text = tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    ids = backend.encode(text, add_special_tokens=False).ids
    print(f"prompt: {len(text)} chars, {len(ids)} tokens, 10 turns, 30 tools")

    def render(with_tools: bool = True) -> str:
        return str(
            tok.apply_chat_template(
                messages,
                tools=tools if with_tools else None,
                add_generation_prompt=True,
                tokenize=False,
            )
        )

    def row(label: str, fn: Callable[[], Any], n: int = 5, digits: int = 2) -> None:
        print(f"  {label}: {ms(fn, n):.{digits}f} ms")

    row("render (apply_chat_template, tokenize=False)", render)
    row(f"render without tools ({len(render(False))} chars)", lambda: render(False))
    row("encode", lambda: backend.encode(text, add_special_tokens=False))
    row("encode_batch([text])", lambda: backend.encode_batch([text], add_special_tokens=False))
    enc = backend.encode(text, add_special_tokens=False)
    row("Encoding.ids (list of ints)", lambda: enc.ids, 20)
    payload = pickle.dumps((messages, tools))
    row(
        f"pickle.dumps(messages, tools) ({len(payload)} B)",
        lambda: pickle.dumps((messages, tools)),
        20,
    )
    pids = pickle.dumps(ids)
    row(f"pickle.loads(ids as list) ({len(pids)} B)", lambda: pickle.loads(pids), 20)
    praw = pickle.dumps(array("i", ids).tobytes())
    row(
        f"pickle.loads(int32 bytes) + array ({len(praw)} B)",
        lambda: array("i", pickle.loads(praw)),
        20,
        3,
    )
    cache = BlockTokenCache(backend, 1 << 30)
    cache.encode(text)
    row("block cache, every block a hit", lambda: cache.encode(text), 20, 3)
    print()
    print("inline encode cost against size (the loop is blocked this long):")
    import random

    for words in (50, 200, 800, 3200):
        t = prose(random.Random(words), words)
        n = len(backend.encode(t, add_special_tokens=False).ids)
        c = ms(lambda t=t: backend.encode(t, add_special_tokens=False), 20)
        print(f"  {len(t):6d} chars {n:5d} tokens: {c:.3f} ms")
    short = [{"role": "user", "content": "hello there"}]
    row(
        "render of a 1-message chat",
        lambda: tok.apply_chat_template(short, add_generation_prompt=True, tokenize=False),
        50,
        3,
    )
    with ThreadPoolExecutor(1) as threads:
        row("thread hand-off and back of a no-op", lambda: threads.submit(int).result(), 200, 3)
    print()

    ctx = get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init)
    await asyncio.wrap_future(pool.submit(_render_encode, short, None))
    loop = asyncio.get_running_loop()

    async def roundtrip_short() -> None:
        await asyncio.wrap_future(pool.submit(_render_encode, short, None))

    rt = []
    for _ in range(20):
        t0 = time.perf_counter()
        await roundtrip_short()
        rt.append((time.perf_counter() - t0) * 1000)
    print(f"process-pool round trip of a 1-message chat: median {statistics.median(rt):.2f} ms")
    print()

    async def inline_encode() -> None:
        backend.encode(text, add_special_tokens=False)

    async def thread_encode() -> None:
        await asyncio.to_thread(backend.encode, text, add_special_tokens=False)

    async def thread_encode_batch() -> None:
        await asyncio.to_thread(backend.encode_batch, [text], add_special_tokens=False)

    async def thread_render() -> None:
        for _ in range(5):  # one render is short; five in a row show the switching pattern
            await asyncio.to_thread(
                tok.apply_chat_template,
                messages,
                tools=tools,
                add_generation_prompt=True,
                tokenize=False,
            )

    fresh = BlockTokenCache(backend, 1 << 30)

    def render_cached_encode() -> None:
        fresh.encode(render())  # seeded prompts differ per call below: no hits
        fresh._entries.clear()

    async def thread_proxy_path() -> None:
        await asyncio.to_thread(render_cached_encode)

    async def thread_proxy_path_short_switch() -> None:
        old = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            await asyncio.to_thread(render_cached_encode)
        finally:
            sys.setswitchinterval(old)

    async def process_render_encode() -> None:
        await loop.run_in_executor(pool, _render_encode, messages, tools)

    async def idle() -> None:
        await asyncio.sleep(0.04)

    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("idle 40 ms (baseline)", idle),
        ("inline encode", inline_encode),
        ("thread: encode", thread_encode),
        ("thread: encode_batch([text])", thread_encode_batch),
        ("thread: 5 x template render", thread_render),
        ("process: render + encode", process_render_encode),
        ("thread: render + block encode", thread_proxy_path),
        ("  same, switch interval 0.5 ms", thread_proxy_path_short_switch),
    ]
    print(f"loop lag of a 1 ms sleep loop (ms), {args.repeat} runs each: max lag median [min-max]")
    print(f"(load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for name, work in cases:
        maxes = []
        for _ in range(args.repeat):
            mx, _p99 = await lag_during(work)
            maxes.append(mx)
        print(f"  {name:32s} {statistics.median(maxes):6.1f} [{min(maxes):.1f}-{max(maxes):.1f}]")
    pool.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
