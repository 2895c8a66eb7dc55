"""Tool calls streamed incrementally (name, then argument fragments), the fallbacks to
buffering, blocks that break after their name was sent, and the same through the app
(SSE shape, finish_reason) over the fake engine. Buffered mode and the split-point
equivalence of both modes are also covered in tests/unit/text."""

from __future__ import annotations

import itertools
import json
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.text.tool_calls import (
    CLOSE,
    Qwen3ToolCallParser,
    ToolCallDelta,
    ToolCallStreaming,
    parse_tool_calls,
)

TOOLS = {"get_weather", "search"}


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def call(name: str, args: str) -> str:
    return block(f'{{"name": "{name}", "arguments": {args}}}')


PARIS = '{"city": "Paris", "unit": "c"}'
# Braces, quotes, escaped quotes, a backslash before a closing quote, the closing tag and
# an opening tag inside string values; nested objects and arrays; unicode.
TRICKY = (
    '{"q": "a </tool_call> b \\" } { <tool_call>", "path": "C:\\\\", '
    '"nested": {"x": [1, {"y": "}"}], "e": {}}, "u": "日本 😀 \\u00e9"}'
)
VALID_TEXTS = [
    call("get_weather", PARIS),
    call("search", TRICKY),
    f"Let me check.\n\n{call('get_weather', PARIS)}\n{call('search', TRICKY)}\n",
    f"Sure {call('search', '{}')} done.",
    # Qwen3 spacing variants: no spaces, newlines inside the object.
    '<tool_call>{"name":"search","arguments":{"q":1}}</tool_call>',
    '<tool_call>\n{\n  "name" : "search" ,\n  "arguments" :\n  {\n    "q": [1, 2]\n  }\n}\n'
    "</tool_call>",
]


def run(
    text: str,
    chunks: list[str] | None = None,
    mode: ToolCallStreaming = "incremental",
    tool_names: set[str] | None = TOOLS,
) -> tuple[str, list[ToolCallDelta], Qwen3ToolCallParser]:
    """Push ``chunks`` (default: the whole text) and flush."""
    parser = Qwen3ToolCallParser(tool_names, streaming=mode)
    content: list[str] = []
    deltas: list[ToolCallDelta] = []
    for chunk in [text] if chunks is None else chunks:
        c, d = parser.push(chunk)
        content.append(c)
        deltas.extend(d)
    c, d = parser.flush()
    assert d == []
    content.append(c)
    assert "".join(chunks if chunks is not None else [text]) == text
    return "".join(content), deltas, parser


def assemble(deltas: list[ToolCallDelta]) -> list[tuple[str, str]]:
    """Calls as a client assembles them; checks the order rules on the way."""
    calls: list[list[str]] = []
    ids: set[str] = set()
    for d in deltas:
        if d.name is not None:
            # A new call: the next index, a fresh id, its name before any arguments.
            assert d.index == len(calls)
            assert d.id and d.id.startswith("call_") and d.id not in ids
            assert d.arguments is None
            ids.add(d.id)
            calls.append([d.name, ""])
        else:
            assert d.id is None and d.arguments
            assert d.index == len(calls) - 1  # fragments belong to the latest call
            calls[-1][1] += d.arguments
    return [(n, a) for n, a in calls]


def splits(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12))))
    return [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]


def non_stream(text: str) -> tuple[str, list[tuple[str, str]]]:
    content, calls = parse_tool_calls(text, TOOLS)
    return content, [(c.name, c.arguments) for c in calls]


# -- incremental: valid blocks -----------------------------------------------------------


@pytest.mark.parametrize("text", VALID_TEXTS)
def test_every_split_point_and_random_chunkings_agree_with_non_stream(text: str) -> None:
    content, calls = non_stream(text)
    assert calls  # every text here has calls
    for cut in range(len(text) + 1):
        c, d, parser = run(text, [text[:cut], text[cut:]])
        assert (c, assemble(d)) == (content, calls), cut
        assert parser.broken == 0
    rng = random.Random(text)
    for _ in range(200):
        c, d, _ = run(text, splits(text, rng))
        assert (c, assemble(d)) == (content, calls)


@pytest.mark.parametrize("text", VALID_TEXTS)
def test_one_character_at_a_time_streams_every_fragment_as_it_arrives(text: str) -> None:
    parser = Qwen3ToolCallParser(TOOLS)
    seen = ""
    streamed: dict[int, str] = {}
    for ch in text:
        seen += ch
        _, deltas = parser.push(ch)
        for d in deltas:
            if d.name is not None:
                # Announced exactly when the arguments object opens.
                assert seen.rstrip().endswith("{") and '"arguments"' in seen
                streamed[d.index] = ""
            else:
                assert d.arguments == ch  # the new character, at once, nothing held back
                streamed[d.index] += ch
    parser.flush()
    assert list(streamed.values()) == [a for _, a in non_stream(text)[1]]


