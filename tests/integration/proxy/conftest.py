"""The proxy as a real uvicorn server (in a thread) on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from proxy_helpers import RunningProxy, start_proxy

__all__ = ["RunningProxy", "start_proxy"]


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
