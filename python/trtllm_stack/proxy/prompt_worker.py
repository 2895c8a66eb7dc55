"""Where prompt work (chat template + tokenization) runs: inline or in a worker thread.

Measured with python/scripts/perf/gil_probe.py (python/docs/bench.md, "Prompt time"):
``Tokenizer.encode`` holds the GIL for the whole encode (a 28K-token prompt in
``asyncio.to_thread`` stalled a 1 ms sleep loop for 50-370 ms on this box), while
``encode_batch`` releases it (loop lag no worse than idle). The Qwen3 template renders in
about 1 ms without tools and the GIL is handed back every switch interval. So a thread
that encodes with ``encode_batch`` keeps the loop free; a process pool would add pickling,
a second copy of the token cache per worker and processes to manage, for nothing the
thread does not already give (see bench.md for the numbers).

Prompts of at most ``prompt_inline_chars`` characters stay on the loop: below that the
whole template + encode costs less than handing it to a thread and back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from trtllm_stack.text.token_cache import BlockTokenCache

T = TypeVar("T")

_SWITCH_INTERVAL = 0.001
_MAX_WARM = 4  # warm-up jobs waiting for the prompt thread
log = logging.getLogger("trtllm_stack.proxy")
_PROMPT_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


class PromptWork:
    """The token cache, the prompt thread(s) and the inline/offload decision."""

    def __init__(
        self,
        backend: Any,
        *,
        cache_bytes: int,
        inline_chars: int,
        threads: int,
        registry: CollectorRegistry,
        nice: int = 0,
        warm_replies: bool = True,
    ) -> None:
        self.cache = BlockTokenCache(backend, cache_bytes)
        self.inline_chars = inline_chars
        # The prompt thread still runs Python (template, id lists) with the GIL; when the
        # loop wants it back it waits up to one switch interval (default 5 ms). 1 ms bounds
        # that wait; the extra hand-offs only happen while both threads want the GIL.
        if sys.getswitchinterval() > _SWITCH_INTERVAL:
            sys.setswitchinterval(_SWITCH_INTERVAL)
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="trtllm-prompt",
            initializer=_lower_priority,
            initargs=(nice,),
        )
        self.seconds = Histogram(
            "trtllm_proxy_prompt_seconds",
            "Chat template + tokenization of one prompt, by where it ran (inline: on the"
            " event loop; thread: prompt worker thread, loop free meanwhile)",
            ["where"],
            buckets=_PROMPT_BUCKETS,
            registry=registry,
        )
        registry.register(_CacheCollector(self.cache))
        self._warm_replies = warm_replies
        self._warm_lock = threading.Lock()
        self._warm_waiting = 0

    def encode(self, text: str) -> array[int]:
        """Token ids of ``text`` (no BOS/EOS added), through the block cache. Any thread."""
        return self.cache.encode(text)

    async def run(self, size_chars: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` inline for small prompts, else in the prompt thread.

        If the awaiting task is cancelled (client gone, request refused) before the thread
        picked the job up, the job is dropped; a job already running finishes (tens of ms at
        most) and its result is discarded.
        """
        start = time.perf_counter()
        if size_chars <= self.inline_chars:
            result = fn(*args)
            self.seconds.labels("inline").observe(time.perf_counter() - start)
            return result
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, fn, *args)
        self.seconds.labels("thread").observe(time.perf_counter() - start)
        return result

    def worth_warming(self, size_chars: int) -> bool:
        """Whether a reply to a prompt of ``size_chars`` should be tokenized ahead for the
        next turn: long prompts (the ones the thread takes) with the cache on."""
        return self._warm_replies and self.cache.enabled and size_chars > self.inline_chars

    def warm(self, job: Callable[[], object]) -> None:
        """Run ``job`` in the prompt thread, result and errors dropped: work ahead for a
        later request. At most ``_MAX_WARM`` wait at a time, so a burst of replies never
        queues much ahead of a real prompt."""
        with self._warm_lock:
            if self._warm_waiting >= _MAX_WARM:
                return
            self._warm_waiting += 1
        try:
            self._pool.submit(self._run_warm, job)
        except RuntimeError:  # shut down
            with self._warm_lock:
                self._warm_waiting -= 1

    def _run_warm(self, job: Callable[[], object]) -> None:
        with self._warm_lock:
            self._warm_waiting -= 1
        try:
            job()
        except Exception:  # e.g. a template limit: nothing was promised to anyone
            log.debug("prompt warm-up failed", exc_info=True)

    def close(self) -> None:
        # Threads cannot outlive the process; this only stops queued jobs from starting.
        self._pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Runs in each prompt thread: raise its niceness by ``nice``. Linux schedules threads
    one by one, so only this thread yields: with as many busy threads as cores (the event
    loop, the engine, a long prompt's encode), the loop keeps its share and tokens keep
    flowing while the encode takes what is left (measured in docs/bench.md)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        pass  # not permitted (a sandbox): the thread runs at the process's priority


class _CacheCollector:
    """Cache counters read at scrape time (the cache counts under its own lock)."""

    def __init__(self, cache: BlockTokenCache) -> None:
        self._cache = cache

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        c = self._cache
        blocks = CounterMetricFamily(
            "trtllm_proxy_prompt_cache_blocks",
            "Prompt blocks (text between two added tokens) looked up in the token cache",
            labels=["result"],
        )
        blocks.add_metric(["hit"], c.hits)
        blocks.add_metric(["miss"], c.misses)
        tokens = CounterMetricFamily(
            "trtllm_proxy_prompt_cache_tokens",
            "Prompt tokens served from the token cache (hit) or tokenized (miss)",
            labels=["result"],
        )
        tokens.add_metric(["hit"], c.hit_tokens)
        tokens.add_metric(["miss"], c.miss_tokens)
        size = GaugeMetricFamily(
            "trtllm_proxy_prompt_cache_bytes", "Approximate bytes held by the token cache"
        )
        size.add_metric([], c.bytes)
        enabled = GaugeMetricFamily(
            "trtllm_proxy_prompt_cache_enabled",
            "1 if the token cache is on (setting > 0 and the tokenizer passed its self-check)",
        )
        enabled.add_metric([], 1.0 if c.enabled else 0.0)
        yield from (blocks, tokens, size, enabled)
