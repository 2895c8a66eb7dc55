"""The scripted engine behind a real tritonserver, over gRPC (our EngineClient, built on
tritonclient's protobufs) and over Triton's HTTP generate endpoints (ensemble)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from trtllm_stack.tokenizer import load_tokenizer
from trtllm_stack.triton.client import EngineClient
from trtllm_stack.triton.tensors import EngineRequest

pytestmark = pytest.mark.integration

EOS, PAD = 151645, 151643


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer_dir):
    return load_tokenizer(qwen3_tokenizer_dir)


def prompt_ids(tok, user: str) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return tok.encode(text, add_special_tokens=False)


def events(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def collect(client: EngineClient, req: EngineRequest):
    return [chunk async for chunk in client.generate(req)]


async def test_streams_one_token_per_response_and_ends_at_eos(triton, tok):
    reply = "Hello 👋 world, 日本語!"
    client = EngineClient(triton.endpoints.grpc_url)
    chunks = await collect(
        client, EngineRequest(prompt_ids(tok, f"[reply]{reply}[/reply]"), 64, EOS, PAD)
    )
    await client.close()
    expected = tok.encode(reply, add_special_tokens=False)
    assert [c.token_ids for c in chunks[:-1]] == [[t] for t in expected]
    # EOS: the real backend ends the stream with an empty final response.
    assert chunks[-1].token_ids == [] and chunks[-1].final
    assert not any(c.final for c in chunks[:-1])


async def test_final_flag_on_last_token_at_max_tokens(triton, tok):
    client = EngineClient(triton.endpoints.grpc_url)
    chunks = await collect(client, EngineRequest(prompt_ids(tok, "tell me"), 5, EOS, PAD))
    await client.close()
    assert len(chunks) == 5
    assert all(len(c.token_ids) == 1 for c in chunks)
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])


async def test_stop_word_ends_generation(triton, tok):
    reply = "one two three four five"
    stop = tok.encode(" three", add_special_tokens=False)
    client = EngineClient(triton.endpoints.grpc_url)
    req = EngineRequest(
        prompt_ids(tok, f"[reply]{reply}[/reply]"),
        64,
        EOS,
        PAD,
        stop_token_sequences=[stop],
    )
    chunks = await collect(client, req)
    await client.close()
    text = tok.decode([t for c in chunks for t in c.token_ids])
    assert text == "one two three"
    assert chunks[-1].final


async def test_non_streaming_and_exclude_input_in_output(triton, tok):
    ids = prompt_ids(tok, "[reply]short answer[/reply]")
    client = EngineClient(triton.endpoints.grpc_url)
    only_new = await collect(client, EngineRequest(ids, 64, EOS, PAD, streaming=False))
    with_input = await collect(
        client,
        EngineRequest(ids, 64, EOS, PAD, streaming=False, exclude_input_in_output=False),
    )
    await client.close()
    assert len(only_new) == 1 and only_new[0].final
    assert tok.decode(only_new[0].token_ids) == "short answer"
    assert with_input[0].token_ids == ids + only_new[0].token_ids


async def test_log_probs_returned_when_asked(triton, tok):
    client = EngineClient(triton.endpoints.grpc_url)
    chunks = await collect(
        client,
        EngineRequest(prompt_ids(tok, "[reply]a b c[/reply]"), 8, EOS, PAD, return_log_probs=True),
    )
    await client.close()
    token_chunks = [c for c in chunks if c.token_ids]
    assert all(c.log_probs is not None and len(c.log_probs) == 1 for c in token_chunks)
    assert all(lp[0] < 0 for c in token_chunks if (lp := c.log_probs))


async def test_64_concurrent_streams_all_complete(triton, tok):
    client = EngineClient(triton.endpoints.grpc_url)
    reqs = [
        EngineRequest(prompt_ids(tok, f"[reply]stream number {i} done[/reply]"), 32, EOS, PAD)
        for i in range(64)
    ]
    results = await asyncio.gather(*(collect(client, r) for r in reqs))
    await client.close()
    for i, chunks in enumerate(results):
        assert chunks[-1].final
        assert tok.decode([t for c in chunks for t in c.token_ids]) == f"stream number {i} done"


async def test_cancelled_stream_is_seen_by_the_engine(triton_factory, tok):
    running = triton_factory(token_delay_ms=50)
    client = EngineClient(running.endpoints.grpc_url)
    gen = client.generate(
        EngineRequest(prompt_ids(tok, "long answer please"), 200, EOS, PAD),
        request_id="cancel-me",
    )
    got = [await gen.__anext__() for _ in range(3)]
    await gen.aclose()
    await client.close()
    assert all(len(c.token_ids) == 1 for c in got)
    for _ in range(50):
        done = [e for e in events(running.event_log) if e.get("request_id") == "cancel-me"]
        if done:
            break
        await asyncio.sleep(0.1)
    assert done and done[0]["outcome"] == "cancelled"
    # Stopped within a token or two of the cancellation, far from the 200 asked for.
    assert done[0]["output_tokens"] <= 6


def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def test_ensemble_generate_text_in_text_out(triton):
    prompt = "<|im_start|>user\n[reply]Grüße aus 日本 🎉[/reply]<|im_end|>\n<|im_start|>assistant\n"
    out = json.loads(
        _post(
            f"{triton.endpoints.http_url}/v2/models/ensemble/generate",
            {"text_input": prompt, "max_tokens": 32},
        )
    )
    assert out["text_output"] == "Grüße aus 日本 🎉"


def test_ensemble_generate_stream_is_utf8_safe(triton):
    prompt = (
        "<|im_start|>user\n[reply]emoji 🎉🧪 and 中文[/reply]<|im_end|>\n<|im_start|>assistant\n"
    )
    raw = _post(
        f"{triton.endpoints.http_url}/v2/models/ensemble/generate_stream",
        {"id": "utf8-stream", "text_input": prompt, "max_tokens": 32, "stream": True},
    ).decode()
    pieces = [
        json.loads(line[5:])["text_output"] for line in raw.splitlines() if line.startswith("data:")
    ]
    assert len(pieces) > 3  # really streamed
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "emoji 🎉🧪 and 中文"


def test_ensemble_generate_stream_stops_at_max_tokens(triton):
    raw = _post(
        f"{triton.endpoints.http_url}/v2/models/ensemble/generate_stream",
        {
            "id": "max",
            "text_input": "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
            "max_tokens": 4,
            "stream": True,
        },
    ).decode()
    assert sum(1 for line in raw.splitlines() if line.startswith("data:")) == 4
