"""The scripted engine's choice of reply, with the real Qwen3 tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from trtllm_stack.triton.scripted import DEFAULT_TEXT, ScriptedModel, ends_with_any


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer_dir):
    return Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))


def chat(tok, *turns: tuple[str, str]) -> list[int]:
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return tok.encode(text + "<|im_start|>assistant\n", add_special_tokens=False).ids


def test_reply_directive_emits_exact_tokens_including_special_ones(tok):
    model = ScriptedModel(tok)
    reply = "<think>\nhmm\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    plan = model.plan(chat(tok, ("user", f"please [reply]{reply}[/reply]")))
    assert plan.tokens == tok.encode(reply, add_special_tokens=False).ids
    assert tok.token_to_id("<think>") in plan.tokens  # the real special token, not text pieces
    assert plan.delay_ms is None


def test_latest_user_turn_with_a_directive_wins(tok):
    model = ScriptedModel(tok)
    ids = chat(
        tok,
        ("user", "[reply]first[/reply]"),
        ("assistant", "first"),
        ("user", "[reply]second[/reply] [delay_ms=7.5]"),
    )
    plan = model.plan(ids)
    assert tok.decode(plan.tokens) == "second" and plan.delay_ms == 7.5
    # A later turn without a directive (e.g. a tool result) keeps the last directive.
    ids = chat(
        tok,
        ("user", "[reply]again[/reply]"),
        ("user", "<tool_response>\n42\n</tool_response>"),
    )
    assert tok.decode(model.plan(ids).tokens) == "again"


@pytest.mark.parametrize("n", [0, 5, 333])
def test_default_reply_has_the_configured_length(tok, n):
    plan = ScriptedModel(tok, default_reply_tokens=n).plan(chat(tok, ("user", "hello")))
    assert len(plan.tokens) == n
    assert DEFAULT_TEXT.startswith(tok.decode(plan.tokens[: min(n, 20)]))


def test_stop_sequences_match_suffix_only():
    assert ends_with_any([1, 2, 3], [[2, 3]])
    assert not ends_with_any([1, 2, 3], [[1, 2], []])
    assert not ends_with_any([3], [[2, 3]])
