"""A real tritonserver frozen mid-stream (SIGSTOP), then resumed (SIGCONT): the HTTP/2 PING
keepalive ends every open stream with an error within keepalive time + timeout, the next
request after the resume succeeds on a new connection, and nothing is left behind (no
streams or timers on our side, the frozen requests end as cancelled in the engine)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from trtllm_stack.proxy.errors import BackendUnavailable, engine_failure
from trtllm_stack.triton.client import EngineClient, EngineError
from trtllm_stack.triton.grpc_wire import Keepalive
from trtllm_stack.triton.tensors import EngineRequest

pytestmark = pytest.mark.integration

EOS, PAD = 151645, 151643
KEEPALIVE = Keepalive(time=0.5, timeout=1.0)


def _request(n: int = 300) -> EngineRequest:
    return EngineRequest(prompt_ids=[9707, 11, 1879], max_tokens=n, end_id=EOS, pad_id=PAD)


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _scenario(url: str, pid: int) -> dict:
    client = EngineClient(url, keepalive=KEEPALIVE)
    loop = asyncio.get_running_loop()
    try:
        streams = [await client.open(_request(), f"frozen-{i}", timeout=60) for i in range(3)]
        for s in streams:  # all three are generating
            async with asyncio.timeout(10):
                assert await s.next_batch()
        os.kill(pid, signal.SIGSTOP)
        frozen_at = loop.time()
        try:
            errors: list[EngineError] = []
            async with asyncio.timeout(15):
                for s in streams:
                    try:
                        while await s.next_batch() is not None:
                            pass
                    except EngineError as exc:
                        errors.append(exc)
            failed_after = loop.time() - frozen_at
        finally:
            os.kill(pid, signal.SIGCONT)
        channel = client._get_channel()
        dead = list(channel._conns)
        # After the resume: a new request works, on a new connection.
        fresh = await client.open(_request(8), "after-resume", timeout=30)
        tokens = 0
        async with asyncio.timeout(30):
            while (batch := await fresh.next_batch()) is not None:
                tokens += sum(len(c.token_ids) for c in batch)
        live = [c for c in channel._conns if not c.closed]
        return {
            "errors": errors,
            "failed_after": failed_after,
            "dead": dead,
            "tokens": tokens,
            "live": live,
        }
    finally:
        await client.close()


def test_frozen_triton_fails_streams_by_ping_and_the_next_request_reconnects(triton_factory):
    triton = triton_factory(token_delay_ms=20, default_reply_tokens=300)
    pid = triton.server.pid
    assert pid is not None
    out = asyncio.run(_scenario(triton.endpoints.grpc_url, pid))

    assert len(out["errors"]) == 3
    for exc in out["errors"]:
        assert "PING" in str(exc)
        assert isinstance(engine_failure(exc), BackendUnavailable)  # 503 to clients
    # keepalive time + timeout (1.5 s), well before the 60 s silence timeout
    assert out["failed_after"] < 1.5 + 3.0
    for conn in out["dead"]:
        assert conn.closed and conn.streams == {} and conn._ping_timer is None
    assert out["tokens"] == 8
    assert len(out["live"]) == 1 and out["live"][0] not in out["dead"]

    # Triton, resumed, sees the connection gone and cancels the three frozen requests.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = {
            e["request_id"]: e["outcome"]
            for e in _events(triton.event_log)
            if e.get("event") == "request"
        }
        if {"frozen-0", "frozen-1", "frozen-2", "after-resume"} <= done.keys():
            break
        time.sleep(0.2)
    assert [done.get(f"frozen-{i}") for i in range(3)] == ["cancelled"] * 3, done
    assert done.get("after-resume") == "length"
