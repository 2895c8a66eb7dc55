"""Per-request text pipeline: token ids -> text -> stop strings -> reasoning -> tool calls.

One instance per request; every stage is incremental, so the work per token is proportional
to the new text only. The stages are the shared text modules (detokenizer, stop, parsers);
this module only wires them in the order the proxy needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trtllm_stack.text.detokenizer import IncrementalDetokenizer
from trtllm_stack.text.reasoning import Qwen3ReasoningParser
from trtllm_stack.text.stop import StopMatcher
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

    __slots__ = ("_detok", "_reasoning", "_stop", "_tools", "stopped")

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
        self._reasoning = (
            Qwen3ReasoningParser(thinking_enabled=thinking_enabled, think_in_prompt=think_in_prompt)
            if reasoning
            else None
        )
        self._tools = (
            Qwen3ToolCallParser(tool_names, streaming=tool_call_streaming)
            if tool_names is not None
            else None
        )
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
        text = self._detok.push(token_ids)
        if self._stop is not None and text:
            text, self.stopped = self._stop.push(text)
        return self._parse(text, final=False)

    def finish(self) -> tuple[str, str, list[ToolCallDelta]]:
        """The held-back rest at the end of the stream (or after a stop string)."""
        text = ""
        if not self.stopped:
            text = self._detok.flush()
            if self._stop is not None:
                if text:
                    text, self.stopped = self._stop.push(text)
                if not self.stopped:
                    text += self._stop.flush()
        return self._parse(text, final=True)

    def _parse(self, text: str, *, final: bool) -> tuple[str, str, list[ToolCallDelta]]:
        reasoning = ""
        content = text
        if self._reasoning is not None:
            if text:
                reasoning, content = self._reasoning.push(text)
            if final:
                r, c = self._reasoning.flush()
                reasoning += r
                content += c
        deltas = _NO_DELTAS
        if self._tools is not None:
            if content:
                content, deltas = self._tools.push(content)
            if final:
                c, more = self._tools.flush()
                content += c
                if more:
                    deltas = [*deltas, *more]
        return reasoning, content, deltas
