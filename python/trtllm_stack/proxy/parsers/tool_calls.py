"""Qwen3 / Hermes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` parsing.

Streaming choice: a ``<tool_call>`` block is buffered until its closing tag, then
validated as a whole. A valid block yields two deltas, ``(index, id, name)`` and then
``(index, arguments)``; an invalid one (bad JSON, no name, a name not in ``tool_names``,
arguments that are not an object) and an unterminated one at end of stream come back as
the raw text, as content. Emitting the name and argument fragments while the block is
still arriving (as vLLM does) cannot keep that promise: a block cut off by max_tokens, or
one whose JSON breaks late, would already have been sent as a tool call. Clients
assemble tool calls before acting on them, so the delay costs nothing visible.

The closing tag is recognised outside JSON strings only, so ``"</tool_call>"`` inside an
argument value does not end the block. Brace/string state is tracked incrementally over
the new text only, so per push the work is O(len(new text)).

Whitespace right before a valid call is dropped, and so is whitespace after a call unless
more content follows (then it stays, so words do not run together): a turn made only of
tool calls has empty content and ``"Sure <call> ok"`` gives ``"Sure ok"``. Everything else
outside valid blocks is content, character for character.
:func:`parse_tool_calls` runs the same machine over the whole text, so streaming and
non-streaming results agree.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass

from trtllm_stack.proxy.parsers.reasoning import partial_tag_suffix

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

# Characters that change the scanner state outside / inside a JSON string.
_OUTSIDE_STRING = re.compile(r'["{}<]')
_INSIDE_STRING = re.compile(r'["\\]')


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str | None


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; clients would choke on arguments containing them.
    raise ValueError(name)


def validate_block(inner: str, tool_names: Collection[str] | None) -> tuple[str, str] | None:
    """``(name, arguments JSON)`` for a valid block body, else None."""
    try:
        obj = json.loads(inner, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    if tool_names is not None and name not in tool_names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        # Some models double-encode; accept a string only if it is a JSON object.
        try:
            if not isinstance(json.loads(args, parse_constant=_reject_constant), dict):
                return None
        except (ValueError, RecursionError):
            return None
        return name, args
    if not isinstance(args, dict):
        return None
    return name, json.dumps(args, ensure_ascii=False, separators=(",", ":"))


_TEXT, _BLOCK = 0, 1


class Qwen3ToolCallParser:
    """Streaming ``(content_delta, tool_call_deltas)``; see the module docstring."""

    __slots__ = (
        "_after_call",
        "_block",
        "_depth",
        "_escape",
        "_held",
        "_in_string",
        "_index",
        "_pending_ws",
        "_state",
        "_tool_names",
    )

    def __init__(self, tool_names: Collection[str] | None = None) -> None:
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self._state = _TEXT
        self._held = ""  # TEXT: partial "<tool_call>"; BLOCK: partial "</tool_call>"
        self._pending_ws = ""  # trailing content whitespace that may precede a call
        self._after_call = False  # only whitespace since the last valid call
        self._index = 0
        self._block: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape = False

    @property
    def called(self) -> bool:
        return self._index > 0

    def _content(self, text: str) -> str:
        if self._pending_ws:
            text = self._pending_ws + text
        body = text.rstrip()
        self._pending_ws = text[len(body) :]
        if body:
            self._after_call = False
        return body

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        buf = self._held + text if self._held else text
        self._held = ""
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while buf:
            if self._state == _TEXT:
                start = buf.find(OPEN)
                if start == -1:
                    keep = partial_tag_suffix(buf, OPEN)
                    if keep:
                        self._held = buf[-keep:]
                        buf = buf[:-keep]
                    content.append(self._content(buf))
                    break
                content.append(self._content(buf[:start]))
                self._state = _BLOCK
                self._block = [OPEN]
                self._depth = 0
                self._in_string = self._escape = False
                buf = buf[start + len(OPEN) :]
            else:
                end = self._scan(buf)
                if end == -1:
                    break
                self._block.append(buf[:end])
                buf = buf[end:]
                self._state = _TEXT
                self._finish_block(content, deltas)
        return "".join(content), deltas

    def _scan(self, buf: str) -> int:
        """Advance the JSON/close-tag scanner over ``buf``.

        Returns the index just past ``</tool_call>`` if it closes the block here; else
        -1 after storing ``buf`` in the block (minus a possible partial closing tag,
        which is kept in ``_held``).
        """
        pos = 0
        n = len(buf)
        if self._escape and n:
            self._escape = False
            pos = 1
        while pos < n:
            if self._in_string:
                m = _INSIDE_STRING.search(buf, pos)
                if m is None:
                    break
                pos = m.end()
                if m.group() == '"':
                    self._in_string = False
                elif pos < n:
                    pos += 1  # the escaped character
                else:
                    self._escape = True
                continue
            m = _OUTSIDE_STRING.search(buf, pos)
            if m is None:
                break
            i = m.start()
            ch = m.group()
            pos = i + 1
            if ch == "<":
                if buf.startswith(CLOSE, i):
                    return i + len(CLOSE)
                if CLOSE.startswith(buf[i:]):
                    self._block.append(buf[:i])
                    self._held = buf[i:]
                    return -1
            elif ch == "{":
                self._depth += 1
            elif ch == "}":
                if self._depth:
                    self._depth -= 1
            elif self._depth:  # a quote inside the JSON object opens a string
                self._in_string = True
        self._block.append(buf)
        return -1

    def _finish_block(self, content: list[str], deltas: list[ToolCallDelta]) -> None:
        raw = "".join(self._block)
        self._block = []
        parsed = validate_block(raw[len(OPEN) : -len(CLOSE)], self._tool_names)
        if parsed is None:
            content.append(self._content(raw))
            return
        name, arguments = parsed
        self._pending_ws = ""
        self._after_call = True
        deltas.append(ToolCallDelta(self._index, new_call_id(), name, None))
        deltas.append(ToolCallDelta(self._index, None, None, arguments))
        self._index += 1

    def flush(self) -> tuple[str, list[ToolCallDelta]]:
        held, self._held = self._held, ""
        if self._state == _BLOCK:
            text = "".join(self._block) + held
            self._block = []
            self._state = _TEXT
        else:
            text = held
        # Whitespace that only follows the last call is dropped.
        out = "" if self._after_call and not text else self._pending_ws + text
        self._pending_ws = ""
        return out, []


def parse_tool_calls(
    text: str, tool_names: Collection[str] | None = None
) -> tuple[str, list[ToolCall]]:
    """Non-streaming: ``(content, tool calls)`` with the same rules as the stream."""
    parser = Qwen3ToolCallParser(tool_names)
    content, deltas = parser.push(text)
    tail, _ = parser.flush()
    calls: list[ToolCall] = []
    for delta in deltas:
        if delta.name is not None:
            calls.append(ToolCall(delta.id or new_call_id(), delta.name, ""))
        elif delta.arguments is not None:
            calls[-1].arguments += delta.arguments
    return content + tail, calls
