"""Request models for the OpenAI endpoints.

Validated once per request (never per token). Unknown fields are accepted and ignored:
OpenAI clients send many (``user``, ``metadata``, ``store``, ...). Responses are built as
plain dicts / pre-serialised bytes in the serving modules, not as models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The engine's integer inputs are INT32 tensors: larger values are a client error (400),
# not an overflow while building the request.
_INT32_MAX = 2**31 - 1


class _Tolerant(BaseModel):
    # strict: "5", true and "yes" are not numbers or booleans, as in OpenAI's API (lax
    # pydantic would coerce them); JSON integers still fill float fields.
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(_Tolerant):
    type: str
    text: str | None = None


class FunctionCallIn(_Tolerant):
    name: str
    # OpenAI sends arguments as a JSON string; some clients send an object.
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Tolerant):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Tolerant):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # vLLM's name for it today (clients send it back)


class FunctionDef(_Tolerant):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Tolerant):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Tolerant):
    name: str


class NamedToolChoice(_Tolerant):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Tolerant):
    include_usage: bool = False
    # vLLM's: cumulative usage on every chunk (with include_usage); guidellm sends it.
    continuous_usage_stats: bool = False


class JsonSchemaFormat(_Tolerant):
    name: str | None = None
    description: str | None = None
    # OpenAI calls it "schema", which would shadow BaseModel.schema.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Tolerant):
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Tolerant):
    """vLLM's ``structured_outputs`` request object (vllm/sampling_params.py,
    StructuredOutputsParams): one constraint and its options."""

    json_: str | dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None


class _SamplingRequest(_Tolerant):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=_INT32_MAX)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    min_tokens: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    stop: str | list[str] | None = None
    n: int | None = Field(default=1, ge=1, le=128)
    ignore_eos: bool = False
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs and the
    # guided_* fields vLLM had before it (proxy/guided.py maps them to the engine's guide).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    # Token id (decimal string) -> bias added to its logit; bounded in request_limits, sent
    # as the engine's embedding_bias (proxy/logit_bias.py).
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    def continuous_usage(self) -> bool:
        """Usage on every chunk: vLLM's include_usage and continuous_usage_stats."""
        so = self.stream_options
        return bool(self.stream and so and so.include_usage and so.continuous_usage_stats)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(
        default=16, ge=1, le=_INT32_MAX
    )  # OpenAI's default for this endpoint
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)
