"""The server-side chat template (text/chat_template.py): same text as transformers'
apply_chat_template, and hostile templates are stopped by the output, step and time limits
before they cost memory or seconds (issue 14: a 200-byte template froze the proxy 9.5 s,
``'ab ' * 3000000`` took 1.9 GB)."""

from __future__ import annotations

import time
import tracemalloc
from types import SimpleNamespace

import pytest

from trtllm_stack.text.chat_template import ChatTemplate, TemplateLimit
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

TOK = load_tokenizer(bundled_qwen3_tokenizer_dir())


def _hostile(source: str, **limits: float) -> ChatTemplate:
    fake = SimpleNamespace(chat_template=source, special_tokens_map={"eos_token": "<|im_end|>"})
    opts = {"max_seconds": 1.0, "max_chars": 100_000, **limits}
    return ChatTemplate(fake, **opts)  # type: ignore[arg-type]


TOOLS = [{"type": "function", "function": {"name": "f", "description": "d",
          "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}]  # fmt: skip
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "terse"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "f", "arguments": {"a": "x"}}}]},
        {"role": "tool", "tool_call_id": "1", "content": "r"},
        {"role": "assistant", "content": "done", "reasoning_content": "why"},
        {"role": "user", "content": "again"},
    ],
]  # fmt: skip


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("thinking", [True, False])
def test_renders_what_transformers_renders(messages, tools, thinking):
    ours = ChatTemplate(TOK, max_seconds=5, max_chars=1_000_000)
    got = ours.render(messages, tools=tools, enable_thinking=thinking)
    want = TOK.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False, enable_thinking=thinking
    )
    assert got == want


def test_reserved_kwargs_named():
    ours = ChatTemplate(TOK, max_seconds=5, max_chars=1_000_000)
    given = {"chat_template": "x", "raise_exception": 1, "range": 2, "eos_token": "e",
             "namespace": 3, "messages": 4, "_private": 5, "enable_thinking": False}  # fmt: skip
    assert ours.refused_kwargs(given) == sorted(set(given) - {"enable_thinking"})


def _limit_of(tpl: ChatTemplate) -> tuple[str, float, int]:
    tracemalloc.start()
    t = time.monotonic()
    try:
        with pytest.raises(TemplateLimit) as info:
            tpl.render([{"role": "user", "content": "x"}] * 300)
        return info.value.limit, time.monotonic() - t, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "source,limit",
    [
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "steps"),
        ("{{ 'ab ' * 3000000 }}", "output"),
        ("{{ ['x'] * 10**9 }}", "output"),
        ("{{ 7 ** 999999999 }}", "output"),
        ("{{ 'a'.ljust(10**9) }}", "output"),
        ("{{ 'a' | center(10**9) }}", "output"),
        ("{{ '%999999999d' | format(1) }}", "output"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
         "{% endfor %}", "output"),
        ("{% for i in range(99999) %}{{ 'y' * 99 }}{% endfor %}", "output"),
        # No range, no big string: 27 million attribute reads over the messages.
        ("{% for a in messages %}{% for b in messages %}{% for c in messages %}"
         "{% if c.role == 'q' %}.{% endif %}{% endfor %}{% endfor %}{% endfor %}", "time"),
    ],
)  # fmt: skip
def test_hostile_templates_stopped(source, limit):
    # Only the time case relies on the deadline; the others must hit their own limit first.
    got, seconds, peak = _limit_of(_hostile(source, max_seconds=1.0 if limit == "time" else 30))
    print(f"{limit}: stopped after {seconds:.3f} s, peak {peak / 1e6:.1f} MB")
    assert got == limit
    assert peak < 20_000_000  # the 100k-character budget, not gigabytes
    assert seconds < 30  # the old render ran for minutes (or until memory ran out)
