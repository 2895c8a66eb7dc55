"""Qwen3ToolCallParser: streaming (both modes) at every split equals parse_tool_calls.

Incremental-mode specifics (fragments, fallbacks, blocks that break after their name was
streamed) are in tests/unit/proxy/test_proxy_tool_call_streaming.py."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtllm_stack.text.tool_calls import (
    Qwen3ToolCallParser,
    ToolCallDelta,
    ToolCallStreaming,
    parse_tool_calls,
)

TOOLS = {"get_weather", "search"}


MODES = ["incremental", "buffered"]


def stream(
    text: str,
    cuts: list[int],
    tool_names: set[str] | None = TOOLS,
    mode: ToolCallStreaming = "incremental",
) -> tuple[str, list[tuple[str, str]], list[ToolCallDelta], bool]:
    parser = Qwen3ToolCallParser(tool_names, streaming=mode)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    content: list[str] = []
    deltas: list[ToolCallDelta] = []
    for a, b in itertools.pairwise(bounds):
        c, d = parser.push(text[a:b])
        content.append(c)
        deltas.extend(d)
    c, d = parser.flush()
    content.append(c)
    deltas.extend(d)
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        if delta.name is not None:
            assert delta.index not in calls and delta.id and delta.id.startswith("call_")
            assert delta.arguments is None
            calls[delta.index] = [delta.name, ""]
        else:
            assert delta.id is None and delta.arguments is not None
            calls[delta.index][1] += delta.arguments
    assert list(calls) == list(range(len(calls)))
    return "".join(content), [(n, a) for n, a in calls.values()], deltas, parser.called


def non_stream(text: str, tool_names: set[str] | None = TOOLS) -> tuple[str, list[tuple[str, str]]]:
    content, calls = parse_tool_calls(text, tool_names)
    return content, [(c.name, c.arguments) for c in calls]


WEATHER = (
    '<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
)
# Arguments are the model's text of the object, verbatim.
WEATHER_ARGS = '{"city": "Paris", "unit": "c"}'
TRICKY = (
    '<tool_call>\n{"name": "search", "arguments": {"q": "a </tool_call> b \\" } {", '
    '"nested": {"x": [1, {"y": "}"}]}}}\n</tool_call>'
)
TRICKY_ARGS = '{"q": "a </tool_call> b \\" } {", "nested": {"x": [1, {"y": "}"}]}}'

CASES = [
    (
        "Just text, <b>bold</b> and a < sign.",
        "Just text, <b>bold</b> and a < sign.",
        [],
    ),
    (WEATHER, "", [("get_weather", WEATHER_ARGS)]),
    (f"Let me check.\n\n{WEATHER}", "Let me check.", [("get_weather", WEATHER_ARGS)]),
    (f"{WEATHER}\n{WEATHER}\n", "", [("get_weather", WEATHER_ARGS)] * 2),
    (f"Sure {WEATHER} done.\n", "Sure done.\n", [("get_weather", WEATHER_ARGS)]),
    (TRICKY, "", [("search", TRICKY_ARGS)]),
    ('<tool_call>{"name": "search"}</tool_call>', "", [("search", "{}")]),
    (
        '<tool_call>{"name": "search", "arguments": "{\\"q\\": 1}"}</tool_call>',
        "",
        [("search", '{"q": 1}')],
    ),
    (
        '<tool_call>{"name": "search", "parameters": {"q": "日本 😀"}}</tool_call>',
        "",
        [("search", '{"q": "日本 😀"}')],
    ),
    # Broken blocks come back verbatim as content; valid neighbours still parse.
    (
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        [],
    ),
    (
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        [],
    ),
    (
        '<tool_call>{"name": "search", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "search", "arguments": [1]}</tool_call>',
        [],
    ),
    (
        "<tool_call>I will search</tool_call>",
        "<tool_call>I will search</tool_call>",
        [],
    ),
    (
        f"{WEATHER}\n<tool_call>not json</tool_call>",
        "\n<tool_call>not json</tool_call>",
        [("get_weather", WEATHER_ARGS)],
    ),
    (
        f'{WEATHER}\n<tool_call>\n{{"name": "search", "argu',
        '\n<tool_call>\n{"name": "search", "argu',
        [("get_weather", WEATHER_ARGS)],
    ),
    ("trailing partial <tool_c", "trailing partial <tool_c", []),
    ("  \n", "  \n", []),
    # Repeated keys are ambiguous: not a call.
    (
        '<tool_call>{"name": "search", "name": "get_weather"}</tool_call>',
        '<tool_call>{"name": "search", "name": "get_weather"}</tool_call>',
        [],
    ),
]

# Broken only after a valid head: content when buffered (and non-streaming); incremental
# mode has already announced the call (tests/unit/proxy/test_proxy_tool_call_streaming.py).
BROKEN_AFTER_HEAD = [
    '<tool_call>{"name": "search", "arguments": {"q": </tool_call>',
    '<tool_call>{"name": "search", "arguments": {"x": NaN}}</tool_call>',
    '<tool_call>{"name": "search", "arguments": {"q": "unterminated</tool_call>',
    '<tool_call>{"name": "search", "arguments": {"q": 1}, "arguments": {}}</tool_call>',
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_every_split_point_gives_the_same_result(
    text: str, content: str, calls: list[tuple[str, str]], mode: ToolCallStreaming
) -> None:
    assert non_stream(text) == (content, calls)
    for cut in range(len(text) + 1):
        assert stream(text, [cut], mode=mode)[:2] == (content, calls), cut
    assert stream(text, list(range(len(text))), mode=mode)[:2] == (content, calls)


@pytest.mark.parametrize("text", BROKEN_AFTER_HEAD)
def test_broken_blocks_are_content_when_buffered(text: str) -> None:
    assert non_stream(text) == (text, [])
    for cut in range(len(text) + 1):
        assert stream(text, [cut], mode="buffered")[:2] == (text, []), cut


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        (WEATHER, "incremental"),
        (WEATHER, "buffered"),
        (TRICKY, "incremental"),
        (TRICKY, "buffered"),
        (BROKEN_AFTER_HEAD[0], "buffered"),
    ],
)
def test_every_pair_of_split_points(text: str, mode: ToolCallStreaming) -> None:
    expected = non_stream(text)
    for cuts in itertools.combinations(range(1, len(text)), 2):
        assert stream(text, list(cuts), mode=mode)[:2] == expected, cuts


def test_deltas_name_first_then_arguments_and_called_flag() -> None:
    text = f"Hi {WEATHER}{TRICKY}"
    content, _, deltas, called = stream(text, [5, 40, 90])
    assert called and content == "Hi"
    assert [(d.index, d.name) for d in deltas if d.name] == [
        (0, "get_weather"),
        (1, "search"),
    ]
    assert len({d.id for d in deltas if d.id}) == 2
    assert not stream("no calls <tool_call>{}</tool_call>", [3])[3]


def test_buffered_emits_nothing_before_the_block_closes() -> None:
    parser = Qwen3ToolCallParser(TOOLS, streaming="buffered")
    assert parser.push("ok <tool_") == ("ok", [])
    assert parser.push('call>{"name": "search", "arguments": {"q": "</tool_call>"}}</tool') == (
        "",
        [],
    )
    content, deltas = parser.push("_call> after")
    assert content == " after" and [d.name for d in deltas] == ["search", None]
    assert deltas[1].arguments == '{"q": "</tool_call>"}'
    assert json.loads(deltas[1].arguments) == {"q": "</tool_call>"}


def test_without_tool_names_any_name_is_accepted() -> None:
    text = '<tool_call>{"name": "anything", "arguments": {}}</tool_call>'
    assert non_stream(text, None) == ("", [("anything", "{}")])
    assert non_stream(text, set()) == (text, [])


FRAGMENTS = [
    WEATHER,
    TRICKY,
    "<tool_call>",
    "</tool_call>",
    '{"name": "search"}',
    '{"name": "nope"}',
    '"',
    "{",
    "}",
    "\\",
    " ",
    "\n",
    "text",
    "<",
    "</tool",
    "日本",
    "😀",
    '"arguments": {',
]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), max_size=10),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_random_buffered_streams_match_non_stream(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    content, calls, _, called = stream(text, cuts, mode="buffered")
    assert (content, calls) == non_stream(text)
    assert called == bool(calls)
    if not calls:
        assert content == text  # no valid call: the text comes back untouched
