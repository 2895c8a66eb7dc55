"""The proxy app over a fake engine (in process): request mapping, limits, errors, streams."""

from __future__ import annotations

import asyncio
import json

import pytest

from trtllm_stack.proxy.engine import EngineSilent, TokenPump
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.triton.tensors import EngineChunk


def chat(content: str = "hi", **extra):
    return {
        "model": "qwen3",
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def events(text: str) -> list[str]:
    return [b[6:] for b in text.split("\n\n") if b.startswith("data: ")]


async def test_sampling_params_reach_the_engine(client, engine):
    body = chat(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=1.1,
        max_tokens=3,
    )
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    req = engine.requests[-1]
    assert (req.temperature, req.top_p, req.top_k, req.seed) == (0.7, 0.9, 40, 7)
    assert (req.presence_penalty, req.frequency_penalty, req.repetition_penalty) == (
        0.5,
        0.25,
        1.1,
    )
    assert req.max_tokens == 3
    assert req.streaming is True


async def test_temperature_zero_is_greedy_top_k_1(client, engine):
    await client.post("/v1/chat/completions", json=chat(temperature=0))
    req = engine.requests[-1]
    assert req.temperature is None and req.top_k == 1


async def test_default_max_tokens_is_rest_of_context(client, engine, tokenizer):
    await client.post("/v1/chat/completions", json=chat())
    req = engine.requests[-1]
    assert req.max_tokens == engine.max_seq_len - len(req.prompt_ids)


async def test_max_tokens_beyond_context_is_400_with_numbers(client, engine):
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=9000))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "max_completion_tokens"
    assert str(engine.max_seq_len) in err["message"]


async def test_enable_thinking_false_reaches_the_template(client, engine, tokenizer):
    await client.post(
        "/v1/chat/completions",
        json=chat(chat_template_kwargs={"enable_thinking": False}),
    )
    prompt = tokenizer.decode(engine.requests[-1].prompt_ids)
    assert prompt.endswith("<think>\n\n</think>\n\n")


async def test_tool_choice_variants(client, engine, tokenizer):
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object"}},
    }
    other = {
        "type": "function",
        "function": {"name": "g", "parameters": {"type": "object"}},
    }
    r = await client.post(
        "/v1/chat/completions",
        json=chat(tools=[tool], tool_choice={"type": "function", "function": {"name": "x"}}),
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    await client.post("/v1/chat/completions", json=chat(tools=[tool, other], tool_choice="none"))
    assert "<tools>" not in tokenizer.decode(engine.requests[-1].prompt_ids)
    await client.post(
        "/v1/chat/completions",
        json=chat(
            tools=[tool, other],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
    )
    prompt = tokenizer.decode(engine.requests[-1].prompt_ids)
    assert '"name": "g"' in prompt and '"name": "f"' not in prompt
    assert "`g`" in prompt
    await client.post("/v1/chat/completions", json=chat(tools=[tool], tool_choice="required"))
    assert "must call at least one" in tokenizer.decode(engine.requests[-1].prompt_ids)


async def test_validation_errors_name_the_field(client):
    r = await client.post("/v1/chat/completions", json={"model": "qwen3"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "qwen3",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "x"}}],
                }
            ],
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[0].content[0]"
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=-1))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "qwen3", "messages": [{"role": "wizard"}]},
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages[0]")


async def test_unknown_fields_are_tolerated(client):
    r = await client.post("/v1/chat/completions", json=chat(user="u1", store=False, metadata={}))
    assert r.status_code == 200


async def test_unknown_route_is_json_404(client):
    r = await client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_api_key_constant_time_bearer(make_client):
    c = make_client(api_key="k1")
    assert (await c.get("/v1/models")).status_code == 401
    assert (await c.get("/v1/models", headers={"Authorization": "Bearer k2"})).status_code == 401
    assert (await c.get("/v1/models", headers={"Authorization": "Bearer k1"})).status_code == 200
    assert (await c.get("/health")).status_code == 200


async def test_body_limit_is_413(make_client):
    c = make_client(max_body_bytes=1024)
    r = await c.post("/v1/chat/completions", json=chat("x" * 4000))
    assert r.status_code == 413
    assert "1024" in r.json()["error"]["message"]


async def test_in_flight_limit_is_429_with_retry_after(make_client):
    c = make_client(max_in_flight=1)
    ctx = c._transport.app.state.ctx  # type: ignore[attr-defined]
    lease = ctx.admit()
    try:
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
    finally:
        lease.release()
    assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
    assert ctx.in_flight == 0


async def test_backend_unavailable_is_503(client, engine):
    engine.available = False
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", json=chat(stream=stream))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "backend_unavailable"
    engine.ready = False
    assert (await client.get("/health/ready")).status_code == 503