def test_name_waits_for_the_arguments_object_then_fragments_follow() -> None:
    parser = Qwen3ToolCallParser(TOOLS)
    assert parser.push('Hi <tool_call>\n{"name": "get_weather"') == ("Hi", [])
    assert parser.push(', "arguments": ') == ("", [])
    content, deltas = parser.push('{"city": "Pa')
    assert content == ""
    assert [(d.index, d.name, d.arguments) for d in deltas] == [
        (0, "get_weather", None),
        (0, None, '{"city": "Pa'),
    ]
    assert deltas[0].id and deltas[0].id.startswith("call_")
    assert parser.called
    assert parser.push('ris"') == ("", [ToolCallDelta(0, None, None, 'ris"')])
    # The arguments object closes mid-push: the outer "}" and the tag are never sent.
    assert parser.push("}}\n</tool_") == ("", [ToolCallDelta(0, None, None, "}")])
    assert parser.push("call>\n") == ("", [])
    assert parser.flush() == ("", [])
    assert parser.broken == 0 and not parser.truncated


def test_several_calls_get_indexes_in_order() -> None:
    text = "".join(call("search", f'{{"q": {i}}}') for i in range(4)) + " ok"
    for chunks in ([text], list(text)):
        content, deltas, _ = run(text, chunks)
        assert content == " ok"
        assert assemble(deltas) == [("search", f'{{"q": {i}}}') for i in range(4)]
        assert sorted({d.index for d in deltas}) == [0, 1, 2, 3]


def test_without_tool_names_any_name_streams() -> None:
    text = call("anything", '{"a": 1}')
    _, deltas, _ = run(text, list(text), tool_names=None)
    assert assemble(deltas) == [("anything", '{"a": 1}')]
    assert len([d for d in deltas if d.arguments]) == len('{"a": 1}')


# -- incremental: fallbacks ----------------------------------------------------------------

FALLBACKS = [
    # arguments before name
    (block('{"arguments": {"q": 1}, "name": "search"}'), ("search", '{"q": 1}')),
    # the "parameters" key
    (block('{"name": "search", "parameters": {"q": "日本"}}'), ("search", '{"q": "日本"}')),
    # double-encoded arguments: the string's value
    (block('{"name": "search", "arguments": "{\\"q\\": 1}"}'), ("search", '{"q": 1}')),
    # another key first
    (block('{"type": "function", "name": "search", "arguments": {}}'), ("search", "{}")),
    # an escape in the name
    (block('{"name": "sea\\u0072ch", "arguments": {"q": 2}}'), ("search", '{"q": 2}')),
    # no arguments at all
    (block('{"name": "search"}'), ("search", "{}")),
]


@pytest.mark.parametrize(("text", "expected"), FALLBACKS)
def test_other_block_shapes_are_buffered_then_sent_whole(
    text: str, expected: tuple[str, str]
) -> None:
    assert non_stream(text) == ("", [expected])
    parser = Qwen3ToolCallParser(TOOLS)
    body = text[: -len(CLOSE)]
    for ch in body:
        assert parser.push(ch) == ("", []), "nothing before the block closes"
    content, deltas = parser.push(CLOSE)
    assert content == "" and assemble(deltas) == [expected]
    assert [d.arguments for d in deltas] == [None, expected[1]]
    for cut in range(len(text) + 1):
        c, d, _ = run(text, [text[:cut], text[cut:]])
        assert (c, assemble(d)) == ("", [expected])


CONTENT_BLOCKS = [
    # unknown tool name: even with a valid arguments object it is never announced
    call("rm_rf", '{"path": "/"}'),
    call("", "{}"),
    # broken JSON before the name
    block('{name: "search", "arguments": {"q": 1}}'),
    block('{"name" "search", "arguments": {"q": 1}}'),
    block('{"name": search, "arguments": {"q": 1}}'),
    block('["search", {"q": 1}]'),
    block("I will search for it"),
    # the name is not followed by an arguments object
    block('{"name": "search", "arguments": [1]}'),
    block('{"name": "search", "arguments": null}'),
    block('{"name": "search" "arguments": {}}'),
]


