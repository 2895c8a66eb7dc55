"""Two real tritonservers (scripted engine) behind one proxy: requests spread, conversation
turns stay on one replica, a replica SIGKILLed mid-stream ends only its own streams, later
requests all succeed on the survivor, and the restarted replica is taken back."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from openai import OpenAI
from proxy_helpers import read_events

from trtllm_stack.triton.server import TritonServer

pytestmark = pytest.mark.integration

# Longer than one 64-token affinity block once rendered by the chat template.
_SYSTEM = "You are a careful assistant. " * 20


def _served_by(tritons, request_id: str, timeout: float = 10.0) -> int:
    """The replica whose engine logged ``request_id``. The scripted engine logs a request
    after sending its final response, so the client can see the reply first: wait."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [read_events(t.event_log) for t in tritons]
        hits = [
            i
            for i, events in enumerate(logs)
            if any(e.get("request_id") == request_id for e in events)
        ]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(hits) == 1, (request_id, hits)
    return hits[0]


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _ready_replicas(base_url: str) -> list[bool]:
    body = httpx.get(base_url + "/health/ready", timeout=10).json()
    return [r["ready"] for r in body["replicas"]]


async def _stream(client: httpx.AsyncClient, text: str, started: asyncio.Event) -> dict:
    body = {
        "model": "qwen3",
        "stream": True,
        "max_tokens": 150,
        "messages": [{"role": "user", "content": text}],
    }
    raw = ""
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        async for chunk in resp.aiter_text():
            raw += chunk
            if '"content":"' in raw:
                started.set()
    return {"status": resp.status_code, "raw": raw}


def test_two_replicas_route_fail_over_and_come_back(proxy_factory, triton_factory):
    tritons = [triton_factory(token_delay_ms=20, default_reply_tokens=400) for _ in range(2)]
    urls = ",".join(t.endpoints.grpc_url for t in tritons)
    proxy = proxy_factory(triton_url=urls, replica_health_interval=0.2)
    pool = proxy.app.state.ctx.engine
    assert _ready_replicas(proxy.base_url) == [True, True]

    client = OpenAI(base_url=proxy.v1, api_key="sk-dummy", max_retries=0, timeout=30)
    # Distinct short prompts spread over both replicas (least loaded, round-robin ties).
    ids = [
        client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": f"[reply]r{i}[/reply]"}]
        ).id
        for i in range(4)
    ]
    assert sorted(_served_by(tritons, i) for i in ids) == [0, 0, 1, 1]

    # Three conversations, three turns each: every turn lands where its first turn did.
    placements: list[set[int]] = []
    for c in range(3):
        messages = [{"role": "system", "content": f"{c} {_SYSTEM}"}]
        turn_ids = []
        for turn in range(3):
            messages.append({"role": "user", "content": f"[reply]c{c} t{turn}[/reply]"})
            resp = client.chat.completions.create(model="qwen3", messages=messages)
            messages.append({"role": "assistant", "content": resp.choices[0].message.content})
            turn_ids.append(resp.id)
        placements.append({_served_by(tritons, i) for i in turn_ids})
    assert all(len(p) == 1 for p in placements), placements

    # Six streams in flight, three per replica; SIGKILL replica 1 while they stream.
    async def failover() -> tuple[list[dict], int]:
        async with httpx.AsyncClient(base_url=proxy.base_url, timeout=30) as http:
            flags = [asyncio.Event() for _ in range(6)]
            tasks = [asyncio.create_task(_stream(http, f"stream {i}", flags[i])) for i in range(6)]
            for flag in flags:
                await asyncio.wait_for(flag.wait(), 30)
            on_killed = pool.replicas[1].in_flight
            await asyncio.to_thread(tritons[1].server.kill)
            return await asyncio.gather(*tasks), on_killed

    results, on_killed = asyncio.run(failover())
    assert on_killed == 3
    errored = [r for r in results if '"backend_unavailable"' in r["raw"]]
    finished = [r for r in results if '"finish_reason":"length"' in r["raw"]]
    assert len(errored) == on_killed and len(finished) == 6 - on_killed
    assert all(r["status"] == 200 and r["raw"].endswith("data: [DONE]\n\n") for r in results)
    assert _ready_replicas(proxy.base_url) == [True, False]

    # Known down: nothing is sent there, every request succeeds on the survivor.
    for i in range(6):
        reply = client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": f"[reply]after {i}[/reply]"}]
        )
        assert reply.choices[0].message.content == f"after {i}"
    metrics = httpx.get(proxy.base_url + "/metrics").text
    assert f'trtllm_proxy_replica_up{{replica="{tritons[1].endpoints.grpc_url}"}} 0.0' in metrics
    assert f'trtllm_proxy_replica_up{{replica="{tritons[0].endpoints.grpc_url}"}} 1.0' in metrics

    # The replica restarts on its ports: the health check puts it back into rotation.
    ep = tritons[1].endpoints
    again = TritonServer(
        tritons[1].repo,
        http_port=ep.http_port,
        grpc_port=ep.grpc_port,
        metrics_port=ep.metrics_port,
        log_path=tritons[1].repo.parent / "restarted.log",
    )
    try:
        again.start()
        _wait(lambda: _ready_replicas(proxy.base_url) == [True, True], 10, "replica back")
        before = pool.replicas[1].requests
        for i in range(4):
            client.chat.completions.create(
                model="qwen3", messages=[{"role": "user", "content": f"[reply]back {i}[/reply]"}]
            )
        assert pool.replicas[1].requests - before == 2
    finally:
        again.stop()
