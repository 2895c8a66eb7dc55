"""Overload and size limits against the real proxy and tritonserver: each refusal is an
OpenAI error with the status and the numbers involved."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from reliability_helpers import chat_body, in_flight, parse_sse, wait_until

from trtllm_stack.triton.client import EngineClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limited(triton, qwen3_tokenizer_dir):
    from proxy_helpers import start_proxy

    running = start_proxy(
        qwen3_tokenizer_dir,
        triton_url=triton.endpoints.grpc_url,
        max_in_flight=2,
        max_messages=4,
        max_body_bytes=1024 * 1024,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def engine_limits(triton):
    async def read():
        client = EngineClient(triton.endpoints.grpc_url)
        try:
            return await client.limits()
        finally:
            await client.close()

    return asyncio.run(read())


def test_max_in_flight_gives_429_with_retry_after(limited):
    async def scenario():
        async with httpx.AsyncClient(base_url=limited.base_url, timeout=60) as client:
            held = []
            for i in range(2):
                cm = client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json=chat_body(f"[delay_ms=50] hold {i}", max_tokens=40),
                )
                resp = await cm.__aenter__()
                assert resp.status_code == 200
                held.append((cm, resp))
            refused = await client.post("/v1/chat/completions", json=chat_body("one more"))
            refused_text = await client.post(
                "/v1/completions",
                json={"model": "qwen3", "prompt": "x", "max_tokens": 2},
            )
            bodies = []
            for cm, resp in held:
                bodies.append((await resp.aread()).decode())
                await cm.__aexit__(None, None, None)
            after = await client.post(
                "/v1/chat/completions",
                json=chat_body("[reply]ok[/reply]", stream=False),
            )
            return refused, refused_text, bodies, after

    refused, refused_text, bodies, after = asyncio.run(scenario())
    for r in (refused, refused_text):
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error"
        assert "limit of 2 requests in flight" in err["message"]
    for raw in bodies:  # the admitted streams were not disturbed
        assert parse_sse(raw)[-1] == "[DONE]"
    assert after.status_code == 200
    wait_until(lambda: in_flight(limited) == 0, what="in-flight 0")


def test_body_too_large_413_with_numbers(limited):
    big = chat_body("x" * (1024 * 1024 + 10))
    r = httpx.post(limited.v1 + "/chat/completions", json=big, timeout=30)
    assert r.status_code == 413
    msg = r.json()["error"]["message"]
    assert "1048576" in msg and str(len(httpx.Request("POST", "/", json=big).content)) in msg

    # Without Content-Length (chunked upload) the limit holds while reading.
    def chunks():
        yield b'{"model": "qwen3", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 16384
        yield b'"}]}'

    r = httpx.post(
        limited.v1 + "/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    assert "1048576" in r.json()["error"]["message"]


def test_too_many_messages_400_with_numbers(limited):
    messages = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    r = httpx.post(limited.v1 + "/chat/completions", json={"model": "qwen3", "messages": messages})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "messages"
    assert "5 messages" in err["message"] and "at most 4" in err["message"]


def test_max_tokens_beyond_context_400_with_numbers(limited, engine_limits):
    seq = engine_limits.max_seq_len
    r = httpx.post(
        limited.v1 + "/chat/completions",
        json=chat_body("hi", stream=False, max_tokens=seq),
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert err["param"] == "max_completion_tokens"
    assert str(seq) in err["message"] and "ask for at most" in err["message"]
    for bad in (-1, 0, 2**31, 10**30):
        r = httpx.post(
            limited.v1 + "/chat/completions",
            json=chat_body("hi", stream=False, max_tokens=bad),
        )
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == "max_tokens"


def test_prompt_longer_than_engine_input_400_with_both_numbers(limited, engine_limits):
    max_input = engine_limits.max_input_len
    assert max_input is not None
    text = "hello " * (max_input + 100)
    r = httpx.post(limited.v1 + "/chat/completions", json=chat_body(text), timeout=60)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert f"at most {max_input} input tokens" in err["message"]
    n_prompt = int(err["message"].split("the prompt has ")[1].split()[0])
    assert n_prompt > max_input
