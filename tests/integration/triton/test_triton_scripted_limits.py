"""The scripted engine enforces what TensorRT-LLM's executor enforces, behind a real
tritonserver: batch slots with queueing, the max input length (the backend's own error text)
and prompt + max tokens shortened to max_seq_len."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton.backend_errors import parse_engine_limit_error
from trtllm_stack.triton.client import EngineClient, EngineError
from trtllm_stack.triton.model_repo import (
    RepoOptions,
    ScriptedEngineOptions,
    write_model_repository,
)
from trtllm_stack.triton.server import TritonServer
from trtllm_stack.triton.tensors import EngineRequest

pytestmark = pytest.mark.integration

EOS, PAD = 151645, 151643
MAX_INPUT, MAX_SEQ, SLOTS = 60, 100, 2


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_qwen3_tokenizer_dir())


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("limits")
    log = base / "events.jsonl"
    repo = write_model_repository(
        base / "repo",
        engine="scripted",
        tokenizer_dir=bundled_qwen3_tokenizer_dir(),
        scripted=ScriptedEngineOptions(token_delay_ms=20, event_log=log, batch_slots=SLOTS),
        options=RepoOptions(max_input_len=MAX_INPUT, max_seq_len=MAX_SEQ),
    )
    server = TritonServer(repo, log_path=base / "tritonserver.log")
    endpoints = server.start()
    try:
        yield endpoints.grpc_url, log
    finally:
        server.stop()


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def records(log: Path, wait_for: tuple[str, ...] = ()) -> list[dict]:
    """The request records; waits (bounded) for those of ``wait_for``: the engine writes a
    record just after the final response, so the client can see the response first."""
    deadline = time.monotonic() + 10.0
    while True:
        found = [
            e
            for e in (json.loads(line) for line in log.read_text().splitlines())
            if e["event"] == "request"
        ]
        if {e["request_id"] for e in found} >= set(wait_for) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def collect(client: EngineClient, req: EngineRequest, request_id: str):
    return [c async for c in client.generate(req, request_id=request_id)]


async def test_more_requests_than_slots_queue_and_all_complete(small_engine, tok):
    url, log = small_engine
    client = EngineClient(url)
    n = 5
    results = await asyncio.gather(
        *(
            collect(client, EngineRequest(ids(tok, f"queue {i}"), 8, EOS, PAD), f"q{i}")
            for i in range(n)
        )
    )
    await client.close()
    assert all(len(chunks) == 8 and chunks[-1].final for chunks in results)
    done = {
        e["request_id"]: e
        for e in records(log, tuple(f"q{i}" for i in range(n)))
        if e["request_id"].startswith("q")
    }
    assert len(done) == n
    waits = sorted(e["queued_ms"] for e in done.values())
    # Two run at once; the others waited for a slot (8 tokens x 20 ms = 160 ms a request).
    assert waits[:SLOTS] == pytest.approx([0, 0], abs=60)
    assert all(w >= 100 for w in waits[SLOTS:])


async def test_prompt_over_max_input_len_gets_the_backends_error(small_engine, tok):
    url, _ = small_engine
    client = EngineClient(url)
    prompt = ids(tok, "word " * 80)[: MAX_INPUT + 5]
    with pytest.raises(EngineError) as err:
        await collect(client, EngineRequest(prompt, 4, EOS, PAD), "too-long")
    await client.close()
    text = str(err.value)
    assert "Executor failed process requestId " in text
    assert (
        "due to the following error: Encountered an error when fetching new request: Prompt"
        f" length ({MAX_INPUT + 5}) exceeds maximum input length ({MAX_INPUT}). Set log level to"
        " info and check TRTGptModel logs for how maximum input length is set" in text
    )
    limit = parse_engine_limit_error(text)
    assert limit is not None and (limit.prompt_len, limit.max_input_len) == (65, 60)


async def test_prompt_plus_max_tokens_over_max_seq_len_is_shortened(small_engine, tok):
    url, log = small_engine
    client = EngineClient(url)
    prompt = ids(tok, "word " * 80)[:50]
    chunks = await collect(client, EngineRequest(prompt, 500, EOS, PAD), "shortened")
    await client.close()
    # LlmRequest::validate: requested output changed to max_seq_len - prompt, no error.
    assert sum(len(c.token_ids) for c in chunks) == MAX_SEQ - 50
    rec = next(e for e in records(log, ("shortened",)) if e["request_id"] == "shortened")
    assert rec["outcome"] == "length" and rec["max_tokens"] == MAX_SEQ - 50


async def test_request_cancelled_while_queued_never_generates(small_engine, tok):
    url, log = small_engine
    client = EngineClient(url)
    busy = [
        asyncio.ensure_future(
            collect(client, EngineRequest(ids(tok, f"busy {i}"), 15, EOS, PAD), f"busy{i}")
        )
        for i in range(SLOTS)
    ]
    await asyncio.sleep(0.1)
    gen = client.generate(EngineRequest(ids(tok, "waiting"), 15, EOS, PAD), request_id="gone")
    waiter = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.1)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await gen.aclose()
    await asyncio.gather(*busy)
    await client.close()
    for _ in range(50):
        gone = [e for e in records(log) if e["request_id"] == "gone"]
        if gone:
            break
        await asyncio.sleep(0.1)
    assert gone and gone[0]["outcome"] == "cancelled" and gone[0]["output_tokens"] == 0
