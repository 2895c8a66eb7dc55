"""The OpenAI target against real local HTTP servers (aiohttp.web on 127.0.0.1, port 0),
each test scripting what the server sends."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from trtllm_stack.bench.metrics import ERROR, OK, RequestRecord
from trtllm_stack.bench.targets import OpenAITarget, RequestOptions, parse_target
from trtllm_stack.bench.workload import WorkItem
from trtllm_stack.errors import UserError
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

ITEM = WorkItem(prompt="Say hi", prompt_ids=(1, 2, 3, 4), max_tokens=3, exact_output=True)
DONE = b"data: [DONE]\n\n"
TOKENIZER = load_tokenizer(bundled_qwen3_tokenizer_dir())


def _chunk(delta: dict[str, Any] | None = None, usage: dict[str, int] | None = None) -> bytes:
    obj: dict[str, Any] = {"choices": [{"index": 0, "delta": delta}] if delta is not None else []}
    if usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@dataclass
class Server:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)  # generation requests
    headers: list[dict[str, str]] = field(default_factory=list)  # every request
    paths: list[str] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)  # client port of every request
    sent: asyncio.Event = field(default_factory=asyncio.Event)  # set by scripted handlers
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)  # client went away


Handler = Callable[[web.Request, Server], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    """An aiohttp.web app on a free port: /v1/models lists "qwen3", POSTs go to ``handler``.
    Handlers are cancelled when their client disconnects (``server.cancelled`` is set)."""
    server = Server(url="")

    def note(request: web.Request) -> None:
        server.paths.append(request.path)
        server.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        server.peers.append(peer[1] if peer else -1)

    async def models(request: web.Request) -> web.StreamResponse:
        note(request)
        return web.json_response({"data": [{"id": "qwen3"}]})

    async def generate(request: web.Request) -> web.StreamResponse:
        note(request)
        server.bodies.append(await request.json())
        try:
            return await handler(request, server)
        except asyncio.CancelledError:
            server.cancelled.set()
            raise

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


async def _stream(
    request: web.Request, parts: list[bytes], server: Server | None = None, pause: float = 0.0
) -> web.StreamResponse:
    """Chunked text/event-stream, one write per part (``pause`` apart)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
        if pause:
            await asyncio.sleep(pause)
    if server is not None:
        server.sent.set()
    await resp.write_eof()
    return resp


def _sse(*parts: bytes) -> Handler:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        return await _stream(request, list(parts))

    return handler


async def _run(url: str, *records: RequestRecord, **opts: Any) -> OpenAITarget:
    target = OpenAITarget(url, RequestOptions(**opts), TOKENIZER)
    await target.open(4)
    try:
        for rec in records:
            await target.send(ITEM, rec)
        target.finalize(list(records))
    finally:
        await target.close()
    return target


async def _send(handler: Handler, **opts: Any) -> tuple[RequestRecord, Server]:
    async with serving(handler) as server:
        rec = RequestRecord(index=0, start=0.0)
        await _run(server.url, rec, **opts)
    return rec, server


