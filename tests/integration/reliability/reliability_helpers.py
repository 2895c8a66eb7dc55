"""Helpers of the reliability tests (module name unique in the repository)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from proxy_helpers import RunningProxy


def chat_body(text: str, *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": "qwen3",
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def parse_sse(raw: str) -> list[Any]:
    """Data fields of an SSE body: JSON objects, and the string "[DONE]"."""
    out: list[Any] = []
    for block in raw.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def streamed_content(events: list[Any]) -> str:
    """The content deltas of parsed chat chunks (``parse_sse``), joined."""
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def proxy_tasks(proxy: RunningProxy) -> int:
    """Number of unfinished asyncio tasks on the proxy's event loop."""

    async def count() -> int:
        return len([t for t in asyncio.all_tasks() if not t.done()])

    return int(proxy.call(count))


def live_objects(type_name: str) -> int:
    """Instances of a class (by name) still reachable in this process (the proxy runs here)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == type_name)


def in_flight(proxy: RunningProxy) -> int:
    return int(proxy.app.state.ctx.in_flight)


def metric(proxy: RunningProxy, name: str) -> float | None:
    for line in httpx.get(proxy.base_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout} s")
        time.sleep(0.05)


def rss_bytes() -> int:
    """Resident set size of this process now (the in-process proxy included)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM (Linux >= 4.0), so that ``peak_rss_bytes`` covers what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


class LoopLag:
    """Measures the proxy's event-loop lag: a task on its loop sleeps 5 ms at a time and
    records how late it wakes. ``with LoopLag(proxy) as lag: ...; lag.max`` (seconds)."""

    def __init__(self, proxy: RunningProxy, period: float = 0.005) -> None:
        self.proxy = proxy
        self.period = period
        self.max = 0.0
        self._stop = False
        self._future: Any = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop:
            t = loop.time()
            await asyncio.sleep(self.period)
            self.max = max(self.max, loop.time() - t - self.period)

    def __enter__(self) -> LoopLag:
        self._future = asyncio.run_coroutine_threadsafe(self._probe(), self.proxy.loop)
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._future.result(timeout=30)
