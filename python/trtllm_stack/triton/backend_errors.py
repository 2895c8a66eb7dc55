"""Error texts of TensorRT-LLM's Triton backend, worded as its source words them.

The scripted engine sends these, so the proxy's mapping is tested against what the real
backend sends; the proxy parses them back (``parse_engine_limit_error``).

Chain for a prompt over the limit (NVIDIA/TensorRT-LLM 1.x):
- cpp/tensorrt_llm/batch_manager/llmRequest.cpp ``LlmRequest::validate``: ``TLLM_THROW("Prompt
  length (%d) exceeds maximum input length (%d). Set log level to info and check TRTGptModel
  logs for how maximum input length is set", mPromptLen, maxInputLen)``; TllmException
  appends `` (<file>:<line>)`` and a stack trace (cpp/tensorrt_llm/common/tllmException.cpp).
- cpp/tensorrt_llm/executor/executorImpl.cpp ``fetchNewRequests``: "Encountered an error when
  fetching new request: " + e.what(), sent as the request's error response.
- triton_backend/inflight_batcher_llm/src/model_instance_state.cc: "Executor failed process
  requestId " + id + " due to the following error: " + response.getErrorMsg(), as a
  TRITONSERVER_ERROR_INTERNAL.
Prompt + max tokens over max_seq_len is not an error there: ``validate`` logs "Prompt length +
number of requested output tokens ... exceeds maximum sequence length (%d). Number of requested
output tokens is changed to (%d)." and generates fewer tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Where TllmException says the throw came from; the line number differs between builds.
LLM_REQUEST_SOURCE = "/src/tensorrt_llm/cpp/tensorrt_llm/batch_manager/llmRequest.cpp"


def prompt_too_long(prompt_len: int, max_input_len: int) -> str:
    return (
        f"Prompt length ({prompt_len}) exceeds maximum input length ({max_input_len})."
        " Set log level to info and check TRTGptModel logs for how maximum input length is set"
    )


def executor_error(request_id: int, message: str, source: str = LLM_REQUEST_SOURCE) -> str:
    """What the Triton client receives for a request the executor refused on fetch."""
    return (
        f"Executor failed process requestId {request_id} due to the following error:"
        f" Encountered an error when fetching new request: {message} ({source})"
    )


def clamped_max_tokens(prompt_len: int, max_tokens: int, max_seq_len: int) -> int:
    """``LlmRequest::validate``: requested output shortened to fit max_seq_len (no error)."""
    if prompt_len + max_tokens > max_seq_len:
        return max(0, max_seq_len - prompt_len)
    return max_tokens


_PROMPT_TOO_LONG = re.compile(r"Prompt length \((\d+)\) exceeds maximum input length \((\d+)\)")


@dataclass(frozen=True, slots=True)
class EngineLimitError:
    prompt_len: int
    max_input_len: int


def parse_engine_limit_error(text: str) -> EngineLimitError | None:
    m = _PROMPT_TOO_LONG.search(text)
    if m is None:
        return None
    return EngineLimitError(prompt_len=int(m.group(1)), max_input_len=int(m.group(2)))