async def test_stream_with_usage() -> None:
    rec, server = await _send(
        _sse(
            _chunk({"role": "assistant", "content": ""}),  # role only: not a token
            _chunk({"content": "Hel"}),
            _chunk({"reasoning_content": "lo"}) + _chunk({"content": " there"}),  # one write
            _chunk(usage={"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}),
            DONE,
        ),
        api_key="sk-test",
    )
    assert rec.status == OK, rec.error
    assert (rec.tokens_in, rec.tokens_out, rec.chunks) == (11, 3, 3)
    assert len(rec.itl) == 2
    assert rec.ttft is not None and rec.e2e is not None and 0 <= rec.ttft <= rec.e2e
    body = server.bodies[0]
    assert body["model"] == "qwen3" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert body["max_tokens"] == 3 and body["min_tokens"] == 3 and body["ignore_eos"] is True
    assert server.paths == ["/v1/models", "/v1/chat/completions"]
    for headers in server.headers:  # the model lookup too
        assert headers["Accept-Encoding"] == "identity"
        assert headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Bearer sk-test"


async def test_stream_without_usage_counts_tokens_from_text() -> None:
    text = "The quick brown fox"
    pieces = [text[:5], text[5:12], text[12:]]
    rec, server = await _send(
        _sse(*[_chunk({"content": p}) for p in pieces], DONE),
        ignore_eos=False,
        extra_body={"top_k": 5},
        model="m",
    )
    assert rec.status == OK
    assert rec.tokens_out == len(TOKENIZER.encode(text, add_special_tokens=False))
    assert rec.tokens_in == len(ITEM.prompt_ids)  # no usage: the ids we would have sent
    assert rec.chunks == 3
    body = server.bodies[0]
    assert "min_tokens" not in body and body["top_k"] == 5 and body["model"] == "m"
    assert server.paths == ["/v1/chat/completions"]  # --model given: no lookup
    assert "Authorization" not in server.headers[0]  # no key, no header


async def test_completions_endpoint_and_v1_in_the_url() -> None:
    handler = _sse(
        b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[{"text":"b"}]}\n\n', DONE
    )
    async with serving(handler) as server:
        for suffix in ("", "/", "/v1", "/v1/"):
            rec = RequestRecord(index=0, start=0.0)
            target = await _run(server.url + suffix, rec, endpoint="completions")
            assert target.base == server.url + "/v1"
            assert rec.status == OK and rec.chunks == 2
    assert set(server.paths) == {"/v1/models", "/v1/completions"}
    assert server.bodies[0]["prompt"] == "Say hi"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            lambda: web.json_response(
                {"error": {"message": "max_tokens too big", "type": "invalid_request_error"}},
                status=400,
            ),
            "HTTP 400: max_tokens too big",
        ),
        (lambda: web.Response(status=503, text="down"), "HTTP 503: down"),
    ],
)
async def test_http_errors_keep_the_reason(
    response: Callable[[], web.Response], reason: str
) -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        return response()

    async with serving(handler) as server:
        recs = [RequestRecord(index=i, start=0.0) for i in range(2)]
        await _run(server.url, *recs)
    assert [(r.status, r.error) for r in recs] == [(ERROR, reason)] * 2
    assert len(set(server.peers)) == 1  # the error body was read: the connection is reused


async def test_stream_without_done_is_an_error() -> None:
    rec, _ = await _send(_sse(_chunk({"content": "x"})))
    assert (rec.status, rec.error) == (ERROR, "stream ended without [DONE]")
    assert rec.chunks == 1  # what arrived is still recorded


async def test_error_event_in_stream() -> None:
    rec, _ = await _send(
        _sse(
            _chunk({"content": "x"}),
            b'data: {"error": {"message": "backend timed out"}}\n\n',
            DONE,
        )
    )
    assert rec.status == ERROR and rec.error == "stream error: backend timed out"


async def test_malformed_data() -> None:
    rec, _ = await _send(_sse(b"data: {not json\n\n"))
    assert rec.status == ERROR and rec.error == "malformed SSE data"


async def test_chunks_split_anywhere() -> None:
    """CRLF line endings, a comment, multi-byte UTF-8, all cut into 1-7 byte writes."""
    text = ["Grüße", ", 世界", " and ", "more"]
    events = [
        json.dumps({"choices": [{"delta": {"content": t}}]}, ensure_ascii=False) for t in text
    ]
    stream = b": keep-alive\r\n\r\n"
    stream += b"".join(b"data: " + e.encode() + b"\r\n\r\n" for e in events)
    stream += b"data: [DONE]\r\n\r\n"
    sizes = [1, 2, 3, 5, 7]
    parts, at = [], 0
    while at < len(stream):
        size = sizes[len(parts) % len(sizes)]
        parts.append(stream[at : at + size])
        at += size

    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        return await _stream(request, parts, pause=0.001)  # pauses: reads stay small

    rec, _ = await _send(handler, model="m")
    assert rec.status == OK, rec.error
    assert rec.chunks == len(text)
    assert rec.tokens_out == len(TOKENIZER.encode("".join(text), add_special_tokens=False))