@pytest.mark.parametrize("text", CONTENT_BLOCKS)
@pytest.mark.parametrize("mode", ["incremental", "buffered"])
def test_unknown_names_and_broken_heads_come_back_as_content(
    text: str, mode: ToolCallStreaming
) -> None:
    text = f"Before {text} after"
    for chunks in ([text], list(text)):
        content, deltas, parser = run(text, chunks, mode)
        assert (content, deltas) == (text, [])
        assert not parser.called and parser.broken == 0


# -- incremental: broken after the name was streamed ----------------------------------------


def test_truncated_after_streaming_began_keeps_the_call(caplog: pytest.LogCaptureFixture) -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "search", "arguments": {"q": "secret wor'
    with caplog.at_level(logging.WARNING, logger="trtllm_stack.proxy"):
        for chunks in ([text], list(text)):
            content, deltas, parser = run(text, chunks)
            # The call stays as sent; the block is not repeated as content.
            assert content == "Let me look."
            assert assemble(deltas) == [("search", '{"q": "secret wor')]
            assert parser.called and parser.truncated and parser.broken == 1
    assert caplog.records and all(r.levelno == logging.WARNING for r in caplog.records)
    assert "ended inside" in caplog.records[0].getMessage()
    assert "secret" not in caplog.text  # no model or prompt text in the log
    # Not streaming, nothing was sent: the block is content.
    assert non_stream(text) == (text, [])


def test_truncated_inside_a_partial_closing_tag() -> None:
    text = call("search", '{"q": 1}')[:-3]  # "...}}\n</tool_ca"
    content, deltas, parser = run(text, list(text))
    assert content == "" and assemble(deltas) == [("search", '{"q": 1}')]
    assert parser.truncated and parser.broken == 1


@pytest.mark.parametrize(
    ("block_text", "sent"),
    [
        (
            '<tool_call>{"name": "search", "arguments": {"q": </tool_call>',
            '{"q": ',
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"x": NaN}}</tool_call>',
            '{"x": NaN}',
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"q": 1}} trailing </tool_call>',
            '{"q": 1}',
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"q": 1}, "arguments": {}}</tool_call>',
            '{"q": 1}',
        ),
    ],
)
def test_invalid_at_the_closing_tag_after_streaming_began(
    block_text: str, sent: str, caplog: pytest.LogCaptureFixture
) -> None:
    text = f"A {block_text} B {call('get_weather', PARIS)}"
    with caplog.at_level(logging.WARNING, logger="trtllm_stack.proxy"):
        for chunks in ([text], list(text)):
            content, deltas, parser = run(text, chunks)
            # Nothing more of the broken block is sent; what follows it is handled as usual.
            assert content == "A B"
            assert assemble(deltas) == [("search", sent), ("get_weather", PARIS)]
            assert parser.broken == 1 and not parser.truncated
    assert "invalid" in caplog.text
    assert non_stream(text) == (f"A {block_text} B", [("get_weather", PARIS)])


# -- random texts ------------------------------------------------------------------------

