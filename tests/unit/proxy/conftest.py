"""A fake engine with EngineClient's interface, and the proxy app over it (in process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from trtllm_stack.proxy.app import create_app
from trtllm_stack.proxy.engine import GeneratorEngine
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton.client import EngineLimits, EngineUnavailable
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest


@dataclass
class FakeEngine(GeneratorEngine):
    """Replies with ``reply`` token ids, one chunk per token, like the streaming backend:
    stops at max_tokens (final on the last token) or ends with an empty final chunk (EOS)."""

    tokenizer: object
    reply: str = "Hello there!"
    delay: float = 0.0
    ready: bool = True
    available: bool = True
    max_input_len: int | None = 4096
    max_seq_len: int | None = 8192
    vocab_size: int | None = 151936  # Qwen3's engine vocabulary (padded past the tokenizer)
    requests: list[EngineRequest] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    async def generate(
        self, req: EngineRequest, request_id: str | None = None
    ) -> AsyncIterator[EngineChunk]:
        if not self.available:
            raise EngineUnavailable("connection refused")
        self.requests.append(req)
        ids = self.tokenizer.encode(self.reply, add_special_tokens=False)
        outcome = "eos"
        try:
            for n, tok in enumerate(ids, 1):
                if self.delay:
                    await asyncio.sleep(self.delay)
                last = n >= req.max_tokens
                lp = [-0.5] if req.return_log_probs else None
                yield EngineChunk([tok], lp, last)
                if last:
                    outcome = "length"
                    return
            yield EngineChunk([], [] if req.return_log_probs else None, True)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self.outcomes.append(outcome)

    async def is_ready(self) -> bool:
        return self.ready

    async def limits(self) -> EngineLimits:
        if not self.available:
            raise EngineUnavailable("connection refused")
        return EngineLimits(self.max_input_len, self.max_seq_len, self.vocab_size)

    async def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(bundled_qwen3_tokenizer_dir())


@pytest.fixture
def engine(tokenizer) -> FakeEngine:
    return FakeEngine(tokenizer)


@pytest.fixture
def make_client(tokenizer, engine):
    clients = []

    def make(**settings) -> httpx.AsyncClient:
        app = create_app(ProxySettings(**settings), engine=engine, tokenizer=tokenizer)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        )
        clients.append(client)
        return client

    yield make


@pytest.fixture
def client(make_client) -> httpx.AsyncClient:
    return make_client()
