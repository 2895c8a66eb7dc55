"""``n`` > 1 with ``stream: true`` over the fake engine: one SSE stream whose chunks each
carry one choice (``index`` 0..n-1) with its own role chunk, deltas, tool calls, logprobs and
final chunk; one usage chunk summing the choices; a stop string ending one choice; an
engine failure or a client disconnect closing every engine request."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest

from trtllm_stack.triton.client import EngineError
from trtllm_stack.triton.tensors import EngineChunk

SEED = 40


def chat(**extra: object) -> dict:
    return {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], **extra}


def sse(text: str) -> list[dict]:
    data = [b[6:] for b in text.split("\n\n") if b.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def per_choice(engine, tokenizer, texts, *, delay=0.001, fail=None, started=None):
    """Choice i (seed SEED + i) replies ``texts[i]``, one token per chunk; ``fail`` =
    (i, k) makes choice i fail at its k-th token. Returns each choice's outcome."""
    outcomes: dict[int, str] = {}

    async def generate(req, request_id=None):
        i = req.seed - SEED
        if started is not None:
            started.append(i)
        ids = tokenizer.encode(texts[i], add_special_tokens=False)
        lp = req.return_log_probs
        outcome = "running"  # until the final chunk went out
        try:
            for k, tok in enumerate(ids, 1):
                await asyncio.sleep(delay)
                if fail == (i, k):
                    outcome = "failed"
                    raise EngineError("the engine broke")
                if k >= req.max_tokens:
                    outcome = "length"
                    yield EngineChunk([tok], [-0.25] if lp else None, True)
                    return
                yield EngineChunk([tok], [-0.25] if lp else None, False)
            outcome = "eos"
            yield EngineChunk([], [] if lp else None, True)
        except (asyncio.CancelledError, GeneratorExit):
            if outcome == "running":
                outcome = "cancelled"
            raise
        finally:
            outcomes[i] = outcome

    engine.generate = generate
    return outcomes