async def test_silent_backend_ends_stream_with_error_then_done(make_client, engine):
    engine.reply = "one two three four"
    engine.delay = 0.3
    c = make_client(backend_timeout=0.1)
    r = await c.post("/v1/chat/completions", json=chat(stream=True))
    # The first token itself timed out: a proper status before any stream started.
    assert r.status_code == 504
    engine.delay = 0.0

    async def stalls_after_first(req, request_id=None):
        yield EngineChunk([9707], None, False)
        await asyncio.sleep(5)
        yield EngineChunk([], None, True)

    engine.generate = stalls_after_first  # type: ignore[method-assign]
    r = await c.post("/v1/chat/completions", json=chat(stream=True))
    assert r.status_code == 200
    evs = events(r.text)
    assert evs[-1] == "[DONE]"
    assert json.loads(evs[-2])["error"]["code"] == "backend_timeout"
    assert c._transport.app.state.ctx.in_flight == 0  # type: ignore[attr-defined]


async def test_stream_chunks_are_valid_and_final_once(client, engine):
    engine.reply = "a b c d e f"
    r = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=4))
    evs = events(r.text)
    assert evs[-1] == "[DONE]"
    parsed = [json.loads(e) for e in evs[:-1]]
    assert [p["choices"][0]["finish_reason"] for p in parsed].count("length") == 1
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert len({p["id"] for p in parsed}) == 1


async def test_completions_prompt_forms(client, engine, tokenizer):
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    for prompt in ("hello world", ["hello world"], ids, [ids]):
        r = await client.post("/v1/completions", json={"model": "qwen3", "prompt": prompt})
        assert r.status_code == 200, r.text
        assert list(engine.requests[-1].prompt_ids) == ids
    r = await client.post("/v1/completions", json={"model": "qwen3", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = await client.post("/v1/completions", json={"model": "qwen3", "prompt": [10**9]})
    assert r.status_code == 400
    r = await client.post("/v1/completions", json={"model": "qwen3", "prompt": "x", "echo": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"


async def test_completions_default_max_tokens_is_16(client, engine):
    engine.reply = " ".join(["word"] * 40)
    r = await client.post("/v1/completions", json={"model": "qwen3", "prompt": "x"})
    assert r.json()["usage"]["completion_tokens"] == 16
    assert r.json()["choices"][0]["finish_reason"] == "length"


async def test_token_pump_hands_over_what_arrived_together():
    async def burst():
        for i in range(5):
            yield EngineChunk([i], None, i == 4)

    pump = TokenPump(burst(), timeout=5)
    await asyncio.sleep(0)  # let the reader run
    await asyncio.sleep(0)
    batch = await pump.next_batch()
    assert batch is not None and [c.token_ids[0] for c in batch] == [0, 1, 2, 3, 4]
    assert await pump.next_batch() is None
    pump.close()


async def test_token_pump_timeout_and_close_cancels():
    closed = asyncio.Event()

    async def silent():
        try:
            yield EngineChunk([1], None, False)
            await asyncio.sleep(10)
            yield EngineChunk([], None, True)
        finally:
            closed.set()

    pump = TokenPump(silent(), timeout=0.05)
    assert (await pump.next_batch()) is not None
    with pytest.raises(EngineSilent):
        await pump.next_batch()
    await asyncio.wait_for(closed.wait(), 2)
    pump.close()


def test_text_pipeline_stop_reasoning_tools(tokenizer):
    text = (
        "<think>\nplan\n</think>\n\nSure.<tool_call>\n"
        '{"name": "f", "arguments": {"a": 1}}\n</tool_call>STOPHERE trailing'
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    p = TextPipeline(tokenizer, stops=["STOPHERE"], reasoning=True, tool_names=["f"])
    reasoning, content, calls = "", "", []
    for i in ids:
        r, c, d = p.push([i])
        reasoning, content, calls = reasoning + r, content + c, calls + d
        if p.stopped:
            break
    r, c, d = p.finish()
    reasoning, content, calls = reasoning + r, content + c, calls + d
    assert p.stopped and p.called_tools
    assert reasoning == "plan"
    assert content == "Sure."
    assert calls[0].name == "f"
    assert json.loads("".join(d.arguments or "" for d in calls)) == {"a": 1}


@pytest.mark.parametrize(
    "raw,param,fragment",
    [
        (b'{"model": "qwen3", "messages": [', None, "not valid JSON: EOF while parsing"),
        (b'{"model": "q\\udfff", "messages": []}', None, "lone leading surrogate"),
        (
            b'{"model": "qwen3", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages[0]",
            "messages[0]",
        ),
        (b'{"model": "qwen3", "messages": [], "max_tokens": "many"}', "max_tokens", "integer"),
        (b"", None, "not valid JSON"),
    ],
)
async def test_body_errors_name_the_problem(client, raw, param, fragment):
    r = await client.post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert fragment in err["message"]
    assert (err["param"] or "").startswith(param or "")


async def test_body_schema_stays_in_openapi(client):
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    name = ref.removeprefix("#/components/schemas/")
    assert "messages" in spec["components"]["schemas"][name]["properties"]
