"""Reasoning and tool calls keyed on Qwen3's tag tokens, through the whole TextPipeline.

Outputs are built as the model would emit them: each tag as its own added token, the text
between as ordinary tokens (tag characters inside that text spelled out by ordinary tokens,
as the model writes them when it quotes a tag). For every output the streamed result (ids
pushed in pieces, at every cut and at random cuts) equals the non-streaming one (all ids in
one push): the proxy runs this same pipeline for both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.text.special_tokens import LiteralText
from trtllm_stack.text.tags import (
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CLOSE,
    TOOL_OPEN,
    Tag,
    tag_ids,
)
from trtllm_stack.text.tool_calls import calls_from_deltas
from trtllm_stack.tokenizer import load_tokenizer

TOOLS = ["get_weather", "search"]
TAGS = (THINK_OPEN, THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE)


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer_dir):
    return load_tokenizer(qwen3_tokenizer_dir)


@pytest.fixture(scope="module")
def literal(tok):
    return LiteralText(tok)


@dataclass(frozen=True)
class Result:
    reasoning: str
    content: str
    calls: tuple[tuple[str, str], ...]
    called: bool
    truncated: bool
    stopped: bool


def output_ids(tok: Any, literal: LiteralText, parts: list[str]) -> list[int]:
    """Ids of ``parts``: a part equal to a tag is that tag's token, any other part is text
    whose tag characters (if any) are ordinary tokens."""
    ids: list[int] = []
    for part in parts:
        if part in TAGS:
            ids.append(tok.convert_tokens_to_ids(part))
        elif part:
            ids.extend(literal.encode_plain(part))
    return ids


def run(tok: Any, ids: list[int], cuts: list[int], **kwargs: Any) -> Result:
    pipeline = TextPipeline(tok, **kwargs)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(ids)}), len(ids)]
    reasoning: list[str] = []
    content: list[str] = []
    deltas = []
    for a, b in itertools.pairwise(bounds):
        r, c, d = pipeline.push(ids[a:b])
        reasoning.append(r)
        content.append(c)
        deltas.extend(d)
    r, c, d = pipeline.finish()
    reasoning.append(r)
    content.append(c)
    deltas.extend(d)
    calls = tuple((call.name, call.arguments) for call in calls_from_deltas(deltas))
    return Result(
        "".join(reasoning),
        "".join(content),
        calls,
        pipeline.called_tools,
        pipeline.tool_call_truncated,
        pipeline.stopped,
    )


def assert_every_split_agrees(tok: Any, ids: list[int], **kwargs: Any) -> Result:
    whole = run(tok, ids, [], **kwargs)
    for cut in range(1, len(ids)):
        assert run(tok, ids, [cut], **kwargs) == whole, cut
    assert run(tok, ids, list(range(len(ids))), **kwargs) == whole
    if len(ids) <= 40:
        for cuts in itertools.combinations(range(1, len(ids)), 2):
            assert run(tok, ids, list(cuts), **kwargs) == whole, cuts
    return whole


CHAT = {"reasoning": True, "tool_names": TOOLS}
WEATHER = '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'


def test_the_four_tags_are_single_tokens_of_qwen3(tok):
    ids = tag_ids(tok)
    assert ids is not None
    assert sorted(ids.values()) == sorted(TAGS)
    assert all(type(t) is Tag for t in ids.values())


def test_a_tokenizer_without_tag_tokens_gets_the_text_parsers():
    class NoTags:
        def __init__(self) -> None:
            self.added_tokens_decoder = {5: "<think>", 6: "</think>"}  # no tool-call tokens

    assert tag_ids(NoTags()) is None


def test_newline_before_think_token_opens_reasoning(tok, literal):
    parts = ["\n", THINK_OPEN, "\nLet me see.\n", THINK_CLOSE, "\n\nAnswer."]
    ids = output_ids(tok, literal, parts)
    got = assert_every_split_agrees(tok, ids, reasoning=True)
    assert (got.reasoning, got.content) == ("Let me see.", "Answer.")


def test_close_tag_spelled_out_inside_reasoning_is_reasoning(tok, literal):
    thought = "\nThe user typed </think> and <think> in the text; odd.\n"
    ids = output_ids(tok, literal, [THINK_OPEN, thought, THINK_CLOSE, "\n\nIt is text."])
    # Only the real tag is the tag token; the quoted one is ordinary tokens.
    assert ids.count(tok.convert_tokens_to_ids(THINK_CLOSE)) == 1
    got = assert_every_split_agrees(tok, ids, reasoning=True)
    assert got.reasoning == thought.strip()
    assert got.content == "It is text."


def test_close_token_first_ends_a_block_the_prompt_opened(tok, literal):
    ids = output_ids(tok, literal, [THINK_CLOSE, "\n\nDone."])
    got = assert_every_split_agrees(tok, ids, reasoning=True)
    assert (got.reasoning, got.content) == ("", "Done.")


def test_think_in_prompt_reasoning_until_the_close_token(tok, literal):
    ids = output_ids(tok, literal, ["\nhmm, </think> is a tag\n", THINK_CLOSE, "\n\nok"])
    got = assert_every_split_agrees(tok, ids, reasoning=True, think_in_prompt=True)
    assert (got.reasoning, got.content) == ("hmm, </think> is a tag", "ok")


def test_thinking_disabled_keeps_everything_as_content(tok, literal):
    parts = [THINK_OPEN, "\nr\n", THINK_CLOSE, "\n\nc"]
    ids = output_ids(tok, literal, parts)
    got = assert_every_split_agrees(tok, ids, reasoning=True, thinking_enabled=False)
    assert (got.reasoning, got.content) == ("", "".join(parts))


def test_unbalanced_quote_does_not_swallow_the_close_tag_or_the_next_call(tok, literal):
    broken = '\n{"name": "search", "arguments": {"q": "say hi}}\n'  # the string never closes
    parts = [TOOL_OPEN, broken, TOOL_CLOSE, "\n", TOOL_OPEN, WEATHER, TOOL_CLOSE]
    ids = output_ids(tok, literal, parts)
    incremental = assert_every_split_agrees(tok, ids, **CHAT)
    # The first call's name was streamed before its JSON broke: it stays a call (with the
    # text that was sent); the second is intact, and no tag leaks into any argument.
    assert incremental.calls == (
        ("search", '{"q": "say hi}}\n'),
        ("get_weather", '{"city": "Paris"}'),
    )
    assert incremental.content == ""
    buffered = assert_every_split_agrees(tok, ids, **CHAT, tool_call_streaming="buffered")
    # Buffered mode validates whole blocks: the broken one is content, verbatim.
    assert buffered.calls == (("get_weather", '{"city": "Paris"}'),)
    assert buffered.content == TOOL_OPEN + broken + TOOL_CLOSE


def test_missing_close_tag_between_two_calls(tok, literal):
    search = '\n{"name": "search", "arguments": {"q": "tags"}}\n'
    ids = output_ids(tok, literal, [TOOL_OPEN, search, TOOL_OPEN, WEATHER, TOOL_CLOSE])
    for mode in ("incremental", "buffered"):
        got = assert_every_split_agrees(tok, ids, **CHAT, tool_call_streaming=mode)
        assert got.calls == (("search", '{"q": "tags"}'), ("get_weather", '{"city": "Paris"}'))
        assert got.content == ""


def test_tags_spelled_out_as_text_are_text(tok, literal):
    args = '{"q": "a </tool_call> b <tool_call>"}'
    parts = [
        "Use <tool_call> like this:",
        TOOL_OPEN,
        '\n{"name": "search", "arguments": ' + args + "}\n",
        TOOL_CLOSE,
    ]
    ids = output_ids(tok, literal, parts)
    got = assert_every_split_agrees(tok, ids, **CHAT)
    assert got.content == "Use <tool_call> like this:"
    assert got.calls == (("search", args),)


def test_reasoning_then_call_then_truncation(tok, literal):
    parts = [
        THINK_OPEN,
        "\nCall the tool.\n",
        THINK_CLOSE,
        "\n\n",
        TOOL_OPEN,
        '\n{"name": "get_weather", "arguments": {"city": "Par',
    ]
    ids = output_ids(tok, literal, parts)
    got = assert_every_split_agrees(tok, ids, **CHAT)
    assert got.reasoning == "Call the tool."
    assert got.calls == (("get_weather", '{"city": "Par'),)
    assert got.truncated


@pytest.mark.parametrize(
    ("stop", "reasoning", "content"),
    [
        # A stop string matches the tag token's text; the tag is not parsed then.
        ("</think>", "why", ""),
        # A stop that ends inside the tag leaves the tag's first characters as text.
        ("think>\n\n", "why\n</", ""),
        # A stop that starts like the tag holds it back, then lets it through whole.
        ("</thinking", "why", "answer"),
        ("answer", "why", ""),
    ],
)
def test_stop_strings_see_the_tag_text(tok, literal, stop, reasoning, content):
    ids = output_ids(tok, literal, [THINK_OPEN, "\nwhy\n", THINK_CLOSE, "\n\nanswer"])
    got = assert_every_split_agrees(tok, ids, reasoning=True, stops=[stop])
    assert (got.reasoning, got.content) == (reasoning, content)


PARTS = [
    *TAGS,
    "\n",
    "\n\n",
    " ",
    "ok",
    "思考 😀",
    "</think>",
    "<tool_call>",
    WEATHER,
    '{"name": "search", "arguments": {"q": "x',
    '"}}',
    "}",
]
STOPS = ["", "ok", "</think>", "</th", "}\n", "😀"]


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(st.sampled_from(PARTS), max_size=10),
    cuts=st.lists(st.integers(0, 80), max_size=8),
    reasoning=st.booleans(),
    tools=st.booleans(),
    thinking_enabled=st.booleans(),
    think_in_prompt=st.booleans(),
    mode=st.sampled_from(["incremental", "buffered"]),
    stop=st.sampled_from(STOPS),
)
def test_random_outputs_stream_as_they_parse_whole(
    tok, literal, parts, cuts, reasoning, tools, thinking_enabled, think_in_prompt, mode, stop
):
    ids = output_ids(tok, literal, parts)
    kwargs = {
        "reasoning": reasoning,
        "tool_names": TOOLS if tools else None,
        "thinking_enabled": thinking_enabled,
        "think_in_prompt": think_in_prompt,
        "tool_call_streaming": mode,
        "stops": [stop] if stop else [],
    }
    whole = run(tok, ids, [], **kwargs)
    assert run(tok, ids, cuts, **kwargs) == whole
    assert run(tok, ids, list(range(len(ids))), **kwargs) == whole
    if not reasoning and not tools and not stop:
        # Nothing parses: the output is the text of the ids, character for character.
        assert whole.content == tok.decode(ids, skip_special_tokens=True)
