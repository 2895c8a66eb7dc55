"""The scripted engine's embedding_bias rule (BiasRule): forced and banned tokens, EOS, and
guided decoding with the real XGrammar, where the grammar wins."""

from __future__ import annotations

import json

import numpy as np

from trtllm_stack.triton.scripted import BiasRule, token_stream

END = 151645  # <|im_end|>
VOCAB = 151936  # Qwen3's padded vocabulary


def rule(entries: dict[int, float], fallback=(7, 8, 9)) -> BiasRule | None:
    bias = np.zeros(VOCAB, dtype=np.float32)
    for token, value in entries.items():
        bias[token] = value
    return BiasRule.from_bias(bias, fallback)


def stream(script, entries, *, end_id=END, min_tokens=0, filler=(7, 8), limit=12):
    out = []
    for token in token_stream(
        script, end_id=end_id, min_tokens=min_tokens, filler=filler, bias=rule(entries)
    ):
        out.append(token)
        if len(out) >= limit:  # the caller's max tokens
            break
    return out


def test_small_biases_change_nothing_and_build_no_rule():
    assert rule({}) is None
    assert rule({5: 49.9, 6: -49.9}) is None
    assert stream([1, 2, 3], {}) == [1, 2, 3]


def test_banned_script_token_becomes_the_first_fallback_that_is_not_banned():
    assert stream([1, 2, 3], {2: -100}) == [1, 7, 3]
    assert stream([1, 2, 3], {2: -100, 7: -60}) == [1, 8, 3]
    # Every fallback banned: the lowest id that is not.
    assert stream([1, 2, 3], {0: -100, 2: -100, 7: -100, 8: -100, 9: -100}) == [1, 1, 3]


def test_forced_token_is_emitted_at_every_step_highest_bias_first():
    assert stream([1, 2, 3], {42: 100}, limit=5) == [42] * 5
    assert stream([1, 2, 3], {42: 60, 43: 90, 41: 90}, limit=3) == [41] * 3  # tie: lowest id


def test_forcing_end_id_ends_once_min_tokens_allow_it():
    assert stream([1, 2, 3], {END: 100}) == []
    assert stream([1, 2, 3], {END: 100}, min_tokens=2) == [1, 2]
    assert stream([1, 2, 3], {END: 100}, end_id=-1, limit=3) == [END] * 3  # ignore_eos


def test_banned_end_id_never_ends_the_reply():
    assert stream([1, 2, END, 3], {END: -100}, limit=7) == [1, 2, 3, 7, 8, 7, 8]
    # Banned filler tokens are substituted too.
    assert stream([1], {END: -100, 7: -100}, limit=4) == [1, 8, 8, 8]


def test_unbiased_stream_is_unchanged_by_the_rule_path():
    # Same EOS and min_tokens semantics as the unbiased stream when nothing is extreme there.
    script, filler = [1, 2, END, 3], [7, 8]
    for min_tokens in (0, 3, 6):
        plain = list(token_stream(script, end_id=END, min_tokens=min_tokens, filler=filler))
        assert stream(script, {99: -100}, min_tokens=min_tokens, filler=filler) == plain


def guided_text(guided, tok, guide_type, guide, reply, entries, limit=64):
    g, _ = guided
    ids = tok.encode(reply, add_special_tokens=False).ids
    run = g.start(guide_type, guide)
    out = []
    for token in token_stream(
        ids, end_id=END, min_tokens=0, filler=[], guided=run, bias=rule(entries)
    ):
        out.append(token)
        if len(out) >= limit:
            break
    return out, tok.decode(out)


def test_grammar_wins_over_a_forced_token(guided, tok):
    yes = tok.encode("yes", add_special_tokens=False).ids[0]
    x = tok.encode("x", add_special_tokens=False).ids[0]
    # "x" is forced but the regex allows only yes|no: the grammar decides, the document ends.
    _, text = guided_text(guided, tok, "regex", "(yes|no)", "maybe", {x: 100})
    assert text in ("yes", "no")
    # A forced token the grammar allows is taken.
    no = tok.encode("no", add_special_tokens=False).ids[0]
    ids, text = guided_text(guided, tok, "regex", "(yes|no)", "yes", {no: 100})
    assert text == "no" and yes not in ids


def test_banned_token_is_avoided_where_the_grammar_leaves_a_choice(guided, tok):
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
            "additionalProperties": False,
        }
    )
    zero = tok.token_to_id("0")
    ids, text = guided_text(guided, tok, "json_schema", schema, "prose", {zero: -100})
    assert zero not in ids
    assert isinstance(json.loads(text)["n"], int)
    # The only token the grammar allows is emitted even when banned (grammar wins).
    y = tok.encode("y", add_special_tokens=False).ids[0]
    ids, text = guided_text(guided, tok, "regex", "y", "", {y: -100})
    assert text == "y"
