"""The proxy as a real uvicorn server (in a thread) on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proxy_helpers import RunningProxy, proxy_factory, start_proxy

__all__ = ["RunningProxy", "proxy_factory", "start_proxy"]


@pytest.fixture(scope="session")
def proxy(triton, qwen3_tokenizer_dir) -> Iterator[RunningProxy]:
    running = start_proxy(qwen3_tokenizer_dir, triton_url=triton.endpoints.grpc_url)
    yield running
    running.stop()
