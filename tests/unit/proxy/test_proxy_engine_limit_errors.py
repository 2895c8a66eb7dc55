"""The engine's own prompt-length refusal (as TensorRT-LLM's backend words it) is the
client's 400 with both numbers, not a 5xx; other engine failures stay 502-class."""

from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.errors import engine_failure as backend_error
from trtllm_stack.triton.backend_errors import executor_error, prompt_too_long
from trtllm_stack.triton.client import EngineError


def test_prompt_too_long_from_the_backend_is_a_400_with_both_numbers():
    err = backend_error(EngineError(executor_error(7, prompt_too_long(40000, 32767))))
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert err.code == "context_length_exceeded"
    assert "40000 tokens" in str(err) and "at most 32767 input tokens" in str(err)


def test_other_engine_errors_are_not_client_errors():
    err = backend_error(EngineError("Executor failed process requestId 3 due to: CUDA OOM"))
    assert not isinstance(err, InvalidRequest) and err.status >= 500
