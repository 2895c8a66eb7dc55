"""The scripted engine's token stream: min_tokens / ignore_eos, and guided decoding with the
real XGrammar (every emitted token accepted by a fresh matcher, documents complete)."""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr

from trtllm_stack.triton.scripted import token_stream
from trtllm_stack.triton.scripted_guide import GuideError

END = 151645  # <|im_end|>


def test_min_tokens_holds_back_eos_and_ignore_eos_never_ends():
    script, filler = [1, 2, END, 3], [7, 8]
    assert list(token_stream(script, end_id=END, min_tokens=0, filler=filler)) == [1, 2]
    assert list(token_stream(script, end_id=END, min_tokens=3, filler=filler)) == [1, 2, 3]
    assert list(token_stream(script, end_id=END, min_tokens=6, filler=filler)) == [
        1, 2, 3, 7, 8, 7,
    ]  # fmt: skip
    endless = token_stream([1], end_id=-1, min_tokens=0, filler=filler)
    assert [next(endless) for _ in range(5)] == [1, 7, 8, 7, 8]


def _run(guided, tok, guide_type, guide, text):
    g, path = guided
    ids = tok.encode(text, add_special_tokens=False).ids
    out = list(
        token_stream(ids, end_id=END, min_tokens=0, filler=[], guided=g.start(guide_type, guide))
    )
    # An independent matcher, built from the same file, accepts every token and the stop.
    info = json.loads(path.read_text())
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(info["tokenizer_str"])
    ti = xgr.TokenizerInfo(
        info["encoded_vocab"],
        xgr.VocabType(meta["vocab_type"]),
        stop_token_ids=info["stop_token_ids"],
        add_prefix_space=meta["add_prefix_space"],
    )
    compiler = xgr.GrammarCompiler(ti, max_threads=1)
    compiled = {
        "json": lambda: compiler.compile_builtin_json_grammar(),
        "json_schema": lambda: compiler.compile_json_schema(guide),
        "regex": lambda: compiler.compile_regex(guide),
        "ebnf_grammar": lambda: compiler.compile_grammar(guide),
    }[guide_type]()
    matcher = xgr.GrammarMatcher(compiled)
    assert all(matcher.accept_token(t) for t in out)
    assert matcher.accept_token(END) and matcher.is_terminated()
    return tok.decode(out)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["alpha", "beta"]},
        "nested": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
    },
    "required": ["name", "age", "tags", "ok", "kind", "nested"],
}


@pytest.mark.parametrize(
    "text",
    ["Plain prose, no JSON at all.", '{"name": "Ada", "age": 3 and prose', '{"name": "A\\"b'],
)
def test_completion_rule_reaches_a_valid_document(guided, tok, text):
    doc = json.loads(_run(guided, tok, "json_schema", json.dumps(SCHEMA), text))
    assert set(doc) == set(SCHEMA["required"]) and doc["kind"] in ("alpha", "beta")


def test_valid_script_is_kept_and_other_guide_types(guided, tok):
    doc = '{"name": "Ada", "age": 36, "tags": [], "ok": true, "kind": "beta", "nested": {"x": 1.5}}'
    assert _run(guided, tok, "json_schema", json.dumps(SCHEMA), doc + " trailing") == doc
    assert _run(guided, tok, "json", None, "prose") == "{}"
    assert _run(guided, tok, "regex", r"\d{3}-[a-z]+", "no") == "000-a"
    assert _run(guided, tok, "ebnf_grammar", 'root ::= "yes" | "no"', "maybe") == "no"


def test_bad_guides_fail_the_request(guided):
    g, _ = guided
    with pytest.raises(GuideError, match="invalid json_schema guide"):
        g.start("json_schema", '{"type": "objec"}')
    with pytest.raises(GuideError, match="invalid regex guide"):
        g.start("regex", "(unclosed")
