"""The proxy as a real uvicorn server (in a thread) on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from trtllm_stack.proxy.app import create_app
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.triton.server import free_port


@dataclass
class RunningProxy:
    base_url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_proxy(tokenizer_dir: Path, **settings: Any) -> RunningProxy:
    port = free_port()
    config = ProxySettings(
        host="127.0.0.1", port=port, tokenizer_dir=tokenizer_dir, **settings
    )
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
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


@pytest.fixture(scope="session")
def proxy(triton, qwen3_tokenizer_dir) -> Iterator[RunningProxy]:
    running = start_proxy(qwen3_tokenizer_dir, triton_url=triton.endpoints.grpc_url)
    yield running
    running.stop()


@pytest.fixture
def proxy_factory(qwen3_tokenizer_dir) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(**settings: Any) -> RunningProxy:
        running = start_proxy(qwen3_tokenizer_dir, **settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
