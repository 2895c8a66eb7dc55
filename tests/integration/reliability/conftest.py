"""Fixtures of the reliability tests: the proxy helpers of tests/integration/proxy (a real
uvicorn proxy in a thread, event-log readers) plus SSE and loop-inspection helpers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "proxy"))

from proxy_helpers import RunningProxy, start_proxy


@pytest.fixture
def reliability_proxy(qwen3_tokenizer_dir) -> Iterator[Callable[..., RunningProxy]]:
    """Start proxies with given settings; stopped at test end."""
    started: list[RunningProxy] = []

    def start(**settings: Any) -> RunningProxy:
        running = start_proxy(qwen3_tokenizer_dir, **settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