PIECES = [
    call("get_weather", PARIS),
    call("search", TRICKY),
    call("nope", "{}"),
    "<tool_call>",
    "</tool_call>",
    '{"name": "search"',
    ', "arguments": ',
    '"arguments": {',
    '{"q": "x"}',
    '"',
    "{",
    "}",
    "\\",
    " ",
    "\n",
    "text",
    "<",
    "日本",
    "😀",
]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(PIECES), max_size=10),
    cuts=st.lists(st.integers(0, 500), max_size=15),
)
def test_random_incremental_streams(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    content, deltas, parser = run(text, chunks)
    calls = assemble(deltas)
    # The chunking never matters ...
    whole_content, whole_deltas, whole = run(text)
    assert (content, calls) == (whole_content, assemble(whole_deltas))
    assert (parser.broken, parser.truncated) == (whole.broken, whole.truncated)
    assert parser.called == bool(calls)
    # ... and unless a call broke after it was announced, it is the non-stream answer.
    if not parser.broken:
        assert (content, calls) == non_stream(text)


# -- settings ----------------------------------------------------------------------------


def test_setting_env_flag_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from trtllm_stack.cli import build_parser
    from trtllm_stack.proxy.cli import _settings

    assert ProxySettings().tool_call_streaming == "incremental"
    monkeypatch.setenv("TRTLLM_STACK_TOOL_CALL_STREAMING", "buffered")
    assert ProxySettings().tool_call_streaming == "buffered"
    parser = build_parser()
    assert _settings(parser.parse_args(["proxy"])).tool_call_streaming == "buffered"
    args = parser.parse_args(["proxy", "--tool-call-streaming", "incremental"])
    assert _settings(args).tool_call_streaming == "incremental"
    with pytest.raises(SystemExit):
        parser.parse_args(["proxy", "--tool-call-streaming", "eager"])
    monkeypatch.setenv("TRTLLM_STACK_TOOL_CALL_STREAMING", "eager")
    with pytest.raises(ValidationError):
        ProxySettings()


# -- through the app (fake engine) ---------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
REPLY = (
    "<think>\nok\n</think>\n\n"
    + call("get_weather", '{"city": "Paris", "note": "a \\"quoted\\" } brace"}')
    + "\n"
    + call("get_weather", '{"city": "東京"}')
)


def sse(text: str) -> list[dict]:
    data = [b[6:] for b in text.split("\n\n") if b.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def tool_entries(chunks: list[dict]) -> list[dict]:
    return [
        tc
        for ch in chunks
        if ch["choices"]
        for tc in ch["choices"][0]["delta"].get("tool_calls", [])
    ]


def chat(**extra: object) -> dict:
    return {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [WEATHER_TOOL],
        **extra,
    }


async def test_app_streams_name_then_fragments_matching_non_stream(client, engine) -> None:
    engine.reply = REPLY
    engine.delay = 0.001  # one token per SSE chunk
    whole = (await client.post("/v1/chat/completions", json=chat())).json()
    expected = [c["function"] for c in whole["choices"][0]["message"]["tool_calls"]]
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert [json.loads(f["arguments"]) for f in expected] == [
        {"city": "Paris", "note": 'a "quoted" } brace'},
        {"city": "東京"},
    ]

    r = await client.post("/v1/chat/completions", json=chat(stream=True))
    chunks = sse(r.text)
    entries = tool_entries(chunks)
    for i, fn in enumerate(expected):
        mine = [e for e in entries if e["index"] == i]
        first, rest = mine[0], mine[1:]
        assert first["id"].startswith("call_") and first["type"] == "function"
        assert first["function"]["name"] == fn["name"]
        assert fn["arguments"].startswith(first["function"]["arguments"])
        assert len(rest) > 1  # the arguments arrive in fragments
        for e in rest:
            assert set(e) == {"index", "function"} and set(e["function"]) == {"arguments"}
        assert "".join(e["function"]["arguments"] for e in mine) == fn["arguments"]
    finals = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert finals[-1] == "tool_calls" and finals.count(None) == len(finals) - 1
    content = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert content == ""


def _cut_inside_arguments(tokenizer, text: str) -> tuple[int, str]:
    """A max_tokens that ends the output inside the first call's arguments."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    for n in range(1, len(ids)):
        prefix = tokenizer.decode(ids[:n])
        if '"city": "Pa' in prefix:
            return n, prefix
    raise AssertionError("no cut inside the arguments")


async def test_app_call_cut_by_max_tokens_ends_with_length(client, engine, tokenizer) -> None:
    engine.reply = REPLY
    engine.delay = 0.001
    max_tokens, prefix = _cut_inside_arguments(tokenizer, REPLY)
    r = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=max_tokens))
    chunks = sse(r.text)
    entries = tool_entries(chunks)
    assert {e["index"] for e in entries} == {0}
    assert entries[0]["function"]["name"] == "get_weather"
    sent = "".join(e["function"].get("arguments", "") for e in entries)
    assert sent.startswith('{"city": "Pa') and prefix.endswith(sent)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(not ch["choices"][0]["delta"].get("content") for ch in chunks)

    # Not streamed: nothing was announced, so the cut block is content.
    whole = (await client.post("/v1/chat/completions", json=chat(max_tokens=max_tokens))).json()
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"].startswith("<tool_call>")


async def test_app_buffered_mode_sends_each_call_whole(make_client, engine, tokenizer) -> None:
    client = make_client(tool_call_streaming="buffered")
    engine.reply = REPLY
    engine.delay = 0.001
    r = await client.post("/v1/chat/completions", json=chat(stream=True))
    chunks = sse(r.text)
    entries = tool_entries(chunks)
    # One entry per call: id, name and the whole arguments together.
    assert [e["index"] for e in entries] == [0, 1]
    assert [json.loads(e["function"]["arguments"])["city"] for e in entries] == ["Paris", "東京"]
    assert all(e["id"].startswith("call_") for e in entries)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    max_tokens, prefix = _cut_inside_arguments(tokenizer, REPLY)
    r = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=max_tokens))
    chunks = sse(r.text)
    assert tool_entries(chunks) == []
    content = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert content == prefix[prefix.index("<tool_call>") :]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
