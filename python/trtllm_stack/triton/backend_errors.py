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


# An embedding_bias of the wrong length: TLLM_CHECK_WITH_INFO in
# cpp/tensorrt_llm/batch_manager/createNewDecoderRequests.cpp initializeEmbeddingBias, thrown
# inside the executor's step (cpp/tensorrt_llm/executor/executorImpl.cpp forwardAsync:
# "Encountered an error in forwardAsync function: " + e.what(), then terminateActiveRequests:
# the real executor fails every request active in that step, not only this one). The
# "[TensorRT-LLM][ERROR] Assertion failed: " prefix is how common/assert.h's
# throwRuntimeError words a failed check (read in 1.x-era copies, not at the 1.1.0 tag).
DECODER_REQUESTS_SOURCE = (
    "/src/tensorrt_llm/cpp/tensorrt_llm/batch_manager/createNewDecoderRequests.cpp"
)


def embedding_bias_shape(vocab_size: int) -> str:
    return (
        "[TensorRT-LLM][ERROR] Assertion failed: The embedding bias shape is not as expected."
        f" Expected last dimension to be same as vocab size: {vocab_size}."
    )


def step_error(request_id: int, message: str, source: str = DECODER_REQUESTS_SOURCE) -> str:
    """What the Triton client receives for a request that failed in the executor's step."""
    return (
        f"Executor failed process requestId {request_id} due to the following error:"
        f" Encountered an error in forwardAsync function: {message} ({source})"
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
