"""The block token cache against the real Qwen3 tokenizer: the split claim, bit-identical
ids over random texts and growing conversations, the fallbacks and the byte bound."""

from __future__ import annotations

import random
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer

from trtllm_stack.bench.long_prompts import conversation, prose
from trtllm_stack.text.token_cache import BlockTokenCache, split_points
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

TOK = load_tokenizer(bundled_qwen3_tokenizer_dir())
BACKEND = TOK.backend_tokenizer
MARKERS = sorted(split_points(BACKEND))

# Pieces chosen for the places where a neighbour could matter: whitespace runs (the split
# regex's \s+(?!\S)), newlines and \r, contractions ('s, 'll), digits (split one by one),
# punctuation runs, combining marks and U+0338 (NFC composes ">" + U+0338), CJK, emoji,
# and near-misses of markers.
PIECES = [
    " ", "  ", "\n", "\n\n", "\r\n", "\t", " \n ", "'s", "'ll", "'S", "a", "Ab", "hello",
    "world", "0", "12", "3.5", "!!", "?!\n", ".", "-", "{", '"', "\u0301", "\u0338", "e\u0301",
    "é", "ß", "東京", "😀", "👩‍👩‍👧", "<", ">", "|", "<|", "|>", "<|im_", "think>", "</",
    "<think", "_end|>",
]  # fmt: skip
texts = st.lists(
    st.one_of(st.sampled_from(PIECES), st.sampled_from(MARKERS), st.text(max_size=6)),
    max_size=40,
).map("".join)


def full(text: str) -> list[int]:
    return BACKEND.encode(text, add_special_tokens=False).ids


def test_every_qwen3_added_token_is_a_split_point():
    assert len(MARKERS) == len(BACKEND.get_added_tokens_decoder()) == 26
    assert {"<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>"} <= set(MARKERS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(texts, st.sampled_from(MARKERS)), max_size=4), texts)
def test_ids_of_a_block_do_not_depend_on_its_neighbours(pairs, tail):
    """The claim itself: encode(A + S + B) == encode(A) + [S] + encode(B) for any marker S,
    including blocks that end or start with whitespace, combining marks or marker halves."""
    text = "".join(block + marker for block, marker in pairs) + tail
    expected: list[int] = []
    for block, marker in pairs:
        expected += full(block)
        expected.append(BACKEND.token_to_id(marker))
    assert full(text) == expected + full(tail)


def test_without_a_marker_blocks_do_depend_on_neighbours():
    # What makes the marker necessary (and shows the property test above can fail).
    assert full("hello" + "world") != full("hello") + full("world")
    assert full("x  " + "y") != full("x  ") + full("y")
    pre = BACKEND.pre_tokenizer.pre_tokenize_str
    assert [p for p, _ in pre("a  " + "b")] != [p for p, _ in pre("a  ")] + [p for p, _ in pre("b")]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=6))
def test_cached_encode_is_bit_identical_to_a_full_encode(parts):
    cache = BlockTokenCache(BACKEND, 1 << 20)
    assert cache.enabled
    for text in (*parts, "".join(parts), "".join(reversed(parts))):
        assert list(cache.encode(text)) == full(text)


def _render(messages, tools=None) -> str:
    return TOK.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )


def test_growing_conversation_turn_by_turn_with_reasoning_and_tools():
    """Each turn equals a full encode; later turns are mostly hits. Earlier assistant turns
    carry reasoning_content, which the template drops once a later user query exists, and a
    multi-step tool exchange keeps it until the next user message: earlier text changes as
    the conversation grows, and the ids must follow."""
    cache = BlockTokenCache(BACKEND, 64 << 20)
    _, tools = conversation(1, tools=5, seed=11, doc_words=400)
    previous_hits = 0
    for turns in range(1, 7):
        messages, _ = conversation(turns, seed=11, doc_words=400, answer_words=40)
        if turns % 2 == 0:
            # a tool round after the last query: assistant (reasoning kept) -> tool -> ...
            messages += [
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": prose(random.Random(turns), 30),
                    "tool_calls": [
                        {"type": "function", "function": {"name": "f", "arguments": {"q": 1}}}
                    ],
                },
                {"role": "tool", "content": prose(random.Random(-turns), 50)},
            ]
        for with_tools in (None, tools):
            text = _render(messages, with_tools)
            # reasoning is rendered only for the tool round after the last user query
            assert ("<think>" in text) == (turns % 2 == 0)
            assert list(cache.encode(text)) == full(text)
        assert cache.hits > previous_hits or turns == 1
        previous_hits = cache.hits
    assert cache.hit_tokens > cache.miss_tokens


def test_lru_is_bounded_by_bytes_and_stays_exact():
    cache = BlockTokenCache(BACKEND, 20_000)
    messages, _ = conversation(8, seed=5, doc_words=800)
    for turns in range(2, 9):
        text = _render(messages[: 2 * turns])
        assert list(cache.encode(text)) == full(text)
        assert 0 < cache.bytes <= 20_000
    # A block larger than the whole budget is encoded but never stored.
    big = "x" * 30_000
    assert list(cache.encode(big)) == full(big)
    assert big not in cache._entries


def test_zero_bytes_disables_the_cache():
    cache = BlockTokenCache(BACKEND, 0)
    text = _render(conversation(2, seed=1, doc_words=100)[0])
    assert not cache.enabled
    assert list(cache.encode(text)) == full(text)
    assert len(cache) == 0 and cache.hits == cache.misses == 0


def test_markers_that_strip_or_normalize_are_not_split_points():
    tok = Tokenizer.from_str(BACKEND.to_str())
    tok.add_tokens(
        [
            AddedToken("<strip>", lstrip=True, rstrip=True),
            AddedToken("<norm>", normalized=True),
            AddedToken("<word>", single_word=True),
        ]
    )
    points = split_points(tok)
    assert "<|im_end|>" in points
    assert not {"<strip>", "<norm>", "<word>"} & set(points)
    cache = BlockTokenCache(tok, 1 << 20)
    for text in ("a  <strip>  b<|im_end|>c", "x<norm>\u0338y", "ab<word>cd <word> e"):
        assert list(cache.encode(text)) == tok.encode(text, add_special_tokens=False).ids


def test_a_truncating_tokenizer_gets_a_full_encode():
    tok = Tokenizer.from_str(BACKEND.to_str())
    tok.enable_truncation(8)
    cache = BlockTokenCache(tok, 1 << 20)
    assert not cache.enabled
    text = "hello world<|im_end|>and more text here than eight tokens"
    assert list(cache.encode(text)) == tok.encode(text, add_special_tokens=False).ids


def test_concurrent_threads_get_exact_ids():
    cache = BlockTokenCache(BACKEND, 200_000)  # small: threads also evict
    messages, _ = conversation(6, seed=9, doc_words=600)
    prompts = [_render(messages[: 2 * t]) for t in range(1, 4)]
    expected = [full(p) for p in prompts]
    failures: list[int] = []

    def work(k: int) -> None:
        for i in range(6):
            j = (k + i) % len(prompts)
            if list(cache.encode(prompts[j])) != expected[j]:
                failures.append(j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert cache.bytes <= 200_000