@pytest.mark.parametrize("when", ["before headers", "mid-body"])
async def test_server_closing_the_connection(when: str) -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        if when == "mid-body":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(_chunk({"content": "x"}))
            await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(10)  # cancelled: the client is gone
        raise AssertionError("not reached")

    rec, _ = await _send(handler, model="m")
    assert (rec.status, rec.error) == (ERROR, "connection closed mid-response")
    assert rec.chunks == (1 if when == "mid-body" else 0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


async def test_connection_refused_is_recorded() -> None:
    rec = RequestRecord(index=0, start=0.0)
    await _run(f"http://127.0.0.1:{_closed_port()}", rec, model="m")
    assert (rec.status, rec.error) == (ERROR, "cannot connect")
    assert rec.chunks == 0 and rec.e2e is not None


async def test_model_lookup_failure_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot list models"):
        await _run(f"http://127.0.0.1:{_closed_port()}")

    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        raise AssertionError("not reached")

    async with serving(handler) as server:  # a server without /v1/models
        with pytest.raises(UserError, match=r"cannot list models \(404,"):
            await _run(server.url + "/nothing-here")


@pytest.mark.parametrize("when", ["before headers", "mid-body"])
async def test_timeout(when: str) -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        if when == "mid-body":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(_chunk({"content": "x"}))
        await asyncio.sleep(10)  # cancelled when the client gives up
        raise AssertionError("not reached")

    rec, server = await _send(handler, model="m", request_timeout=0.2)
    assert (rec.status, rec.error) == (ERROR, "timeout")
    assert rec.chunks == (1 if when == "mid-body" else 0)
    assert rec.e2e is not None and 0.2 <= rec.e2e < 2
    assert server.cancelled.is_set()  # the timed-out connection was closed


@pytest.mark.parametrize("when", ["before headers", "mid-body"])
async def test_cancellation_keeps_what_arrived_and_closes_the_connection(when: str) -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        if when == "mid-body":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(_chunk({"content": "x"}) + _chunk({"content": "y"}))
        server.sent.set()
        await asyncio.sleep(10)  # until the client goes away
        raise AssertionError("not reached")

    async with serving(handler) as server:
        target = OpenAITarget(server.url, RequestOptions(model="m"), TOKENIZER)
        await target.open(None)
        try:
            rec = RequestRecord(index=0, start=0.0)
            task = asyncio.create_task(target.send(ITEM, rec))
            await asyncio.wait_for(server.sent.wait(), 5)
            await asyncio.sleep(0.05)  # let the client read what was sent
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the server sees the client go away (so it can cancel generation)
            await asyncio.wait_for(server.cancelled.wait(), 2)
            assert rec.chunks == (2 if when == "mid-body" else 0) and rec.e2e is not None
            # the half-read connection was not pooled: the session connects anew
            server.sent.clear()
            task = asyncio.create_task(target.send(ITEM, RequestRecord(index=1, start=0.0)))
            await asyncio.wait_for(server.sent.wait(), 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert len(server.peers) == 2 and server.peers[0] != server.peers[1]
            assert len(target._sessions) == 1
        finally:
            await target.close()


def test_parse_target() -> None:
    assert parse_target("http://127.0.0.1:9000")[0] == "openai"
    assert parse_target("triton-grpc://localhost:8001")[0] == "triton-grpc"
    for bad in ("ftp://x", "localhost:9000", "triton-grpc://host", "http://"):
        with pytest.raises(UserError):
            parse_target(bad)


async def test_one_connection_per_concurrent_request_and_reuse() -> None:
    gate = asyncio.Event()

    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        await gate.wait()
        return await _stream(request, [_chunk({"content": "x"}), DONE])

    async with serving(handler) as server:
        target = OpenAITarget(server.url, RequestOptions(), TOKENIZER)
        await target.open(None)  # the model lookup opens the first connection
        try:
            recs = [RequestRecord(index=i, start=0.0) for i in range(3)]
            tasks = [asyncio.create_task(target.send(ITEM, r)) for r in recs]
            await asyncio.sleep(0.05)
            assert len(server.bodies) == 3  # all three reached the server before any reply
            gate.set()
            await asyncio.gather(*tasks)
            assert all(r.status == OK for r in recs)
            assert len(target._sessions) == 3
            assert len(set(server.peers)) == 3  # three requests in flight: three connections
            for i in range(3):  # sequential requests reuse an idle session and its connection
                rec = RequestRecord(index=10 + i, start=0.0)
                await target.send(ITEM, rec)
                assert rec.status == OK
            assert len(target._sessions) == 3 and len(set(server.peers)) == 3
            await target.prepare(5)  # before a level of 5: five connected sessions
            assert len(target._sessions) == 5 and len(target._idle) == 5
            assert len(set(server.peers)) == 5
            assert server.paths.count("/v1/models") == 1 + 5
        finally:
            await target.close()


async def test_no_unclosed_session_warnings() -> None:
    def unclosed(caught: list[warnings.WarningMessage]) -> list[str]:
        gc.collect()
        return [str(w.message) for w in caught if "Unclosed" in str(w.message)]

    async with serving(_sse(_chunk({"content": "x"}), DONE)) as server:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            target = OpenAITarget(server.url, RequestOptions(), TOKENIZER)
            await target.open(None)
            await target.prepare(3)
            await target.send(ITEM, RequestRecord(index=0, start=0.0))
            await target.close()
            # a failed model lookup: the caller never closes a target that did not open
            failed = OpenAITarget(server.url + "/nothing-here", RequestOptions(), TOKENIZER)
            with pytest.raises(UserError):
                await failed.open(None)
            del target, failed
            assert unclosed(caught) == []
            # the check itself sees a session that is dropped unclosed
            aiohttp.ClientSession()
            assert unclosed(caught) != []
