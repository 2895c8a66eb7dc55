"""The proxy in front of a real tritonserver (scripted engine), driven by the openai SDK and
raw HTTP. The scripted engine emits exactly the text in ``[reply]...[/reply]``."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from proxy_helpers import sse_events, wait_for_event

from trtllm_stack.tokenizer import load_tokenizer

pytestmark = pytest.mark.integration

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_REPLY = (
    "<think>\nhmm\n</think>\n\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    "<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n</tool_call>'
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def reply(text: str) -> list[dict[str, str]]:
    return user(f"[reply]{text}[/reply]")


@pytest.fixture(scope="module")
def client(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="sk-dummy", max_retries=0)


@pytest.fixture
def aclient(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.v1, api_key="sk-dummy", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(qwen3_tokenizer_dir):
    return load_tokenizer(qwen3_tokenizer_dir)


def prompt_tokens(tokenizer, messages, **kwargs) -> int:
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **kwargs
    )
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_models_and_health(proxy, client):
    assert [m.id for m in client.models.list().data] == ["qwen3"]
    assert httpx.get(proxy.base_url + "/health").json() == {"status": "ok"}
    assert httpx.get(proxy.base_url + "/health/ready").status_code == 200


def test_non_stream_exact_text_and_usage(client, tokenizer):
    messages = reply("Bonjour, monde !")
    out = client.chat.completions.create(model="qwen3", messages=messages)
    choice = out.choices[0]
    assert choice.message.content == "Bonjour, monde !"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    expected_out = len(tokenizer.encode("Bonjour, monde !", add_special_tokens=False))
    assert out.usage.completion_tokens == expected_out
    assert out.usage.prompt_tokens == prompt_tokens(tokenizer, messages)
    assert out.usage.total_tokens == out.usage.prompt_tokens + expected_out


def test_stream_role_first_content_exact_usage(client, tokenizer):
    text = "Streaming works, token by token."
    stream = client.chat.completions.create(
        model="qwen3",
        messages=reply(text),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(tokenizer.encode(text))


def test_stream_ends_at_max_tokens_with_length(proxy):
    # Default reply is 200 tokens; max_tokens cuts it. Raw HTTP to check the framing.
    body = {
        "model": "qwen3",
        "messages": user("hello"),
        "max_tokens": 7,
        "stream": True,
    }
    r = httpx.post(proxy.v1 + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.text.endswith("data: [DONE]\n\n")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert all(p["choices"][0]["finish_reason"] is None for p in parsed[:-1])


def test_non_stream_length_usage(client):
    out = client.chat.completions.create(model="qwen3", messages=user("hi"), max_tokens=5)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 5


def test_max_completion_tokens(client):
    out = client.chat.completions.create(
        model="qwen3", messages=user("hi"), max_completion_tokens=3
    )
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 3


def test_reasoning_split_non_stream_and_stream(client):
    messages = reply("<think>\nLet me think.\n</think>\n\nThe answer is 4.")
    out = client.chat.completions.create(model="qwen3", messages=messages)
    msg = out.choices[0].message
    assert msg.content == "The answer is 4."
    # Both names by default: reasoning_content (DeepSeek, OpenWebUI, litellm) and reasoning
    # (vLLM today).
    assert msg.model_extra["reasoning_content"] == "Let me think."
    assert msg.model_extra["reasoning"] == "Let me think."

    chunks = list(client.chat.completions.create(model="qwen3", messages=messages, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    for key in ("reasoning_content", "reasoning"):
        reasoning = "".join((d.model_extra or {}).get(key) or "" for d in deltas)
        assert (reasoning, content) == ("Let me think.", "The answer is 4.")


def test_thinking_disabled_keeps_text_as_content(client):
    out = client.chat.completions.create(
        model="qwen3",
        messages=reply("Plain answer."),
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    msg = out.choices[0].message
    assert msg.content == "Plain answer."
    assert (msg.model_extra or {}).get("reasoning_content") is None


def test_tool_calls_non_stream(client):
    out = client.chat.completions.create(
        model="qwen3", messages=reply(TOOL_REPLY), tools=[WEATHER_TOOL]
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert len({c.id for c in calls}) == 2
    assert not choice.message.content
    assert choice.message.model_extra["reasoning_content"] == "hmm"


async def test_tool_calls_stream_async(aclient):
    stream = await aclient.chat.completions.create(
        model="qwen3", messages=reply(TOOL_REPLY), tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": ""})
            if tc.id:
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                # The name comes first, before any argument fragment of that call.
                assert entry["arguments"] == ""
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
        finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_weather"]
    assert [json.loads(calls[i]["arguments"])["city"] for i in (0, 1)] == [
        "Paris",
        "Tokyo",
    ]
    assert all(calls[i]["id"] for i in (0, 1))


def collect_tool_calls(chunks) -> tuple[dict[int, list], str | None, str]:
    """Per call index, the tool-call delta entries in order; the finish reason; content."""
    calls: dict[int, list] = {}
    finish = None
    content = ""
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for tc in choice.delta.tool_calls or []:
            calls.setdefault(tc.index, []).append(tc)
        finish = choice.finish_reason or finish
    return calls, finish, content


LONG_TOOL_REPLY = (
    "<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "note": "a \\"quoted\\" }'
    ' brace and <b>tags</b> inside", "days": [1, 2, 3]}}\n</tool_call>\n'
    "<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "東京 😀"}}\n</tool_call>'
)


def test_tool_call_arguments_stream_in_fragments(triton_factory, proxy_factory, tokenizer):
    # A per-token delay so that tokens do not arrive together (one SSE chunk per token).
    slow = triton_factory(token_delay_ms=5)
    running = proxy_factory(triton_url=slow.endpoints.grpc_url)
    c = openai.OpenAI(base_url=running.v1, api_key="sk-dummy", max_retries=0)
    whole = c.chat.completions.create(
        model="qwen3", messages=reply(LONG_TOOL_REPLY), tools=[WEATHER_TOOL]
    )
    expected = [
        (t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls
    ]
    # The model's own arguments text, verbatim.
    assert [a for _, a in expected] == [
        '{"city": "Paris", "note": "a \\"quoted\\" } brace and <b>tags</b> inside",'
        ' "days": [1, 2, 3]}',
        '{"city": "東京 😀"}',
    ]

    stream = c.chat.completions.create(
        model="qwen3", messages=reply(LONG_TOOL_REPLY), tools=[WEATHER_TOOL], stream=True
    )
    calls, finish, content = collect_tool_calls(stream)
    assert finish == "tool_calls" and content == ""
    assert sorted(calls) == [0, 1]
    for i, (name, arguments) in enumerate(expected):
        first, *rest = calls[i]
        assert first.id and first.id.startswith("call_") and first.type == "function"
        assert first.function.name == name
        assert len(rest) > 1  # more than one arguments fragment after the name
        assert all(tc.id is None and tc.function.name is None for tc in rest)
        assert "".join(tc.function.arguments or "" for tc in calls[i]) == arguments
    assert calls[0][0].id != calls[1][0].id

    # Cut by max_tokens inside the first call's arguments: the call stays as streamed,
    # finish_reason is "length"; not streamed, the cut block is content.
    ids = tokenizer.encode(LONG_TOOL_REPLY, add_special_tokens=False)
    cut = next(n for n in range(len(ids)) if '"city": "Pa' in tokenizer.decode(ids[:n]))
    stream = c.chat.completions.create(
        model="qwen3",
        messages=reply(LONG_TOOL_REPLY),
        tools=[WEATHER_TOOL],
        stream=True,
        max_tokens=cut,
    )
    calls, finish, content = collect_tool_calls(stream)
    assert finish == "length" and content == ""
    assert list(calls) == [0] and calls[0][0].function.name == "get_weather"
    sent = "".join(tc.function.arguments or "" for tc in calls[0])
    assert expected[0][1].startswith(sent) and sent.startswith('{"city": "Pa')
    out = c.chat.completions.create(
        model="qwen3", messages=reply(LONG_TOOL_REPLY), tools=[WEATHER_TOOL], max_tokens=cut
    )
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.tool_calls is None
    assert out.choices[0].message.content == tokenizer.decode(ids[:cut])


def test_tool_call_streaming_buffered(triton, proxy_factory, tokenizer):
    running = proxy_factory(triton_url=triton.endpoints.grpc_url, tool_call_streaming="buffered")
    c = openai.OpenAI(base_url=running.v1, api_key="sk-dummy", max_retries=0)
    whole = c.chat.completions.create(
        model="qwen3", messages=reply(LONG_TOOL_REPLY), tools=[WEATHER_TOOL]
    )
    expected = [
        (t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls
    ]
    stream = c.chat.completions.create(
        model="qwen3", messages=reply(LONG_TOOL_REPLY), tools=[WEATHER_TOOL], stream=True
    )
    calls, finish, content = collect_tool_calls(stream)
    assert finish == "tool_calls" and content == ""
    # Each call in one delta: id, name and the whole arguments.
    assert [len(calls[i]) for i in sorted(calls)] == [1, 1]
    assert [(calls[i][0].function.name, calls[i][0].function.arguments) for i in (0, 1)] == (
        expected
    )
    assert all(calls[i][0].id for i in (0, 1))

    # A block cut off by max_tokens was never announced: it comes back as content.
    ids = tokenizer.encode(LONG_TOOL_REPLY, add_special_tokens=False)
    cut = next(n for n in range(len(ids)) if '"city": "Pa' in tokenizer.decode(ids[:n]))
    stream = c.chat.completions.create(
        model="qwen3",
        messages=reply(LONG_TOOL_REPLY),
        tools=[WEATHER_TOOL],
        stream=True,
        max_tokens=cut,
    )
    calls, finish, content = collect_tool_calls(stream)
    assert calls == {} and finish == "length"
    assert content == tokenizer.decode(ids[:cut])


def test_tool_choice_none_leaves_text_as_content(client):
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    out = client.chat.completions.create(
        model="qwen3", messages=reply(text), tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.tool_calls is None
    assert "get_weather" in out.choices[0].message.content


def test_broken_tool_call_comes_back_as_content(client):
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    out = client.chat.completions.create(model="qwen3", messages=reply(text), tools=[WEATHER_TOOL])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.tool_calls is None
    assert out.choices[0].message.content == text


def _stream_and_whole(client, text: str, **kwargs):
    """(streamed reasoning, content, calls, finish) and the non-streamed message/finish."""
    deltas = client.chat.completions.create(
        model="qwen3", messages=reply(text), stream=True, **kwargs
    )
    reasoning = content = ""
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in deltas:
        choice = chunk.choices[0]
        reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
        content += choice.delta.content or ""
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, ["", ""])
            entry[0] += tc.function.name or ""
            entry[1] += tc.function.arguments or ""
        finish = choice.finish_reason or finish
    whole = client.chat.completions.create(model="qwen3", messages=reply(text), **kwargs)
    return (reasoning, content, [tuple(calls[i]) for i in sorted(calls)], finish), whole.choices[0]


def test_tags_are_the_model_tokens_newline_before_think(client):
    # The scripted engine emits "<think>" as its token after a newline token.
    streamed, whole = _stream_and_whole(client, "\n<think>\nfirst a newline\n</think>\n\nthen this")
    assert streamed == ("first a newline", "then this", [], "stop")
    assert whole.message.model_extra["reasoning_content"] == "first a newline"
    assert whole.message.content == "then this"


def test_unbalanced_quote_does_not_swallow_the_next_call(client):
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}}\n</tool_call>'
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    streamed, whole = _stream_and_whole(client, broken + "\n" + good, tools=[WEATHER_TOOL])
    # The </tool_call> token ends the first block although its string never closed; the
    # second call is intact. The stream had sent the first call's name: it stays a call.
    assert streamed[2] == [
        ("get_weather", '{"city": "Pa}}\n'),
        ("get_weather", '{"city": "Rome"}'),
    ]
    assert streamed[3] == "tool_calls"
    # Not streamed, the broken block is validated whole first: content; the good one a call.
    assert [(t.function.name, t.function.arguments) for t in whole.message.tool_calls] == [
        ("get_weather", '{"city": "Rome"}')
    ]
    assert whole.message.content == broken
    assert whole.finish_reason == "tool_calls"


def test_missing_close_tag_between_two_calls_keeps_both(client):
    first = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
    second = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    streamed, whole = _stream_and_whole(client, first + second, tools=[WEATHER_TOOL])
    expected = [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Rome"}')]
    assert streamed[2] == expected and streamed[3] == "tool_calls"
    assert [(t.function.name, t.function.arguments) for t in whole.message.tool_calls] == expected
    assert not whole.message.content


def test_tool_result_round_trip(client):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "user", "content": "[reply]It is sunny in Paris.[/reply]"},
    ]
    out = client.chat.completions.create(model="qwen3", messages=messages, tools=[WEATHER_TOOL])
    assert out.choices[0].message.content == "It is sunny in Paris."


def test_stop_string_across_tokens_is_not_emitted(client, tokenizer):
    text = "The answer is 42. END_OF_ANSWER and then more words follow here."
    stop = "END_OF_ANSWER"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The stop string spans several tokens, so matching must work across boundaries.
    assert not any(stop in tokenizer.decode([i]) for i in ids)
    out = client.chat.completions.create(model="qwen3", messages=reply(text), stop=[stop])
    assert out.choices[0].message.content == "The answer is 42. "
    assert out.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(model="qwen3", messages=reply(text), stop=stop, stream=True)
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "The answer is 42. "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_emoji_and_cjk_split_across_tokens(client, tokenizer):
    text = "Party 🎉🦄 time! 你好，世界 👩‍👩‍👧"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # At least one character really is split over several tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    chunks = list(client.chat.completions.create(model="qwen3", messages=reply(text), stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_logprobs(client):
    out = client.chat.completions.create(
        model="qwen3", messages=reply("one two three"), logprobs=True
    )
    entries = out.choices[0].logprobs.content
    assert len(entries) == out.usage.completion_tokens
    assert "".join(e.token for e in entries) == "one two three"
    assert all(e.logprob < 0 for e in entries)


def test_text_completions(client):
    out = client.completions.create(model="qwen3", prompt="[reply]abc def[/reply]", max_tokens=4)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 4
    chunks = list(
        client.completions.create(
            model="qwen3",
            prompt="Say something",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6


def test_errors_are_openai_json(client, proxy):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-4", messages=user("hi"))
    assert not_found.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_n:
        client.chat.completions.create(model="qwen3", messages=user("hi"), n=17, stream=True)
    assert bad_n.value.body["param"] == "n"  # beyond max_n (16)
    with pytest.raises(openai.BadRequestError) as bad_fmt:
        client.chat.completions.create(
            model="qwen3", messages=user("hi"), response_format={"type": "xml"}
        )
    assert bad_fmt.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as bad_top:
        client.chat.completions.create(
            model="qwen3", messages=user("hi"), logprobs=True, top_logprobs=3
        )
    assert bad_top.value.body["param"] == "top_logprobs"
    r = httpx.post(proxy.v1 + "/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        proxy.v1 + "/chat/completions",
        json={"model": "qwen3", "messages": user("hi"), "temperature": 7},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_prompt_longer_than_engine_input(client):
    huge = "hello " * 17000  # the scripted repository accepts 16383 input tokens
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="qwen3", messages=user(huge), max_tokens=1)
    message = exc.value.body["message"]
    assert "16383" in message
    assert exc.value.body["code"] == "context_length_exceeded"


def test_metrics(proxy, client):
    client.chat.completions.create(model="qwen3", messages=reply("ok"))
    text = httpx.get(proxy.base_url + "/metrics").text
    assert 'trtllm_proxy_requests_total{endpoint="chat"}' in text
    assert "trtllm_proxy_time_to_first_token_seconds_bucket" in text
    assert "trtllm_proxy_requests_in_flight 0.0" in text


def test_cors_preflight(proxy):
    r = httpx.options(
        proxy.v1 + "/chat/completions",
        headers={
            "Origin": "http://localhost:8080",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "http://localhost:8080")
    assert "POST" in r.headers["access-control-allow-methods"]


def test_api_key_on(triton, proxy_factory):
    running = proxy_factory(triton_url=triton.endpoints.grpc_url, api_key="s3cret")
    wrong = openai.OpenAI(base_url=running.v1, api_key="sk-dummy", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="qwen3", messages=reply("x"))
    assert httpx.get(running.v1 + "/models").status_code == 401
    # Health stays open for probes.
    assert httpx.get(running.base_url + "/health").status_code == 200
    right = openai.OpenAI(base_url=running.v1, api_key="s3cret", max_retries=0)
    assert right.chat.completions.create(model="qwen3", messages=reply("x")).choices


def test_api_key_off_accepts_any_key(proxy):
    for key in ("sk-dummy", "anything"):
        c = openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)
        assert c.chat.completions.create(model="qwen3", messages=reply("y")).choices
    assert httpx.get(proxy.v1 + "/models").status_code == 200


def test_client_disconnect_cancels_triton_request(triton_factory, proxy_factory):
    slow = triton_factory(token_delay_ms=50, default_reply_tokens=400)
    running = proxy_factory(triton_url=slow.endpoints.grpc_url)
    body = {"model": "qwen3", "messages": user("tell me a long story"), "stream": True}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", running.v1 + "/chat/completions", json=body) as r,
    ):
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
    event = wait_for_event(
        slow.event_log,
        lambda e: e.get("event") == "request" and e.get("outcome") == "cancelled",
    )
    assert event["output_tokens"] < 400
    ctx = running.app.state.ctx
    wait_until(lambda: ctx.in_flight == 0)

    # A non-stream client that gives up is noticed too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            running.v1 + "/chat/completions",
            json={**body, "stream": False},
            timeout=1.0,
        )
    wait_for_event(
        slow.event_log,
        lambda e: e.get("event") == "request" and e.get("outcome") == "cancelled",
        count=2,
    )
    wait_until(lambda: ctx.in_flight == 0)


def test_backend_down_gives_503(proxy_factory):
    from trtllm_stack.triton.server import free_port

    running = proxy_factory(triton_url=f"127.0.0.1:{free_port()}")
    assert httpx.get(running.base_url + "/health/ready", timeout=10).status_code == 503
    c = openai.OpenAI(base_url=running.v1, api_key="x", max_retries=0, timeout=15)
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model="qwen3", messages=user("hi"), stream=True)
    assert exc.value.status_code == 503


def wait_until(predicate, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
