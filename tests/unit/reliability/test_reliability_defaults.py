"""Secure defaults and the stalled-reader guard, without servers: loopback binds for Triton,
its metrics and the proxy; the API key compared with hmac.compare_digest; a stream whose
client stops reading is abandoned after the send timeout and cleaned up."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

import httpx
import pytest

from trtllm_stack.proxy import app as proxy_app
from trtllm_stack.proxy.app import create_app
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.proxy.sse import SSEResponse
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton.launch_plan import (
    DEFAULT_HOST,
    LaunchSpec,
    rank_tritonserver_args,
)
from trtllm_stack.triton.server import CpuTriton, TritonServer


def _addresses(args: list[str]) -> dict[str, str]:
    return {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for a in args
        if a.split("=", 1)[0] in {"--http-address", "--grpc-address", "--metrics-address"}
    }


def test_triton_runner_binds_loopback_by_default():
    cpu = CpuTriton(binary=Path("tritonserver"), backend_dir=Path("/b"), env={})
    args = TritonServer(Path("/repo")).command(cpu)
    assert _addresses(args) == dict.fromkeys(
        ("--http-address", "--grpc-address", "--metrics-address"), "127.0.0.1"
    )


def test_launcher_binds_loopback_by_default():
    assert DEFAULT_HOST == "127.0.0.1"
    args = rank_tritonserver_args(LaunchSpec("tritonserver", Path("/repo"), 2), 0)
    assert set(_addresses(args).values()) == {"127.0.0.1"}
    assert len(_addresses(args)) == 3


def test_proxy_binds_loopback_by_default(monkeypatch):
    monkeypatch.delenv("TRTLLM_STACK_HOST", raising=False)
    assert ProxySettings().host == "127.0.0.1"


class _NoEngine:
    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def test_api_key_compared_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(proxy_app.hmac, "compare_digest", spy)
    tok = load_tokenizer(bundled_qwen3_tokenizer_dir())
    app = create_app(
        ProxySettings(api_key="k-123", tokenizer_dir=bundled_qwen3_tokenizer_dir()),
        engine=_NoEngine(),  # type: ignore[arg-type]
        tokenizer=tok,
    )

    async def statuses() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            out = []
            for header in (
                "Bearer k-123",
                "Bearer k-12",
                "Bearer k-1234",
                "k-123",
                None,
            ):
                headers = {"Authorization": header} if header else {}
                out.append((await client.get("/v1/models", headers=headers)).status_code)
            return out

    assert asyncio.run(statuses()) == [200, 401, 401, 401, 401]
    assert len(calls) == 5
    assert all(expected == b"Bearer k-123" for _, expected in calls)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_stalled_reader_is_abandoned_after_send_timeout(spec_version):
    state = {"cleanup": 0, "closed": False, "sent": 0}

    async def body():
        try:
            while True:
                yield b"data: x\n\n"
        finally:
            state["closed"] = True

    async def scenario() -> None:
        never = asyncio.Event()

        async def receive():
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            state["sent"] += 1
            if message["type"] == "http.response.body" and state["sent"] > 3:
                await never.wait()  # the socket buffers are full: this write never completes

        def cleanup() -> None:
            # Runs in the response's task after the cancellation was undone: still usable.
            state["cleanup"] = 1
            state["cancelling"] = asyncio.current_task().cancelling()  # type: ignore[union-attr]

        response = SSEResponse(body(), cleanup, send_timeout=0.2)
        scope = {"type": "http", "asgi": {"spec_version": spec_version}}
        task = asyncio.create_task(response(scope, receive, send))
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done and not task.cancelled()
        task.result()

    asyncio.run(scenario())
    assert state == {"cleanup": 1, "cancelling": 0, "closed": True, "sent": 4}
