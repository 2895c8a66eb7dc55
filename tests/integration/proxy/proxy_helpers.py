"""Helpers for the proxy integration tests (a module name unique in the repository)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from trtllm_stack.proxy.app import create_app
from trtllm_stack.proxy.http_guard import guarded_http_protocol
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.triton.server import free_port


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(
    path: Path,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
    count: int = 1,
) -> dict[str, Any]:
    """The ``count``-th event matching ``predicate`` (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matching = [ev for ev in read_events(path) if predicate(ev)]
        if len(matching) >= count:
            return matching[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} matching events in {path} after {timeout} s")


def sse_events(response: httpx.Response) -> list[str]:
    """The data fields of an SSE response, in order (raw strings)."""
    return [
        block[len("data: ") :]
        for block in response.text.split("\n\n")
        if block.startswith("data: ")
    ]


@dataclass
class RunningProxy:
    base_url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the proxy runs on (its uvicorn thread)."""
        return self.server.servers[0].get_loop()

    def call(self, make: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 10) -> Any:
        """Run ``make()`` on the proxy's loop (e.g. to inspect its tasks) and return the result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_proxy(tokenizer_dir: Path, **settings: Any) -> RunningProxy:
    port = free_port()
    config = ProxySettings(host="127.0.0.1", port=port, tokenizer_dir=tokenizer_dir, **settings)
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            http=guarded_http_protocol(config),
        )
    )
    thread = threading.Thread(target=server.run, name=f"proxy-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("proxy did not start")
        time.sleep(0.02)
    return RunningProxy(f"http://127.0.0.1:{port}", app, server, thread)


@pytest.fixture
def proxy_factory(qwen3_tokenizer_dir: Path) -> Iterator[Callable[..., RunningProxy]]:
    """Start proxies with given settings; stopped at test end (shared by proxy and
    reliability tests, imported into their conftest files)."""
    started: list[RunningProxy] = []

    def start(**settings: Any) -> RunningProxy:
        running = start_proxy(qwen3_tokenizer_dir, **settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
