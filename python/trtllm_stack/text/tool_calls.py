"""Qwen3 / Hermes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` parsing.

A valid block is a JSON object with a non-empty string ``name`` (one of ``tool_names``
when given) and ``arguments`` (or ``parameters``) that is an object or a string holding a
JSON object; NaN/Infinity are not JSON and make a block invalid, and so does a repeated
``name``/``arguments``/``parameters`` key. A call's ``arguments`` is the model's own text
of that object, verbatim (not re-serialised), or the string's value for a double-encoded
one; an absent ``arguments`` is ``"{}"``.

Two streaming modes (``streaming=``):

``"incremental"`` (the default, as vLLM streams): once a block has shown a complete
``"name": "<allowed name>"`` and its ``"arguments":`` value has started with ``{``, the
parser emits ``(index, id, name)`` and from then on the raw text of the arguments object
as it arrives, one ``(index, arguments=fragment)`` delta per push that brings some. The
fragments concatenate to exactly the arguments text; the rest of the block (the outer
``}``, whitespace, ``</tool_call>``) is never emitted. Blocks whose head does not have
that shape (``arguments`` before ``name``, a ``parameters`` key, another key first, a
double-encoded string, an escape in the name) are buffered until ``</tool_call>`` and then
sent as name + whole arguments, exactly as in buffered mode; an unknown name or text that
is not JSON stays buffered too, so it can still come back as content.

``"buffered"``: every block is held until ``</tool_call>`` and validated whole; a valid one
yields ``(index, id, name)`` and ``(index, arguments)``, anything else comes back as the
raw text, as content (all or nothing).

A block that breaks after its name was streamed (the stream ends inside it - max_tokens,
a stop string - or its JSON turns out invalid at ``</tool_call>``) cannot be taken back:
the call stays as sent, with the fragments already sent as its arguments, and nothing
more of that block is emitted (in particular not as content). :attr:`broken` counts such
calls, :attr:`truncated` says the stream ended inside one (the proxy then reports
finish_reason ``length`` if the engine stopped at max_tokens), and a warning is logged
(index and reason only, no text).

:func:`parse_tool_calls` (non-streaming, over a whole text) and the proxy's non-streaming
reply (the same pipeline over the same ids, ``text/pipeline.py``) run the machine in
buffered mode: nothing has been sent yet, so a broken block is always content there. For
every valid block the streaming deltas of either mode and the non-streaming result agree
(same name, and the fragments concatenate to the same arguments text); they differ only for
a block that broke after its name was streamed.

The closing tag is recognised outside JSON strings only, so ``"</tool_call>"`` inside an
argument value does not end the block. Brace/string state is tracked incrementally over
the new text only, and the block head (``{"name": "...", "arguments": ``) is read once,
so per push the work is O(len(new text)).

``tags_by_id=True`` (what the pipeline uses with Qwen3's tokenizer, see ``text/tags.py``):
the tags arrive as :meth:`Qwen3ToolCallParser.push_tag` calls, one per tag token, and text
is never searched for them. A ``</tool_call>`` token ends the block wherever the JSON
scanner is (an unbalanced quote in the arguments no longer swallows the closing tag and
the calls after it), a ``<tool_call>`` token inside a block ends that block as if it had
been closed (a missing ``</tool_call>`` between two calls), and the same characters
spelled out as text are text.

Whitespace right before a call is dropped, and so is whitespace after a call unless more
content follows (then it stays, so words do not run together): a turn made only of tool
calls has empty content and ``"Sure <call> ok"`` gives ``"Sure ok"``. Everything else
outside calls is content, character for character.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from trtllm_stack.text.reasoning import partial_tag_suffix
from trtllm_stack.text.tags import TOOL_CLOSE as CLOSE
from trtllm_stack.text.tags import TOOL_OPEN as OPEN

ToolCallStreaming = Literal["incremental", "buffered"]

log = logging.getLogger("trtllm_stack.proxy")

# Characters that change the scanner state outside / inside a JSON string.
_OUTSIDE_STRING = re.compile(r'["{}<]')
_OUTSIDE_STRING_BY_ID = re.compile(r'["{}]')  # tags_by_id: no closing tag in the text
_INSIDE_STRING = re.compile(r'["\\]')
_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, i: int = 0) -> int:
    """Index of the first non-JSON-whitespace character at or after ``i``."""
    m = _WS.match(text, i)
    return m.end() if m is not None else i


# Keys read from a block; repeating one of them makes the block ambiguous (invalid).
_READ_KEYS = frozenset({"name", "arguments", "parameters"})


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ToolCallDelta:
    """A name delta has ``id`` and ``name`` (``arguments`` None, sent as ``""``); an
    arguments delta has only ``arguments`` (a fragment, or the whole text)."""

    index: int
    id: str | None
    name: str | None
    arguments: str | None


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; clients would choke on arguments containing them.
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _members(text: str) -> dict[str, tuple[Any, str]] | None:
    """``{key: (value, raw value text)}`` of a JSON object text, else None.

    Accepts exactly what ``json.loads`` accepts for an object (minus NaN/Infinity and
    repeated read keys). Raises RecursionError for absurd nesting.
    """
    ws = _skip_ws
    i = ws(text)
    if not text.startswith("{", i):
        return None
    i = ws(text, i + 1)
    out: dict[str, tuple[Any, str]] = {}
    try:
        if text.startswith("}", i):
            i += 1
        else:
            while True:
                if not text.startswith('"', i):
                    return None
                key, i = _DECODER.raw_decode(text, i)
                i = ws(text, i)
                if not text.startswith(":", i):
                    return None
                i = ws(text, i + 1)
                value, end = _DECODER.raw_decode(text, i)
                if key in out and key in _READ_KEYS:
                    return None
                out[key] = (value, text[i:end])
                i = ws(text, end)
                if text.startswith(",", i):
                    i = ws(text, i + 1)
                elif text.startswith("}", i):
                    i += 1
                    break
                else:
                    return None
    except ValueError:
        return None
    if ws(text, i) != len(text):
        return None
    return out


def validate_block(inner: str, tool_names: Collection[str] | None) -> tuple[str, str] | None:
    """``(name, arguments JSON text)`` for a valid block body, else None."""
    try:
        members = _members(inner)
    except RecursionError:
        return None
    if members is None:
        return None
    name = members["name"][0] if "name" in members else None
    if not isinstance(name, str) or not name:
        return None
    if tool_names is not None and name not in tool_names:
        return None
    found = members.get("arguments") or members.get("parameters")
    if found is None:
        return name, "{}"
    args, raw = found
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
    return name, raw


_TEXT, _BLOCK = 0, 1

# Block head states (incremental mode): reading ``{"name": "...", "arguments": {``.
_H_OFF = 0  # not reading the head: buffered mode, fallback, or arguments streaming
_H_OBJ = 1  # before the outer "{"
_H_KEY = 2  # before a key's opening quote
_H_KEYSTR = 3  # inside a key
_H_COLON = 4  # before ":"
_H_VALUE = 5  # before the value of "name" / "arguments"
_H_NAMESTR = 6  # inside the name string
_H_NEXT = 7  # after the name value, before ","


class Qwen3ToolCallParser:
    """Streaming ``(content_delta, tool_call_deltas)``; see the module docstring."""

    __slots__ = (
        "_after_call",
        "_args_end",
        "_args_start",
        "_block",
        "_by_id",
        "_call_index",
        "_depth",
        "_escape",
        "_head",
        "_held",
        "_in_string",
        "_incremental",
        "_index",
        "_key",
        "_name",
        "_outside",
        "_pending_ws",
        "_sent",
        "_size",
        "_state",
        "_str",
        "_tool_names",
        "broken",
        "truncated",
    )

    def __init__(
        self,
        tool_names: Collection[str] | None = None,
        *,
        streaming: ToolCallStreaming = "incremental",
        tags_by_id: bool = False,
    ) -> None:
        if streaming not in ("incremental", "buffered"):
            raise ValueError(f"streaming must be 'incremental' or 'buffered', not {streaming!r}")
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self._incremental = streaming == "incremental"
        self._by_id = tags_by_id
        self._outside = _OUTSIDE_STRING_BY_ID if tags_by_id else _OUTSIDE_STRING
        self._state = _TEXT
        self._held = ""  # TEXT: partial "<tool_call>"; BLOCK: partial "</tool_call>"
        self._pending_ws = ""  # trailing content whitespace that may precede a call
        self._after_call = False  # only whitespace since the last call
        self._index = 0  # index of the next call
        self._block: list[str] = []
        self._size = 0  # characters in _block
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._head = _H_OFF
        self._str: list[str] = []  # the key / name being read
        self._key = ""
        self._name = ""
        self._call_index = -1  # >= 0 while the current block's arguments are streaming
        self._args_start = 0  # block offsets of the streamed arguments object
        self._args_end = -1
        self._sent = 0  # block offset up to which arguments were emitted
        self.broken = 0  # calls that broke after their name was streamed
        self.truncated = False  # the stream ended inside such a call

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
                start = -1 if self._by_id else buf.find(OPEN)
                if start == -1:
                    if self._by_id:
                        content.append(self._content(buf))
                        break
                    keep = partial_tag_suffix(buf, OPEN)
                    if keep:
                        self._held = buf[-keep:]
                        buf = buf[:-keep]
                    content.append(self._content(buf))
                    break
                content.append(self._content(buf[:start]))
                self._open_block()
                buf = buf[start + len(OPEN) :]
            else:
                pos = self._read_head(buf, deltas) if self._head else 0
                stop, closed = self._scan(buf, pos)
                piece = buf[:stop]
                if self._call_index >= 0:
                    self._emit_arguments(piece, deltas)
                self._block.append(piece)
                self._size += len(piece)
                if not closed:
                    self._held = buf[stop:]
                    break
                self._block.append(CLOSE)
                buf = buf[stop + len(CLOSE) :]
                self._state = _TEXT
                self._finish_block(content, deltas, closed=True)
        return "".join(content), deltas

    def push_tag(self, tag: str) -> tuple[str, list[ToolCallDelta]]:
        """One tag token (``tags_by_id``); other tags than ours are text."""
        if tag == OPEN:
            content: list[str] = []
            deltas: list[ToolCallDelta] = []
            if self._state == _BLOCK:  # no </tool_call> before the next call: end it here
                self._state = _TEXT
                self._finish_block(content, deltas, closed=False)
            self._open_block()
            return "".join(content), deltas
        if tag == CLOSE and self._state == _BLOCK:
            content = []
            deltas = []
            self._block.append(CLOSE)
            self._state = _TEXT
            self._finish_block(content, deltas, closed=True)
            return "".join(content), deltas
        return self.push(tag)

    def _open_block(self) -> None:
        self._state = _BLOCK
        self._block = [OPEN]
        self._size = len(OPEN)
        self._depth = 0
        self._in_string = self._escape = False
        self._head = _H_OBJ if self._incremental else _H_OFF

    def _read_head(self, buf: str, deltas: list[ToolCallDelta]) -> int:
        """Read the block head in ``buf`` (incremental mode); return where the scanner
        goes on. Leaves ``_depth``/``_in_string`` as the scanner would have them there.

        Anything but ``{"name": "<allowed>", "arguments": {`` (whitespace aside) turns the
        head reader off before the offending character (the block is then buffered).
        """
        pos = 0
        n = len(buf)
        state = self._head
        while pos < n:
            if state in (_H_KEYSTR, _H_NAMESTR):
                m = _INSIDE_STRING.search(buf, pos)
                if m is None:
                    self._str.append(buf[pos:])
                    pos = n
                    break
                i = m.start()
                self._str.append(buf[pos:i])
                if m.group() == "\\":  # escapes in keys / names: leave it to the buffer
                    state = _H_OFF
                    pos = i
                    break
                value = "".join(self._str)
                self._str = []
                if state == _H_KEYSTR:
                    # "name" first, then "arguments"; anything else (arguments before
                    # name, "parameters", another key) leaves the block to the buffer.
                    if value == ("arguments" if self._name else "name"):
                        self._key = value
                    else:
                        state = _H_OFF
                        pos = i
                        break
                    state = _H_COLON
                else:
                    if not value or (
                        self._tool_names is not None and value not in self._tool_names
                    ):
                        state = _H_OFF
                        pos = i
                        break
                    self._name = value
                    state = _H_NEXT
                self._in_string = False
                pos = i + 1
                continue
            pos = _skip_ws(buf, pos)
            if pos == n:
                break
            ch = buf[pos]
            if state == _H_OBJ and ch == "{":
                self._depth = 1
                state = _H_KEY
            elif state == _H_KEY and ch == '"':
                self._in_string = True
                state = _H_KEYSTR
            elif state == _H_COLON and ch == ":":
                state = _H_VALUE
            elif state == _H_VALUE and self._key == "name" and ch == '"':
                self._in_string = True
                state = _H_NAMESTR
            elif state == _H_VALUE and self._key == "arguments" and ch == "{":
                self._start_call(pos, deltas)
                state = _H_OFF
                pos += 1
                break
            elif state == _H_NEXT and ch == ",":
                state = _H_KEY
            else:
                state = _H_OFF
                break
            pos += 1
        self._head = state
        if state == _H_OFF:
            self._str = []
        return pos

    def _start_call(self, pos: int, deltas: list[ToolCallDelta]) -> None:
        """The arguments object opens at ``pos`` of the current push: announce the call."""
        self._depth = 2
        self._call_index = self._index
        self._index += 1
        self._args_start = self._sent = self._size + pos
        self._args_end = -1
        self._pending_ws = ""
        self._after_call = True
        deltas.append(ToolCallDelta(self._call_index, new_call_id(), self._name, None))

    def _emit_arguments(self, piece: str, deltas: list[ToolCallDelta]) -> None:
        # ``piece`` is about to be appended at block offset ``_size``.
        end = self._args_end if self._args_end >= 0 else self._size + len(piece)
        if end > self._sent:
            fragment = piece[self._sent - self._size : end - self._size]
            self._sent = end
            deltas.append(ToolCallDelta(self._call_index, None, None, fragment))

    def _scan(self, buf: str, pos: int) -> tuple[int, bool]:
        """Advance the JSON/close-tag scanner over ``buf[pos:]``.

        Returns ``(stop, closed)``: ``buf[:stop]`` belongs to the block; if ``closed``,
        ``</tool_call>`` starts at ``stop``, else ``buf[stop:]`` is a possible partial
        closing tag (to be held back).
        """
        n = len(buf)
        if self._escape and pos < n:
            self._escape = False
            pos += 1
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
            m = self._outside.search(buf, pos)
            if m is None:
                break
            i = m.start()
            ch = m.group()
            pos = i + 1
            if ch == "<":
                if buf.startswith(CLOSE, i):
                    return i, True
                if CLOSE.startswith(buf[i:]):
                    return i, False
            elif ch == "{":
                self._depth += 1
            elif ch == "}":
                if self._depth:
                    self._depth -= 1
                    if self._depth == 1 and self._call_index >= 0 and self._args_end < 0:
                        self._args_end = self._size + pos
            elif self._depth:  # a quote inside the JSON object opens a string
                self._in_string = True
        return n, False

    def _reset_block(self) -> None:
        self._block = []
        self._size = 0
        self._head = _H_OFF
        self._str = []
        self._key = self._name = ""
        self._call_index = -1

    def _finish_block(
        self, content: list[str], deltas: list[ToolCallDelta], *, closed: bool
    ) -> None:
        raw = "".join(self._block)
        inner = raw[len(OPEN) : -len(CLOSE)] if closed else raw[len(OPEN) :]
        parsed = validate_block(inner, self._tool_names)
        if self._call_index >= 0:  # already announced: it stays a call whatever comes
            if (
                parsed is None
                or parsed[0] != self._name
                or self._args_end < 0
                or parsed[1] != raw[self._args_start : self._args_end]
            ):
                self._broke(
                    "its JSON is invalid at </tool_call>"
                    if closed
                    else "the next <tool_call> came before its JSON was complete"
                )
            self._reset_block()
            return
        self._reset_block()
        if parsed is None:
            content.append(self._content(raw))
            return
        name, arguments = parsed
        self._pending_ws = ""
        self._after_call = True
        deltas.append(ToolCallDelta(self._index, new_call_id(), name, None))
        deltas.append(ToolCallDelta(self._index, None, None, arguments))
        self._index += 1

    def _broke(self, reason: str) -> None:
        self.broken += 1
        log.warning(
            "tool call %d broke after its name was streamed (%s); it stays as sent,"
            " with %d characters of arguments",
            self._call_index,
            reason,
            self._sent - self._args_start,
        )

    def flush(self) -> tuple[str, list[ToolCallDelta]]:
        held, self._held = self._held, ""
        text = held
        if self._state == _BLOCK:
            self._state = _TEXT
            if self._call_index >= 0:
                self.truncated = True
                self._broke("the output ended inside its block")
                text = ""
            else:
                text = "".join(self._block) + held
            self._reset_block()
        # Whitespace that only follows the last call is dropped.
        out = "" if self._after_call and not text else self._pending_ws + text
        self._pending_ws = ""
        return out, []


def parse_tool_calls(
    text: str, tool_names: Collection[str] | None = None
) -> tuple[str, list[ToolCall]]:
    """Non-streaming: ``(content, tool calls)``, the buffered-mode machine over the whole
    text (a broken block is content; valid blocks give what either stream mode sends)."""
    parser = Qwen3ToolCallParser(tool_names, streaming="buffered")
    content, deltas = parser.push(text)
    tail, _ = parser.flush()
    return content + tail, calls_from_deltas(deltas)


def calls_from_deltas(deltas: Sequence[ToolCallDelta]) -> list[ToolCall]:
    """The calls a stream of deltas amounts to (a name delta starts one, arguments add)."""
    calls: list[ToolCall] = []
    for delta in deltas:
        if delta.name is not None:
            calls.append(ToolCall(delta.id or new_call_id(), delta.name, ""))
        elif delta.arguments is not None:
            calls[-1].arguments += delta.arguments
    return calls
