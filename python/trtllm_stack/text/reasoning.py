"""Qwen3 ``<think>...</think>`` reasoning split, streaming and not.

Qwen3 (up to the 2507 releases) writes ``<think>\\n...\\n</think>\\n\\n`` and then the
answer. Rules, identical for streaming and :func:`split_reasoning`:

- ``thinking_enabled=False`` (``chat_template_kwargs.enable_thinking=false``: the template
  already closed an empty think block in the prompt): all output is content, untouched.
- Output starting with ``<think>``: reasoning until ``</think>``, then content. Output
  that ends before ``</think>`` (max_tokens) is all reasoning.
- ``think_in_prompt=True`` (the rendered prompt ends with an open ``<think>``, as newer
  templates do): reasoning from the first character until ``</think>``.
- Otherwise output without a leading ``<think>`` is content, verbatim.

Reasoning loses the newlines after ``<think>`` and its trailing whitespace; content loses
the newlines right after ``</think>``; empty reasoning is reported as none.

:func:`split_reasoning` with ``think_in_prompt=None`` (the default) additionally treats
output that does not start with ``<think>`` but contains ``</think>`` as reasoning up to
that tag. A stream cannot decide that without buffering the whole answer, so the
streaming parser only does it when told so with ``think_in_prompt=True``; the proxy should
pass ``think_in_prompt=prompt.rstrip().endswith("<think>")``.

Per push the work is O(len(new text)): only the new text and a held-back tail (a partial
tag, or whitespace that may turn out to be trailing) are looked at.

``tags_by_id=True`` (what the pipeline uses with Qwen3's tokenizer, see ``text/tags.py``):
the tags arrive as :meth:`Qwen3ReasoningParser.push_tag` calls, one per tag token, and
:meth:`~Qwen3ReasoningParser.push` text is never searched for them, so ``</think>`` spelled
out inside the reasoning does not end it. Same rules as above, plus: whitespace before the
first tag does not decide anything (``"\n<think>"`` opens reasoning), a ``</think>`` token
before any other output closes the block the prompt opened, a ``<think>`` token inside
reasoning and either think token inside content are text, and a tool-call tag outside
reasoning is passed on (``forward``) to the tool-call parser.
"""

from __future__ import annotations

from trtllm_stack.text.tags import THINK_CLOSE as CLOSE
from trtllm_stack.text.tags import THINK_OPEN as OPEN

_START, _REASONING, _CONTENT = 0, 1, 2


def partial_tag_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``tag``."""
    first = tag[0]
    j = buf.find(first, max(0, len(buf) - len(tag) + 1))
    while j != -1:
        if tag.startswith(buf[j:]):
            return len(buf) - j
        j = buf.find(first, j + 1)
    return 0


class Qwen3ReasoningParser:
    """Streaming split of text into ``(reasoning_delta, content_delta)``."""

    __slots__ = ("_by_id", "_held", "_state", "_strip_newlines", "_think_in_prompt")

    def __init__(
        self,
        *,
        thinking_enabled: bool = True,
        think_in_prompt: bool = False,
        tags_by_id: bool = False,
    ) -> None:
        self._state = _START if thinking_enabled else _CONTENT
        self._think_in_prompt = think_in_prompt
        self._by_id = tags_by_id
        self._held = ""  # unclassified text: a partial tag and/or trailing whitespace
        self._strip_newlines = False  # drop "\n" at the start of the next text

    @property
    def in_reasoning(self) -> bool:
        return self._state == _REASONING

    def push(self, text: str) -> tuple[str, str]:
        state = self._state
        if state == _CONTENT and not self._strip_newlines:
            return "", text
        if self._by_id:
            return self._push_between_tags(text)
        buf = self._held + text if self._held else text
        self._held = ""
        reasoning = ""
        if state == _START:
            if buf.startswith(OPEN):
                buf = buf[len(OPEN) :]
                state = _REASONING
                self._strip_newlines = True
            elif OPEN.startswith(buf):
                self._held = buf  # still undecided ("", "<", "<thi", ...)
                return "", ""
            elif self._think_in_prompt:
                state = _REASONING
                self._strip_newlines = True
            else:
                state = _CONTENT
            self._state = state
        if state == _REASONING:
            if self._strip_newlines:
                buf = buf.lstrip("\n")
                if not buf:
                    return "", ""
                self._strip_newlines = False
            end = buf.find(CLOSE)
            if end == -1:
                keep = partial_tag_suffix(buf, CLOSE)
                body = buf[: len(buf) - keep]
                emit = body.rstrip()
                self._held = buf[len(emit) :]
                return emit, ""
            reasoning = buf[:end].rstrip()
            buf = buf[end + len(CLOSE) :]
            self._state = _CONTENT
            self._strip_newlines = True
        # content
        if self._strip_newlines:
            buf = buf.lstrip("\n")
            if buf:
                self._strip_newlines = False
        return reasoning, buf

    def _push_between_tags(self, text: str) -> tuple[str, str]:
        # tags_by_id: ``text`` holds no tag, so only whitespace handling is left.
        buf = self._held + text if self._held else text
        self._held = ""
        state = self._state
        if state == _START:
            if not buf or buf.isspace():
                self._held = buf  # a <think> token may still follow
                return "", ""
            if not self._think_in_prompt:
                self._state = _CONTENT
                return "", buf
            self._state = state = _REASONING
            self._strip_newlines = True
        if self._strip_newlines:
            buf = buf.lstrip("\n")
            if not buf:
                return "", ""
            self._strip_newlines = False
        if state == _CONTENT:
            return "", buf
        emit = buf.rstrip()
        self._held = buf[len(emit) :]  # whitespace that may turn out to be trailing
        return emit, ""

    def push_tag(self, tag: str) -> tuple[str, str, bool]:
        """One tag token (``tags_by_id``): ``(reasoning, content, forward)``; with
        ``forward`` the tag goes on to the next parser, after ``content``."""
        state = self._state
        if state == _START:
            if tag in (OPEN, CLOSE):
                # <think> opens reasoning; </think> first closes the block the prompt opened.
                self._held = ""
                self._state = _REASONING if tag == OPEN else _CONTENT
                self._strip_newlines = True
                return "", "", False
            if self._think_in_prompt:
                r, c = self._push_between_tags(tag)
                return r, c, False
            held, self._held = self._held, ""
            self._state = _CONTENT
            return "", held, True
        if state == _REASONING:
            if tag == CLOSE:
                self._held = ""  # the reasoning's trailing whitespace
                self._state = _CONTENT
                self._strip_newlines = True
                return "", "", False
            r, c = self._push_between_tags(tag)
            return r, c, False
        if tag in (OPEN, CLOSE):
            return "", self.push(tag)[1], False
        self._strip_newlines = False
        return "", "", True

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if self._state == _REASONING or (self._state == _START and self._think_in_prompt):
            return held.rstrip(), ""
        return "", held


def split_reasoning(
    text: str, *, thinking_enabled: bool = True, think_in_prompt: bool | None = None
) -> tuple[str | None, str]:
    """Non-streaming split: ``(reasoning or None, content)``."""
    if think_in_prompt is None:
        think_in_prompt = thinking_enabled and not text.startswith(OPEN) and CLOSE in text
    parser = Qwen3ReasoningParser(
        thinking_enabled=thinking_enabled, think_in_prompt=think_in_prompt
    )
    reasoning, content = parser.push(text)
    tail_reasoning, tail_content = parser.flush()
    return (reasoning + tail_reasoning) or None, content + tail_content
