"""The OpenAI target against an in-process mock server (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from trtllm_stack.bench.metrics import ERROR, OK, RequestRecord
from trtllm_stack.bench.targets import OpenAITarget, RequestOptions, parse_target
from trtllm_stack.bench.workload import WorkItem
from trtllm_stack.errors import UserError
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

ITEM = WorkItem(prompt="Say hi", prompt_ids=(1, 2, 3, 4), max_tokens=3, exact_output=True)


def _chunk(delta: dict[str, Any] | None = None, usage: dict[str, int] | None = None) -> bytes:
    obj: dict[str, Any] = {"choices": [{"index": 0, "delta": delta}] if delta is not None else []}
    if usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _transport(
    handler: Callable[[httpx.Request, list[dict[str, Any]]], httpx.Response],
) -> tuple[httpx.MockTransport, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "qwen3"}]})
        seen.append(json.loads(request.content))
        return handler(request, seen)

    return httpx.MockTransport(handle), seen


def _sse(parts: list[bytes]) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


async def _send(transport: httpx.MockTransport, **opts: Any) -> RequestRecord:
    target = OpenAITarget(
        "http://127.0.0.1:9",
        RequestOptions(**opts),
        load_tokenizer(bundled_qwen3_tokenizer_dir()),
        transport=transport,
    )
    await target.open(4)
    rec = RequestRecord(index=0, start=0.0)
    try:
        await target.send(ITEM, rec)
        target.finalize([rec])
    finally:
        await target.close()
    return rec


async def test_stream_with_usage() -> None:
    transport, seen = _transport(
        lambda r, s: _sse(
            [
                _chunk({"role": "assistant", "content": ""}),  # role only: not a token
                _chunk({"content": "Hel"}),
                _chunk({"reasoning_content": "lo"})
                + _chunk({"content": " there"}),  # two events in one read
                _chunk(
                    usage={
                        "prompt_tokens": 11,
                        "completion_tokens": 3,
                        "total_tokens": 14,
                    }
                ),
                b"data: [DONE]\n\n",
            ]
        )
    )
    rec = await _send(transport)
    assert rec.status == OK, rec.error
    assert (rec.tokens_in, rec.tokens_out, rec.chunks) == (11, 3, 3)
    assert len(rec.itl) == 2
    assert rec.ttft is not None and rec.e2e is not None and 0 <= rec.ttft <= rec.e2e
    body = seen[0]
    assert body["model"] == "qwen3" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert body["max_tokens"] == 3 and body["min_tokens"] == 3 and body["ignore_eos"] is True


async def test_stream_without_usage_counts_tokens_from_text() -> None:
    text = "The quick brown fox"
    tok = load_tokenizer(bundled_qwen3_tokenizer_dir())
    pieces = [text[:5], text[5:12], text[12:]]
    transport, seen = _transport(
        lambda r, s: _sse([_chunk({"content": p}) for p in pieces] + [b"data: [DONE]\n\n"])
    )
    rec = await _send(transport, ignore_eos=False, extra_body={"top_k": 5}, model="m")
    assert rec.status == OK
    assert rec.tokens_out == len(tok.encode(text, add_special_tokens=False))
    assert rec.tokens_in == len(ITEM.prompt_ids)  # no usage: the ids we would have sent
    assert rec.chunks == 3
    assert "min_tokens" not in seen[0] and seen[0]["top_k"] == 5 and seen[0]["model"] == "m"


async def test_completions_endpoint() -> None:
    def handler(request: httpx.Request, seen: list[dict[str, Any]]) -> httpx.Response:
        assert request.url.path == "/v1/completions"
        return _sse(
            [
                b'data: {"choices":[{"text":"a"}]}\n\n',
                b'data: {"choices":[{"text":"b"}]}\n\n',
                b"data: [DONE]\n\n",
            ]
        )

    transport, seen = _transport(handler)
    rec = await _send(transport, endpoint="completions")
    assert rec.status == OK and rec.chunks == 2
    assert seen[0]["prompt"] == "Say hi"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(
                400,
                json={
                    "error": {
                        "message": "max_tokens too big",
                        "type": "invalid_request_error",
                    }
                },
            ),
            "HTTP 400: max_tokens too big",
        ),
        (httpx.Response(503, text="down"), "HTTP 503: down"),
    ],
)
async def test_http_errors_keep_the_reason(response: httpx.Response, reason: str) -> None:
    transport, _ = _transport(lambda r, s: response)
    rec = await _send(transport)
    assert (rec.status, rec.error) == (ERROR, reason)


async def test_stream_without_done_is_an_error() -> None:
    transport, _ = _transport(lambda r, s: _sse([_chunk({"content": "x"})]))
    rec = await _send(transport)
    assert rec.status == ERROR and "[DONE]" in (rec.error or "")
    assert rec.chunks == 1  # what arrived is still recorded


async def test_error_event_in_stream() -> None:
    transport, _ = _transport(
        lambda r, s: _sse(
            [
                _chunk({"content": "x"}),
                b'data: {"error": {"message": "backend timed out"}}\n\n',
                b"data: [DONE]\n\n",
            ]
        )
    )
    rec = await _send(transport)
    assert rec.status == ERROR and rec.error == "stream error: backend timed out"


async def test_malformed_data() -> None:
    transport, _ = _transport(lambda r, s: _sse([b"data: {not json\n\n"]))
    rec = await _send(transport)
    assert rec.status == ERROR and rec.error == "malformed SSE data"


async def test_connection_refused_is_recorded() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    rec = await _send(httpx.MockTransport(refuse), model="m")
    assert (rec.status, rec.error) == (ERROR, "cannot connect")


async def test_model_lookup_failure_is_a_user_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UserError, match="cannot list models"):
        await _send(httpx.MockTransport(refuse))


def test_parse_target() -> None:
    assert parse_target("http://127.0.0.1:9000")[0] == "openai"
    assert parse_target("triton-grpc://localhost:8001")[0] == "triton-grpc"
    for bad in ("ftp://x", "localhost:9000", "triton-grpc://host", "http://"):
        with pytest.raises(UserError):
            parse_target(bad)


async def test_one_connection_per_concurrent_request_and_reuse() -> None:
    import asyncio

    gate = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        await gate.wait()
        yield _chunk({"content": "x"})
        yield b"data: [DONE]\n\n"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(200, content=slow_body())

    tok = load_tokenizer(bundled_qwen3_tokenizer_dir())
    target = OpenAITarget(
        "http://127.0.0.1:9", RequestOptions(), tok, transport=httpx.MockTransport(handle)
    )
    await target.open(None)
    try:
        recs = [RequestRecord(index=i, start=0.0) for i in range(3)]
        tasks = [asyncio.create_task(target.send(ITEM, r)) for r in recs]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks)
        assert all(r.status == OK for r in recs)
        assert len(target._clients) == 3  # three requests in flight at once
        for i in range(3):  # sequential requests reuse an idle client
            await target.send(ITEM, RequestRecord(index=10 + i, start=0.0))
        assert len(target._clients) == 3
        await target.prepare(5)  # before a level of 5: five ready clients
        assert len(target._clients) == 5 and len(target._idle) == 5
    finally:
        await target.close()
