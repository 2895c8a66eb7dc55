"""Structured outputs end to end: proxy -> real tritonserver -> scripted engine guided by the
real XGrammar (triton/scripted_guide.py). Every document that comes back was produced token
by token under the grammar matcher, so validating it checks the whole path."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.integration


class Person(BaseModel):
    name: str
    age: int
    languages: list[str]


def reply(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"[reply]{text}[/reply]"}]


@pytest.fixture(scope="module")
def client(proxy) -> openai.OpenAI:
    # The first guided request loads XGrammar in the engine (torch import: seconds).
    return openai.OpenAI(base_url=proxy.v1, api_key="sk-dummy", max_retries=0, timeout=120)


def test_sdk_parse_with_pydantic_model_plain_prose_reply(client):
    # The scripted text is prose; the grammar forces a document that validates.
    done = client.chat.completions.parse(
        model="qwen3",
        messages=reply("Sure! Ada is 36 and speaks English."),
        response_format=Person,
        max_tokens=200,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)
    assert Person.model_validate_json(choice.message.content) == choice.message.parsed


def test_valid_reply_passes_through_unchanged(client):
    doc = '{"name": "Ada", "age": 36, "languages": ["en", "fr"]}'
    done = client.chat.completions.parse(
        model="qwen3", messages=reply(doc), response_format=Person, max_tokens=200
    )
    assert done.choices[0].message.content == doc
    assert done.choices[0].message.parsed == Person(name="Ada", age=36, languages=["en", "fr"])


def test_reply_that_breaks_off_is_completed_to_a_valid_document(client):
    done = client.chat.completions.parse(
        model="qwen3",
        messages=reply('{"name": "Ada", "age": 3 and then prose'),
        response_format=Person,
        max_tokens=200,
    )
    parsed = done.choices[0].message.parsed
    assert parsed is not None and parsed.name == "Ada" and str(parsed.age).startswith("3")


def test_json_object_and_stream(client):
    done = client.chat.completions.create(
        model="qwen3",
        messages=reply("no json here"),
        response_format={"type": "json_object"},
        max_tokens=50,
    )
    assert isinstance(json.loads(done.choices[0].message.content), dict | list)
    chunks = list(
        client.chat.completions.create(
            model="qwen3",
            messages=reply("prose"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": Person.model_json_schema()},
            },
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    Person.model_validate_json(text)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"structured_outputs": {"regex": r"\d{3}-[a-z]{2}"}}, r"\d{3}-[a-z]{2}"),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, r"yes|no"),
        ({"structured_outputs": {"grammar": 'root ::= "A" [0-9]+'}}, r"A[0-9]+"),
        ({"guided_choice": ["red", "green"]}, r"red|green"),
        ({"guided_regex": r"[A-Z]{4}"}, r"[A-Z]{4}"),
    ],
)
def test_vllm_style_fields(client, extra, check):
    done = client.chat.completions.create(
        model="qwen3", messages=reply("whatever"), max_tokens=20, extra_body=extra
    )
    assert re.fullmatch(check, done.choices[0].message.content)


def test_vllm_json_fields_and_text_completions(client, proxy):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for extra in ({"structured_outputs": {"json": schema}}, {"guided_json": json.dumps(schema)}):
        done = client.chat.completions.create(
            model="qwen3", messages=reply("x"), max_tokens=20, extra_body=extra
        )
        assert isinstance(json.loads(done.choices[0].message.content)["ok"], bool)
    r = httpx.post(
        proxy.v1 + "/completions",
        json={
            "model": "qwen3",
            "prompt": "[reply]text[/reply]",
            "max_tokens": 30,
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["text"])["ok"], bool)


def test_bad_guides_are_400s_that_name_the_problem(client):
    cases = [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objec"}},
                }
            },
            "response_format.json_schema",
            "invalid JSON schema at type",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            None,
            "schema",
        ),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        (
            {"guided_regex": "a", "structured_outputs": {"choice": ["a"]}},
            None,
            "only one output constraint",
        ),
        ({"structured_outputs": {"structural_tag": "{}"}}, None, "not supported"),
        ({"response_format": {"type": "structural_tag"}}, "response_format", "structural_tag"),
    ]
    for body, param, words in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(
                model="qwen3", messages=reply("x"), max_tokens=5, extra_body=body
            )
        err = exc.value.body
        assert words in err["message"], err
        if param is not None:
            assert err["param"] == param


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
TWO_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
)


def _calls(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


def test_named_tool_choice_is_enforced_even_for_prose(client):
    for text, city in [("I would rather chat.", ""), ('{"city": "Paris"}', "Paris")]:
        done = client.chat.completions.create(
            model="qwen3",
            messages=reply(text),
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=100,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert _calls(choice.message) == [("get_weather", {"city": city})]


def test_required_tool_choice_stream_and_parallel_false(client):
    chunks = list(
        client.chat.completions.create(
            model="qwen3",
            messages=reply("no tools for me"),
            tools=[WEATHER, TIME],
            tool_choice="required",
            max_tokens=100,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name in ("get_weather", "get_time")
    json.loads(calls[0].function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_parallel_tool_calls_false_keeps_the_first_call(client):
    kwargs = {"model": "qwen3", "messages": reply(TWO_CALLS), "tools": [WEATHER, TIME]}
    both = client.chat.completions.create(**kwargs)
    assert [n for n, _ in _calls(both.choices[0].message)] == ["get_weather", "get_time"]
    one = client.chat.completions.create(**kwargs, parallel_tool_calls=False)
    assert _calls(one.choices[0].message) == [("get_weather", {"city": "Paris"})]
    chunks = list(client.chat.completions.create(**kwargs, parallel_tool_calls=False, stream=True))
    names = [
        tc.function.name
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"]
    # tool_choice auto stays free: plain text comes back as text.
    free = client.chat.completions.create(
        model="qwen3", messages=reply("just text"), tools=[WEATHER], tool_choice="auto"
    )
    assert free.choices[0].message.content == "just text"


def test_min_tokens_and_ignore_eos_reach_the_engine(client):
    base = {"model": "qwen3", "messages": reply("short")}
    short = client.chat.completions.create(**base, max_tokens=40)
    assert short.choices[0].message.content == "short"
    assert short.usage.completion_tokens == 1
    # min_tokens: EOS held back until 12 tokens; the engine goes on with its default text.
    held = client.chat.completions.create(**base, max_tokens=40, extra_body={"min_tokens": 12})
    assert held.usage.completion_tokens == 12 and held.choices[0].finish_reason == "stop"
    assert held.choices[0].message.content.startswith("short")
    # ignore_eos (end_id -1): exactly max_tokens, finish "length", as benchmarks want.
    for stream in (False, True):
        r = client.chat.completions.create(
            **base, max_tokens=25, extra_body={"ignore_eos": True}, stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )  # fmt: skip
        if stream:
            chunks = list(r)
            assert chunks[-1].usage.completion_tokens == 25
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        else:
            assert r.usage.completion_tokens == 25 and r.choices[0].finish_reason == "length"


def test_continuous_usage_stats_on_every_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="qwen3",
            messages=reply("one two three four"),
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    counts = [c.usage.completion_tokens for c in chunks]
    assert all(c.usage is not None for c in chunks)
    assert counts == sorted(counts) and counts[-1] == chunks[-1].usage.completion_tokens > 0
    prompt = {c.usage.prompt_tokens for c in chunks}
    assert len(prompt) == 1
    # Without include_usage (vLLM's rule) there is none.
    plain = list(
        client.chat.completions.create(
            model="qwen3",
            messages=reply("one"),
            stream=True,
            stream_options={"continuous_usage_stats": True},
        )
    )
    assert all(c.usage is None for c in plain)


def test_n_choices_non_stream(client, proxy):
    done = client.chat.completions.create(
        model="qwen3", messages=reply("alpha beta"), n=3, max_tokens=20, seed=7
    )
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert all(
        c.message.content == "alpha beta" and c.finish_reason == "stop" for c in done.choices
    )
    one = client.chat.completions.create(model="qwen3", messages=reply("alpha beta"))
    assert done.usage.prompt_tokens == one.usage.prompt_tokens
    assert done.usage.completion_tokens == 3 * one.usage.completion_tokens
    # Each choice parses its own tool calls / guided output.
    parsed = client.chat.completions.parse(
        model="qwen3", messages=reply("prose"), response_format=Person, n=2, max_tokens=200
    )
    assert all(isinstance(c.message.parsed, Person) for c in parsed.choices)
    r = httpx.post(
        proxy.v1 + "/completions",
        json={"model": "qwen3", "prompt": "[reply]x y[/reply]", "n": 2, "max_tokens": 5},
        timeout=60,
    )
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]


def _streamed_choices(chunks, field):
    """Text and finish reason per choice index from a stream, and its usage chunk."""
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for c in chunks[:-1]:
        assert len(c.choices) == 1 and c.usage is None
        choice = c.choices[0]
        part = choice.delta.content if field == "delta" else choice.text
        texts[choice.index] = texts.get(choice.index, "") + (part or "")
        if choice.finish_reason is not None:
            assert choice.index not in finishes  # one final chunk per choice
            finishes[choice.index] = choice.finish_reason
    assert chunks[-1].choices == []
    return texts, finishes, chunks[-1].usage


def test_n_choices_stream_match_non_stream(client):
    args = {"model": "qwen3", "messages": reply("alpha beta gamma"), "n": 3, "seed": 11}
    whole = client.chat.completions.create(**args, max_tokens=20)
    chunks = list(
        client.chat.completions.create(
            **args, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
    )
    texts, finishes, usage = _streamed_choices(chunks, "delta")
    assert sorted(texts) == [0, 1, 2]
    for c in whole.choices:
        assert texts[c.index] == c.message.content == "alpha beta gamma"
        assert finishes[c.index] == c.finish_reason == "stop"
    assert usage.model_dump() == whole.usage.model_dump()
    # Text completions, one choice cut by max_tokens like the others.
    cargs = {"model": "qwen3", "prompt": "[reply]x y z w[/reply]", "n": 3, "seed": 11}
    cwhole = client.completions.create(**cargs, max_tokens=3)
    cchunks = list(
        client.completions.create(
            **cargs, max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    ctexts, cfinishes, cusage = _streamed_choices(cchunks, "text")
    assert [ctexts[c.index] for c in cwhole.choices] == [c.text for c in cwhole.choices]
    assert all(cfinishes[c.index] == c.finish_reason == "length" for c in cwhole.choices)
    assert cusage.completion_tokens == cwhole.usage.completion_tokens == 9
