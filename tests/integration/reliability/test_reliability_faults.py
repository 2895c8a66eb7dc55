"""Faults with a real tritonserver (scripted engine) and the proxy as a real uvicorn server:
Triton not there yet, Triton killed mid-stream, mass client disconnects, a client that stops
reading."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from proxy_helpers import read_events, wait_for_event
from reliability_helpers import (
    chat_body,
    in_flight,
    live_objects,
    metric,
    parse_sse,
    proxy_tasks,
    streamed_content,
    wait_until,
)

from trtllm_stack.triton.server import TritonServer, free_port

pytestmark = pytest.mark.integration


def _wait_ready(base_url: str, timeout: float = 60.0) -> None:
    wait_until(
        lambda: httpx.get(base_url + "/health/ready", timeout=5).status_code == 200,
        timeout,
        "proxy ready",
    )


def test_proxy_started_before_triton_then_serves(proxy_factory, scripted_repo, tmp_path):
    ports = {
        "http_port": free_port(),
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    proxy = proxy_factory(triton_url=f"127.0.0.1:{ports['grpc_port']}")

    assert httpx.get(proxy.base_url + "/health").status_code == 200
    ready = httpx.get(proxy.base_url + "/health/ready", timeout=10)
    assert ready.status_code == 503
    assert "not ready" in ready.json()["error"]["message"]
    for stream in (False, True):
        r = httpx.post(
            proxy.v1 + "/chat/completions",
            json=chat_body("hi", stream=stream),
            timeout=10,
        )
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "backend_unavailable"
        assert "unavailable" in err["message"]

    server = TritonServer(scripted_repo, log_path=tmp_path / "triton.log", **ports)
    try:
        server.start()
        # Same proxy process, no restart: the gRPC channel reconnects by itself.
        _wait_ready(proxy.base_url)
        r = httpx.post(
            proxy.v1 + "/chat/completions",
            json=chat_body("[reply]up now[/reply]", stream=False),
            timeout=30,
        )
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "up now"
    finally:
        server.stop()


async def _read_stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event) -> dict:
    raw = ""
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        status = resp.status_code
        async for text in resp.aiter_text():
            raw += text
            if '"content":"' in raw and not started.is_set():
                started.set()
    return {"status": status, "events": parse_sse(raw), "ended_at": time.monotonic()}


def test_triton_killed_mid_stream_ends_every_stream_then_recovers(proxy_factory, triton_factory):
    triton = triton_factory(token_delay_ms=20, default_reply_tokens=2000)
    proxy = proxy_factory(triton_url=triton.endpoints.grpc_url)

    async def scenario() -> tuple[list[dict], list[httpx.Response], float]:
        timeout = httpx.Timeout(30.0)
        async with httpx.AsyncClient(base_url=proxy.base_url, timeout=timeout) as client:
            flags = [asyncio.Event() for _ in range(4)]
            streams = [
                asyncio.create_task(_read_stream(client, chat_body(f"stream {i}"), flags[i]))
                for i in range(4)
            ]
            non_stream = [
                asyncio.create_task(
                    client.post("/v1/chat/completions", json=chat_body(f"n {i}", stream=False))
                )
                for i in range(2)
            ]
            for flag in flags:
                await asyncio.wait_for(flag.wait(), 30)
            await asyncio.sleep(0.2)  # non-stream requests are generating too
            killed_at = time.monotonic()
            await asyncio.to_thread(triton.server.kill)
            results = await asyncio.gather(*streams)
            responses = await asyncio.gather(*non_stream)
        return results, responses, killed_at

    results, responses, killed_at = asyncio.run(scenario())
    for res in results:
        events = res["events"]
        assert res["status"] == 200
        assert events[-1] == "[DONE]"
        assert "error" in events[-2], events[-2]
        assert events[-2]["error"]["code"] == "backend_unavailable"
        print(f"stream ended {res['ended_at'] - killed_at:.3f} s after the kill")
    for resp in responses:
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "backend_unavailable"
    assert in_flight(proxy) == 0

    # Triton comes back on the same ports: the proxy serves again without a restart.
    ep = triton.endpoints
    again = TritonServer(
        triton.repo,
        http_port=ep.http_port,
        grpc_port=ep.grpc_port,
        metrics_port=ep.metrics_port,
        log_path=triton.repo.parent / "triton-restarted.log",
    )
    try:
        again.start()
        _wait_ready(proxy.base_url)
        r = httpx.post(
            proxy.v1 + "/chat/completions",
            json=chat_body("[reply]back[/reply]", stream=True),
            timeout=30,
        )
        events = parse_sse(r.text)
        assert events[-1] == "[DONE]"
        assert streamed_content(events) == "back"
    finally:
        again.stop()


def test_hundred_clients_disconnect_mid_stream(proxy_factory, triton_factory):
    # A server of its own: a mass disconnect must not be able to take down the session's
    # shared server (Triton 2.51's gRPC layer once aborted here under heavy CI load).
    # Each request asks for 50 ms per token of its 200 tokens: without a delay a request can
    # finish its 200 tokens before its client's cancel arrives (the engine has 64 batch slots;
    # the other 36 requests queue, as inflight batching does).
    triton = triton_factory(token_delay_ms=50)
    proxy = proxy_factory(triton_url=triton.endpoints.grpc_url)
    warm = httpx.post(
        proxy.v1 + "/chat/completions", json=chat_body("[reply]w[/reply]"), timeout=30
    )
    assert warm.status_code == 200
    tasks_before = proxy_tasks(proxy)
    n = 100

    async def open_and_drop(client: httpx.AsyncClient) -> str:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body("go")) as resp:
            assert resp.status_code == 200
            raw = ""
            async for text in resp.aiter_text():
                raw += text
                if '"content":"' in raw and '"role"' in raw:
                    break
        first = next(e for e in parse_sse(raw) if isinstance(e, dict))
        return str(first["id"])

    async def scenario() -> list[str]:
        limits = httpx.Limits(max_connections=n + 10)
        async with httpx.AsyncClient(
            base_url=proxy.base_url, limits=limits, timeout=httpx.Timeout(60.0)
        ) as client:
            ids = await asyncio.gather(*(open_and_drop(client) for _ in range(n)))
        return list(ids)

    request_ids = asyncio.run(scenario())
    assert len(set(request_ids)) == n
    # Every one of the 100 Triton requests ends as cancelled in the engine's own log.
    wanted = set(request_ids)
    wait_for_event(
        triton.event_log,
        lambda ev: ev.get("event") == "request" and ev.get("request_id") in wanted,
        timeout=60,
        count=n,
    )
    outcomes = {
        ev["request_id"]: ev["outcome"]
        for ev in read_events(triton.event_log)
        if ev.get("request_id") in wanted
    }
    assert set(outcomes.values()) == {"cancelled"}, outcomes
    assert (
        max(
            ev["output_tokens"]
            for ev in read_events(triton.event_log)
            if ev.get("request_id") in wanted
        )
        < 400
    )
    wait_until(lambda: in_flight(proxy) == 0, what="in-flight 0")
    assert metric(proxy, "trtllm_proxy_requests_in_flight") == 0.0
    wait_until(lambda: proxy_tasks(proxy) <= tasks_before, what="task count back to baseline")
    assert live_objects("EngineStream") == live_objects("GrpcStream") == 0
    print(f"proxy tasks before {tasks_before}, after {proxy_tasks(proxy)}")


def test_client_that_stops_reading_is_cancelled_others_unaffected(proxy_factory, triton_factory):
    triton = triton_factory(token_delay_ms=0.2, default_reply_tokens=30000)
    proxy = proxy_factory(triton_url=triton.endpoints.grpc_url, send_timeout=2.0)
    port = int(proxy.base_url.rsplit(":", 1)[1])
    # logprobs make each event bigger, so the socket buffers fill sooner.
    payload = chat_body("flood me", logprobs=True)
    body = httpx.Request("POST", "http://x", json=payload).content
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    slow.connect(("127.0.0.1", port))
    try:
        slow.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += slow.recv(1024)
        assert head.startswith(b"HTTP/1.1 200")
        # ... and now it stops reading. Another client is served normally meanwhile.
        r = httpx.post(
            proxy.v1 + "/chat/completions",
            json=chat_body("[reply]still fine[/reply]", stream=True),
            timeout=30,
        )
        events = parse_sse(r.text)
        assert events[-1] == "[DONE]"
        assert streamed_content(events) == "still fine"
        # The stalled request is cancelled in the engine after the send timeout.
        ev = wait_for_event(
            triton.event_log,
            lambda e: e.get("event") == "request" and e.get("outcome") == "cancelled",
            timeout=60,
        )
        assert ev["output_tokens"] < 30000
        wait_until(lambda: in_flight(proxy) == 0, what="in-flight 0")
        assert live_objects("EngineStream") == live_objects("GrpcStream") == 0
        # The server closed the connection: draining it reaches EOF without [DONE].
        slow.settimeout(20)
        rest = b""
        while chunk := slow.recv(65536):
            rest += chunk
        assert not rest.rstrip().endswith(b"data: [DONE]")
        print(f"engine produced {ev['output_tokens']} tokens; {len(rest)} bytes were buffered")
    finally:
        slow.close()
