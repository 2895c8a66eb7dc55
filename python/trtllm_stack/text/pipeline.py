"""Per-request text pipeline: token ids -> text -> stop strings -> reasoning -> tool calls.

One instance per request; every stage is incremental, so the work per token is proportional
to the new text only. The stages are the shared text modules (detokenizer, stop, parsers);
this module only wires them in the order the proxy needs. The streaming reply and the
non-streaming one run the same pipeline over the same ids, so they cannot disagree.

Tags by id (``text/tags.py``): where the tokenizer has one token per tag and a parser is on,
the ids are cut at each tag token; the parsers get the text between tags as text and each
tag token as a :class:`Tag`. Stop strings still see the tag's text (a stop of
``"</think>"`` matches the token), so each tag's place in the text is tracked through the
stop matcher: a tag the matcher is still holding back is released once all of it is
through, and a tag cut by a stop string is left as the text before the stop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from trtllm_stack.text.detokenizer import IncrementalDetokenizer
from trtllm_stack.text.reasoning import Qwen3ReasoningParser
from trtllm_stack.text.stop import StopMatcher
from trtllm_stack.text.tags import Tag, tag_ids
from trtllm_stack.text.tool_calls import (
    Qwen3ToolCallParser,
    ToolCallDelta,
    ToolCallStreaming,
)

_NO_DELTAS: list[ToolCallDelta] = []


class TextPipeline:
    """``push(ids)`` / ``finish()`` return ``(reasoning, content, tool_deltas)``.

    After a stop string matched, :attr:`stopped` is true and further pushes yield nothing;
    the caller then cancels the engine request and calls :meth:`finish`.
    """

    __slots__ = (
        "_detok",
        "_emitted",
        "_fed",
        "_marks",
        "_reasoning",
        "_stop",
        "_tags",
        "_tools",
        "_unreleased",
        "stopped",
    )

    def __init__(
        self,
        tokenizer: Any,
        *,
        stops: Sequence[str] = (),
        reasoning: bool = False,
        thinking_enabled: bool = True,
        think_in_prompt: bool = False,
        tool_names: Sequence[str] | None = None,
        tool_call_streaming: ToolCallStreaming = "incremental",
    ) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
        self._stop = StopMatcher(stops) if stops else None
        parsing = reasoning or tool_names is not None
        self._tags = tag_ids(tokenizer) if parsing else None
        by_id = self._tags is not None
        self._reasoning = (
            Qwen3ReasoningParser(
                thinking_enabled=thinking_enabled,
                think_in_prompt=think_in_prompt,
                tags_by_id=by_id,
            )
            if reasoning
            else None
        )
        self._tools = (
            Qwen3ToolCallParser(tool_names, streaming=tool_call_streaming, tags_by_id=by_id)
            if tool_names is not None
            else None
        )
        # Tag places through the stop matcher (text offsets since the start of the output).
        self._fed = 0  # characters pushed into the stop matcher
        self._emitted = 0  # characters it let through (released or in _unreleased)
        self._marks: deque[tuple[int, Tag]] = deque()  # tags not yet wholly through
        self._unreleased = ""  # let through from a mark's start on, waiting for its end
        self.stopped = False

    @property
    def called_tools(self) -> bool:
        return self._tools is not None and bool(self._tools.called)

    @property
    def tool_call_truncated(self) -> bool:
        """The output ended inside a tool call whose name was already streamed."""
        return self._tools is not None and self._tools.truncated

    def push(self, token_ids: Sequence[int]) -> tuple[str, str, list[ToolCallDelta]]:
        if self.stopped:
            return "", "", _NO_DELTAS
        tags = self._tags
        if tags is None or tags.keys().isdisjoint(token_ids):
            text = self._detok.push(token_ids)
            if self._stop is None:
                return self._parse([text] if text else [], final=False)
            return self._parse(self._through_stop(text), final=False)
        pieces: list[str] = []
        start = 0
        for i, token in enumerate(token_ids):
            tag = tags.get(token)
            if tag is None:
                continue
            if i > start:
                pieces.extend(self._text_piece(self._detok.push(token_ids[start:i])))
            # The tag's bytes come out of the detokenizer after anything it held back.
            text = self._detok.push(token_ids[i : i + 1])
            if text.endswith(tag):
                pieces.extend(self._text_piece(text[: -len(tag)]))
                pieces.extend(self._tag_piece(tag))
            else:
                pieces.extend(self._text_piece(text))
            start = i + 1
            if self.stopped:
                break
        if start < len(token_ids) and not self.stopped:
            pieces.extend(self._text_piece(self._detok.push(token_ids[start:])))
        return self._parse(pieces, final=False)

    def finish(self) -> tuple[str, str, list[ToolCallDelta]]:
        """The held-back rest at the end of the stream (or after a stop string)."""
        pieces: list[str] = []
        if not self.stopped:
            pieces = self._text_piece(self._detok.flush())
            stop = self._stop
            if stop is not None and not self.stopped:
                held = stop.flush()
                self._emitted += len(held)
                pieces.extend(self._release(held))
        # A tag the stop matcher let only part of through is that much text.
        if self._unreleased:
            pieces.append(self._unreleased)
            self._unreleased = ""
        self._marks.clear()
        return self._parse(pieces, final=True)

    # -- ids -> pieces -------------------------------------------------------------------

    def _text_piece(self, text: str) -> list[str]:
        if not text:
            return []
        if self._stop is None:
            return [text]
        return self._through_stop(text)

    def _tag_piece(self, tag: Tag) -> list[str]:
        if self._stop is None:
            return [tag]
        self._marks.append((self._fed, tag))
        return self._through_stop(tag)

    def _through_stop(self, text: str) -> list[str]:
        assert self._stop is not None
        self._fed += len(text)
        out, self.stopped = self._stop.push(text)
        self._emitted += len(out)
        if not self._marks and not self._unreleased:
            return [out] if out else []
        return self._release(out)

    def _release(self, out: str) -> list[str]:
        """Pieces of the stop matcher's output ``out`` (which ends at ``_emitted``): text,
        and each tag whose text is wholly through."""
        buf = self._unreleased + out
        base = self._emitted - len(buf)  # offset of buf[0]
        end = self._emitted
        pieces: list[str] = []
        marks = self._marks
        pos = 0
        while marks and marks[0][0] < end:
            start, tag = marks[0]
            if start + len(tag) > end:
                break  # partly through: wait for the rest
            marks.popleft()
            if start - base > pos:
                pieces.append(buf[pos : start - base])
            pieces.append(tag)
            pos = start - base + len(tag)
        if marks and marks[0][0] < end:
            keep = marks[0][0] - base
            if keep > pos:
                pieces.append(buf[pos:keep])
            self._unreleased = buf[keep:]
        else:
            if pos < len(buf):
                pieces.append(buf[pos:])
            self._unreleased = ""
        return pieces

    # -- pieces -> parsers ---------------------------------------------------------------

    def _parse(self, pieces: list[str], *, final: bool) -> tuple[str, str, list[ToolCallDelta]]:
        reasoning_parser = self._reasoning
        tools = self._tools
        if reasoning_parser is None and tools is None:
            return "", "".join(pieces), _NO_DELTAS
        reasoning: list[str] = []
        content: list[str] = []
        deltas = _NO_DELTAS
        for piece in pieces:
            forward = False
            if reasoning_parser is None:
                forward = type(piece) is Tag
                text = "" if forward else piece
            elif type(piece) is Tag:
                r, text, forward = reasoning_parser.push_tag(piece)
                reasoning.append(r)
            else:
                r, text = reasoning_parser.push(piece)
                reasoning.append(r)
            if tools is None:
                content.append(text)
                if forward:
                    content.append(piece)
                continue
            if text:
                c, more = tools.push(text)
                content.append(c)
                if more:
                    deltas = more if deltas is _NO_DELTAS else [*deltas, *more]
            if forward:
                c, more = tools.push_tag(piece)
                content.append(c)
                if more:
                    deltas = more if deltas is _NO_DELTAS else [*deltas, *more]
        if final:
            if reasoning_parser is not None:
                r, c = reasoning_parser.flush()
                reasoning.append(r)
                if tools is None:
                    content.append(c)
                elif c:
                    c, more = tools.push(c)
                    content.append(c)
                    if more:
                        deltas = more if deltas is _NO_DELTAS else [*deltas, *more]
            if tools is not None:
                c, more = tools.flush()
                content.append(c)
                if more:
                    deltas = [*deltas, *more]
        return "".join(reasoning), "".join(content), deltas
