"""IncrementalDetokenizer against the real Qwen3 tokenizer's own decode."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtllm_stack.text.detokenizer import IncrementalDetokenizer
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

TOK = load_tokenizer(bundled_qwen3_tokenizer_dir())
VOCAB = len(TOK)
SPECIAL = sorted(TOK.all_special_ids)
TAGS = [
    TOK.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")
]

MULTILINGUAL = [
    "Hello, world! 你好，世界。こんにちは 안녕하세요 Привет мир مرحبا بالعالم",
    "emoji: 😀🦩🫠👩‍👩‍👧‍👦 🇫🇷 🏳️‍🌈 and math 𝄞 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√",
    '<think>\n思考中……🤔\n</think>\n\n答案是 42。<tool_call>\n{"name": "f"}\n</tool_call>',
    "Ünïcödé ñ ß ø å — “quotes” ‘single’ … ½ ¾ ₂ ™",
]


def run(ids: list[int], cuts: list[int], **kwargs: bool) -> list[str]:
    detok = IncrementalDetokenizer(TOK, **kwargs)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(ids)), len(ids)]
    out = [detok.push(ids[a:b]) for a, b in itertools.pairwise(bounds)]
    out.append(detok.flush())
    return out


def split_points(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, n), max_size=n)


@pytest.mark.parametrize("skip", [True, False])
def test_real_text_token_by_token_matches_decode_without_replacement_chars(
    skip: bool,
) -> None:
    for text in MULTILINGUAL:
        ids = TOK.encode(text + "<|im_end|>")
        pieces = run(ids, list(range(len(ids))), skip_special_tokens=skip)
        assert "".join(pieces) == TOK.decode(ids, skip_special_tokens=skip)
        assert not any("\ufffd" in p for p in pieces)


def test_characters_really_are_split_across_tokens() -> None:
    # Guard for the test above: these strings do put one character's bytes in 2+ tokens.
    ids = TOK.encode("🦩𝄞🫠")
    assert len(ids) > 3
    detok = IncrementalDetokenizer(TOK)
    outputs = [detok.push([i]) for i in ids]
    assert "" in outputs  # a token that completed no character emitted nothing
    assert "".join(outputs) + detok.flush() == "🦩𝄞🫠"


def test_qwen3_tags_kept_special_tokens_dropped() -> None:
    ids = [
        *TAGS,
        TOK.convert_tokens_to_ids("<|im_end|>"),
        TOK.convert_tokens_to_ids("<|endoftext|>"),
    ]
    assert "".join(run(ids, [])) == "<think></think><tool_call></tool_call>"
    assert "".join(run(ids, [], skip_special_tokens=False)).endswith("<|im_end|><|endoftext|>")


def test_invalid_and_truncated_bytes_become_replacement_like_decode() -> None:
    lone = TOK.encode("é")  # one or two byte tokens; take a continuation-only piece
    flamingo = TOK.encode("🦩")
    for ids in (
        [flamingo[0]],
        [flamingo[-1]],
        flamingo[:-1] + lone,
        [flamingo[-1], *lone],
    ):
        pieces = run(ids, list(range(len(ids))))
        assert "".join(pieces) == TOK.decode(ids)
        assert "\ufffd" in "".join(pieces)


def test_ids_past_the_vocabulary_decode_to_nothing() -> None:
    ids = [*TOK.encode("ab"), VOCAB + 5, 151935, *TOK.encode("c")]
    assert "".join(run(ids, [1, 3])) == TOK.decode(ids) == "abc"


random_ids = st.lists(
    st.one_of(
        st.integers(0, VOCAB + 20),
        st.sampled_from(SPECIAL + TAGS),
        # Byte tokens (single bytes, incl. lone lead/continuation bytes).
        st.integers(0, 255),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), skip=st.booleans())
def test_random_ids_any_chunking_equals_decode(data: st.DataObject, skip: bool) -> None:
    ids = data.draw(random_ids)
    cuts = data.draw(split_points(len(ids)))
    assert "".join(run(ids, cuts, skip_special_tokens=skip)) == TOK.decode(
        ids, skip_special_tokens=skip
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_unicode_text_any_chunking_never_splits_a_character(
    data: st.DataObject,
) -> None:
    text = data.draw(st.text(max_size=30) | st.sampled_from(MULTILINGUAL))
    ids = TOK.encode(text)
    cuts = data.draw(split_points(len(ids)))
    pieces = run(ids, cuts)
    # run() skips special tokens, so text such as "<|endoftext|>" decodes to nothing.
    assert "".join(pieces) == TOK.decode(ids, skip_special_tokens=True)
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generic_window_fallback_matches_decode_on_valid_text(
    data: st.DataObject,
) -> None:
    text = data.draw(st.text(max_size=20) | st.sampled_from(MULTILINGUAL))
    ids = TOK.encode(text)
    pieces = run(ids, data.draw(split_points(len(ids))), use_byte_table=False)
    assert "".join(pieces) == TOK.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("skip", [True, False])
def test_every_added_token_decodes_like_the_tokenizer(skip: bool) -> None:
    added = sorted(TOK.added_tokens_decoder)
    assert len(added) > 20
    for idx in added:
        assert "".join(run([idx, 40, idx], [1, 2], skip_special_tokens=skip)) == TOK.decode(
            [idx, 40, idx], skip_special_tokens=skip
        ), idx
