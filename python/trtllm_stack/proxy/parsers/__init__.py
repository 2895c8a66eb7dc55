"""Output parsers: Qwen3 reasoning (``<think>``) and tool calls (``<tool_call>``)."""

from trtllm_stack.proxy.parsers.reasoning import Qwen3ReasoningParser, split_reasoning
from trtllm_stack.proxy.parsers.tool_calls import (
    Qwen3ToolCallParser,
    ToolCall,
    ToolCallDelta,
    parse_tool_calls,
)

__all__ = [
    "Qwen3ReasoningParser",
    "Qwen3ToolCallParser",
    "ToolCall",
    "ToolCallDelta",
    "parse_tool_calls",
    "split_reasoning",
]