def by_choice(chunks: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for ch in chunks:
        if ch["choices"]:
            assert len(ch["choices"]) == 1  # one choice per chunk, as OpenAI and vLLM
            out[ch["choices"][0]["index"]].append(ch["choices"][0])
    return out


def ctx_of(client):
    return client._transport.app.state.ctx


async def test_chat_chunks_indices_finish_reasons_usage_logprobs(client, engine, tokenizer):
    texts = ["alpha beta", "gamma delta epsilon zeta eta theta", "iota"]
    outcomes = per_choice(engine, tokenizer, texts)
    body = chat(n=3, seed=SEED, max_tokens=4, logprobs=True)
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    r = await client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = sse(r.text)
    # The role chunks of all choices first, then deltas interleaved.
    assert [c["choices"][0]["index"] for c in chunks[:3]] == [0, 1, 2]
    assert all(c["choices"][0]["delta"] == {"role": "assistant", "content": ""} for c in chunks[:3])
    assert len({c["id"] for c in chunks}) == 1
    indices = [c["choices"][0]["index"] for c in chunks[3:] if c["choices"]]
    assert indices != sorted(indices)  # the choices really streamed side by side
    got = by_choice(chunks)
    assert sorted(got) == [0, 1, 2]
    for i, choices in got.items():
        finals = [c["finish_reason"] for c in choices]
        assert finals[-1] is not None and finals.count(None) == len(finals) - 1
        assert finals[-1] == whole["choices"][i]["finish_reason"]
        text = "".join(c["delta"].get("content") or "" for c in choices)
        assert text == whole["choices"][i]["message"]["content"]
        lps = [t for c in choices if c["logprobs"] for t in c["logprobs"]["content"]]
        assert lps == whole["choices"][i]["logprobs"]["content"]
    assert [whole["choices"][i]["finish_reason"] for i in range(3)] == ["stop", "length", "stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    n_tokens = [min(len(tokenizer.encode(t, add_special_tokens=False)), 4) for t in texts]
    assert usage["usage"]["completion_tokens"] == sum(n_tokens)
    assert all("usage" not in c for c in chunks[:-1])
    assert outcomes == {0: "eos", 1: "length", 2: "eos"}
    assert ctx_of(client).in_flight == 0


async def test_completions_stream_n_and_continuous_usage(client, engine, tokenizer):
    texts = ["one two three", "four", "five six"]
    per_choice(engine, tokenizer, texts)
    body = {"model": "qwen3", "prompt": "hi", "n": 3, "seed": SEED, "max_tokens": 10}
    whole = (await client.post("/v1/completions", json=body)).json()
    opts = {"include_usage": True, "continuous_usage_stats": True}
    r = await client.post("/v1/completions", json={**body, "stream": True, "stream_options": opts})
    chunks = sse(r.text)
    got = by_choice(chunks)
    for i in range(3):
        assert "".join(c["text"] for c in got[i]) == whole["choices"][i]["text"] == texts[i]
        assert got[i][-1]["finish_reason"] == "stop"
    # vLLM's continuous_usage_stats: each chunk carries its own choice's tokens so far.
    seen: dict[int, int] = defaultdict(int)
    for ch in chunks[:-1]:
        i = ch["choices"][0]["index"]
        tokens = ch["usage"]["completion_tokens"]
        assert tokens >= seen[i] and ch["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
        seen[i] = tokens
    n_tokens = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    assert [seen[i] for i in range(3)] == n_tokens
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == sum(n_tokens)
    assert chunks[-1]["usage"] == whole["usage"]


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def call(city: str) -> str:
    return (
        f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}\n</tool_call>'
    )


async def test_tool_calls_per_choice(client, engine, tokenizer):
    texts = [call("Paris") + "\n" + call("Rome"), "No tool needed.", call("Oslo")]
    per_choice(engine, tokenizer, texts)
    body = chat(n=3, seed=SEED, tools=[TOOL], stream=True)
    chunks = sse((await client.post("/v1/chat/completions", json=body)).text)
    got = by_choice(chunks)
    calls: dict[int, dict[int, str]] = {}
    for i, choices in got.items():
        args: dict[int, str] = defaultdict(str)
        for c in choices:
            for entry in c["delta"].get("tool_calls") or ():
                args[entry["index"]] += entry["function"].get("arguments", "")
        calls[i] = dict(args)
    # Tool-call indices count within each choice.
    assert {i: {k: json.loads(a) for k, a in v.items()} for i, v in calls.items()} == {
        0: {0: {"city": "Paris"}, 1: {"city": "Rome"}},
        1: {},
        2: {0: {"city": "Oslo"}},
    }
    assert [got[i][-1]["finish_reason"] for i in range(3)] == ["tool_calls", "stop", "tool_calls"]
    assert "".join(c["delta"].get("content") or "" for c in got[1]) == "No tool needed."


async def test_stop_string_ends_only_its_choice(client, engine, tokenizer):
    long = " ".join(f"w{k}" for k in range(40))
    texts = ["first END never sent " + long, long]
    outcomes = per_choice(engine, tokenizer, texts)
    body = chat(n=2, seed=SEED, stop=["END"], stream=True)
    chunks = sse((await client.post("/v1/chat/completions", json=body)).text)
    got = by_choice(chunks)
    assert "".join(c["delta"].get("content") or "" for c in got[0]) == "first "
    assert "".join(c["delta"].get("content") or "" for c in got[1]) == long
    assert [got[i][-1]["finish_reason"] for i in range(2)] == ["stop", "stop"]
    # Choice 0's engine request was cancelled at its stop string; choice 1 ran to its end,
    # and its chunks went on after choice 0's final chunk.
    assert outcomes == {0: "cancelled", 1: "eos"}
    end0 = next(k for k, c in enumerate(chunks) if c["choices"][0]["finish_reason"])
    assert any(c["choices"][0]["index"] == 1 for c in chunks[end0 + 1 :])
    assert ctx_of(client).in_flight == 0


async def test_engine_failure_on_one_choice_ends_the_stream_and_cancels_all(
    client, engine, tokenizer
):
    long = " ".join(f"w{k}" for k in range(60))
    outcomes = per_choice(engine, tokenizer, [long, long, long], fail=(1, 3))
    r = await client.post("/v1/chat/completions", json=chat(n=3, seed=SEED, stream=True))
    assert r.status_code == 200
    data = [b[6:] for b in r.text.split("\n\n") if b.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["type"] == "server_error"
    assert all("error" not in json.loads(d) for d in data[:-2])
    await asyncio.sleep(0.02)  # the cancelled generators finish their cleanup
    assert outcomes == {0: "cancelled", 1: "failed", 2: "cancelled"}
    assert ctx_of(client).in_flight == 0


async def test_client_disconnect_closes_every_engine_stream(client, engine, tokenizer):
    long = " ".join(f"w{k}" for k in range(200))
    started: list[int] = []
    outcomes = per_choice(engine, tokenizer, [long] * 3, delay=0.01, started=started)
    app = client._transport.app
    body = json.dumps(chat(n=3, seed=SEED, stream=True)).encode()
    sent: list[dict] = []
    gone = asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if sum(m["type"] == "http.response.body" for m in sent) >= 5:
            gone.set()  # the client goes away after a few chunks

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"localhost")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=20)
    await asyncio.sleep(0.05)  # the cancelled generators finish their cleanup
    assert sent[0]["status"] == 200
    assert sorted(started) == [0, 1, 2]
    assert outcomes == {0: "cancelled", 1: "cancelled", 2: "cancelled"}
    assert ctx_of(client).in_flight == 0


@pytest.mark.parametrize("n", [2, 4])
async def test_each_choice_has_its_seed(client, engine, tokenizer, n):
    started: list[int] = []
    per_choice(engine, tokenizer, ["x"] * n, started=started)
    r = await client.post("/v1/chat/completions", json=chat(n=n, seed=SEED, stream=True))
    assert sorted(started) == list(range(n))  # seed + i, as for the non-stream reply
    assert sorted(by_choice(sse(r.text))) == list(range(n))


async def test_backend_down_is_503_for_n_streams_too(client, engine):
    engine.available = False
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", json=chat(n=3, stream=stream))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "backend_unavailable"
    assert ctx_of(client).in_flight == 0


async def test_non_stream_failure_on_one_choice_cancels_the_others(client, engine, tokenizer):
    long = " ".join(f"w{k}" for k in range(60))
    outcomes = per_choice(engine, tokenizer, [long, long], fail=(0, 2))
    r = await client.post("/v1/chat/completions", json=chat(n=2, seed=SEED))
    assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"
    await asyncio.sleep(0.02)  # the cancelled generator finishes its cleanup
    assert outcomes == {0: "failed", 1: "cancelled"}
    assert ctx_of(client).in_flight == 0


async def test_reasoning_per_choice(client, engine, tokenizer):
    texts = ["<think>\nfirst thought\n</think>\n\nAnswer one.", "<think>\nother\n</think>\n\nTwo."]
    per_choice(engine, tokenizer, texts)
    body = chat(n=2, seed=SEED)
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    got = by_choice(
        sse((await client.post("/v1/chat/completions", json={**body, "stream": True})).text)
    )
    for i in range(2):
        message = whole["choices"][i]["message"]
        reasoning = "".join(c["delta"].get("reasoning_content") or "" for c in got[i])
        content = "".join(c["delta"].get("content") or "" for c in got[i])
        assert (reasoning, content) == (message["reasoning_content"], message["content"])
    assert [whole["choices"][i]["message"]["content"] for i in range(2)] == ["Answer one.", "Two."]
