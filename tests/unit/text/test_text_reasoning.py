"""Qwen3ReasoningParser: streaming at every split equals split_reasoning."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtllm_stack.text.reasoning import Qwen3ReasoningParser, split_reasoning


def stream(text: str, cuts: list[int], **kwargs: bool) -> tuple[str | None, str]:
    parser = Qwen3ReasoningParser(**kwargs)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    reasoning: list[str] = []
    content: list[str] = []
    for a, b in itertools.pairwise(bounds):
        r, c = parser.push(text[a:b])
        reasoning.append(r)
        content.append(c)
    r, c = parser.flush()
    return "".join([*reasoning, r]) or None, "".join([*content, c])


CASES = [
    # (output, kwargs, expected (reasoning, content))
    (
        "<think>\nLet me see.\n</think>\n\nThe answer.",
        {},
        ("Let me see.", "The answer."),
    ),
    ("<think>\n\n</think>\n\nQuick.", {}, (None, "Quick.")),
    (
        "<think>\nstill thinking when max_tokens hit",
        {},
        ("still thinking when max_tokens hit", ""),
    ),
    ("<think>\nends in a partial tag\n</thi", {}, ("ends in a partial tag\n</thi", "")),
    ("<think>\nA</think>B</think>C", {}, ("A", "B</think>C")),
    ("<think>\nx < y and <b>\n</think>\n\nok", {}, ("x < y and <b>", "ok")),
    ("Plain answer, no think.", {}, (None, "Plain answer, no think.")),
    ("<thi", {}, (None, "<thi")),
    ("", {}, (None, "")),
    (
        "Answer with <think> in the middle",
        {},
        (None, "Answer with <think> in the middle"),
    ),
    (
        "<think>\nr\n</think>\n\nc",
        {"thinking_enabled": False},
        (None, "<think>\nr\n</think>\n\nc"),
    ),
    (
        "reasoning\n</think>\n\ncontent",
        {"think_in_prompt": True},
        ("reasoning", "content"),
    ),
    ("<think>\nr\n</think>\n\nc", {"think_in_prompt": True}, ("r", "c")),
    (
        "truncated in prompt-opened think",
        {"think_in_prompt": True},
        ("truncated in prompt-opened think", ""),
    ),
    ("思考 🤔\n</think>\n\n答案 😀", {"think_in_prompt": True}, ("思考 🤔", "答案 😀")),
    ("<think>\n思考 🤔\n</think>\n\n答案 😀\n", {}, ("思考 🤔", "答案 😀\n")),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), CASES)
def test_every_split_point_gives_the_same_result(
    text: str, kwargs: dict[str, bool], expected: tuple[str | None, str]
) -> None:
    assert split_reasoning(text, **kwargs) == expected
    for cut in range(len(text) + 1):
        assert stream(text, [cut], **kwargs) == expected, cut
    assert stream(text, list(range(len(text))), **kwargs) == expected
    for cuts in itertools.combinations(range(1, len(text)), 2):
        assert stream(text, list(cuts), **kwargs) == expected, cuts


def test_auto_mode_treats_text_before_close_tag_as_reasoning_non_stream_only() -> None:
    text = "thinking in a template-opened block\n</think>\n\nanswer"
    assert split_reasoning(text) == ("thinking in a template-opened block", "answer")
    # A stream told nothing cannot buffer the whole answer to find out: content, verbatim.
    assert stream(text, [5, 20]) == (None, text)
    assert stream(text, [5, 20], think_in_prompt=True) == split_reasoning(text)


def test_tag_split_across_pushes_emits_nothing_early() -> None:
    parser = Qwen3ReasoningParser()
    assert parser.push("<thi") == ("", "")
    assert parser.push("nk>\nHmm") == ("Hmm", "")
    assert parser.push(".\n</th") == (".", "")
    assert parser.push("ink>\n") == ("", "")
    assert parser.push("\nDone") == ("", "Done")
    assert parser.flush() == ("", "")


FRAGMENTS = [
    "<think>",
    "</think>",
    "\n",
    "\n\n",
    " ",
    "a",
    "<",
    "</",
    "<thi",
    "ink>",
    "思",
    "😀",
]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12),
    cuts=st.lists(st.integers(0, 60), max_size=10),
    thinking_enabled=st.booleans(),
    think_in_prompt=st.booleans(),
)
def test_random_streams_match_non_stream(
    parts: list[str], cuts: list[int], thinking_enabled: bool, think_in_prompt: bool
) -> None:
    text = "".join(parts)
    kwargs = {"thinking_enabled": thinking_enabled, "think_in_prompt": think_in_prompt}
    reasoning, content = stream(text, cuts, **kwargs)
    assert (reasoning, content) == split_reasoning(text, **kwargs)
    if not thinking_enabled or (
        "<think>" not in text and "</think>" not in text and not think_in_prompt
    ):
        assert (reasoning, content) == (None, text)
