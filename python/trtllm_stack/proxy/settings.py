"""Proxy settings: defaults, ``TRTLLM_STACK_*`` environment variables, CLI flags on top.

Each field is the whole definition of a setting: its ``--flag`` and help are generated from
the type, default and description (proxy/settings_flags.py), so give every field one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton.grpc_wire import Keepalive


class ProxySettings(BaseSettings):
    """Everything the proxy can be told. Each field is also ``TRTLLM_STACK_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TRTLLM_STACK_", extra="ignore")

    triton_url: str = Field(
        default="localhost:8001",
        description="Triton gRPC address (host:port); several, comma-separated, are"
        " data-parallel replicas behind this one endpoint",
    )
    triton_model: str = Field(
        default="tensorrt_llm", description="Triton model that runs the engine"
    )
    served_model_name: str = Field(
        default="qwen3",
        description="model id clients ask for (others get 404)",
        json_schema_extra={"cli_flag": "--model-name"},
    )
    tokenizer_dir: Path | None = Field(
        default=None,
        description="tokenizer files; default: the bundled Qwen3 (proxy: --engine-dir's if any)",
    )
    engine_dir: Path | None = Field(
        default=None, description="engine dir (its tokenizer files are used)"
    )
    # Loopback by default: opening the API to the network is a decision the user makes (--host).
    host: str = Field(
        default="127.0.0.1", description="bind address (0.0.0.0 opens it to the network)"
    )
    port: int = Field(default=9000, ge=0, le=65535, description="HTTP port")
    cors_origins: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="browser origins allowed ('*' = any, '' = none); default: localhost"
        " origins only without an API key, '*' with one (proxy/browser_guard.py)",
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Host header names accepted besides the bound address and localhost"
        " ('*' = any); default check off when bound to 0.0.0.0/::",
    )
    api_key: SecretStr | None = Field(
        default=None, description="the Bearer key clients must send (none: any key)"
    )
    max_in_flight: int = Field(
        default=512, ge=0, description="requests in flight before 429 (0 = unlimited)"
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="request body limit in bytes (413)"
    )
    max_messages: int = Field(default=2048, ge=1, description="messages per chat request (400)")
    # Cost bounds checked before any prompt work (proxy/request_limits.py): each is a 400
    # naming the limit and this setting. Defaults leave every request an engine with a
    # 128k-token context can serve well inside them.
    max_stop_chars: int = Field(
        default=1024, ge=1, description="characters per stop string (400 beyond)"
    )
    max_prompt_chars: int = Field(
        default=1_000_000,
        ge=1,
        description="characters of prompt text across all fields: message content, names,"
        " ids, tool-call arguments, tool definitions, tool_choice, template kwargs (400)",
    )
    max_tools: int = Field(default=128, ge=0, description="tools per request (OpenAI's limit)")
    max_tool_chars: int = Field(
        default=65_536, ge=1, description="characters of one tool definition as JSON (400)"
    )
    max_logit_bias: int = Field(default=300, ge=0, description="logit_bias entries (400)")
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds from a request's first byte to its last header"
    )
    body_timeout: float = Field(
        default=60.0, gt=0, description="seconds from a request's headers to its last body byte"
    )
    max_connections: int = Field(
        default=2048, ge=0, description="open HTTP connections (0 = no cap); beyond: closed"
    )
    template_timeout: float = Field(
        default=2.0, gt=0, description="seconds one chat-template render may take (400)"
    )
    max_template_chars: int = Field(
        default=4_000_000,
        ge=1024,
        description="characters a chat-template render may produce or build (400)",
    )
    max_n: int = Field(default=16, ge=1, description="choices per request, n (400 beyond)")
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="max_tokens when the request has none (None: rest of context)",
    )
    backend_timeout: float = Field(
        default=60.0, gt=0, description="seconds without a token from Triton before a request fails"
    )
    engine_keepalive_time: float = Field(
        default=30.0,
        ge=0,
        description="seconds of silence on the Triton connection, with requests open, before"
        " an HTTP/2 PING (0 = no PINGs)",
    )
    engine_keepalive_timeout: float = Field(
        default=20.0,
        gt=0,
        description="seconds to wait for Triton after that PING before the connection and"
        " its requests fail (503) and new requests reconnect",
    )
    send_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a client may stop reading a stream before its request is cancelled",
    )
    reasoning_parser: bool = Field(default=True, description="split <think> into reasoning_content")
    # vLLM renamed reasoning_content to reasoning (vllm-project/vllm#27752, the old name
    # removed in #33402); DeepSeek's reasoning_content is what OpenWebUI, litellm, the Vercel
    # AI SDK and others read. "both" serves either kind of client.
    reasoning_field: Literal["both", "reasoning", "reasoning_content"] = Field(
        default="both",
        description="field name of the reasoning text in messages and deltas: reasoning"
        " (vLLM today), reasoning_content (DeepSeek, older vLLM) or both",
    )
    tool_call_streaming: Literal["incremental", "buffered"] = Field(
        default="incremental",
        description="incremental: a tool call's name, then its argument fragments as they"
        " arrive; buffered: each call whole once its block closed (a broken block: content)",
    )
    prompt_cache_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="bytes of prompt-block token ids kept (LRU) so that a growing conversation"
        " is not re-tokenized every turn; 0 = off",
    )
    prompt_inline_chars: int = Field(
        default=2048,
        ge=0,
        description="prompts up to this many characters are templated and tokenized on the"
        " event loop; longer ones in the prompt thread (see docs/bench.md, prompt time)",
    )
    prompt_threads: int = Field(
        default=1, ge=1, le=64, description="threads that template and tokenize long prompts"
    )
    prompt_warm_replies: bool = Field(
        default=True,
        description="tokenize the reply to a long prompt in the prompt thread once sent, so"
        " that the next turn, which sends it back, finds it in the token cache",
    )
    prompt_thread_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="scheduling niceness of the prompt threads (Linux, per thread): a long"
        " prompt's tokenization yields the CPU to running streams when cores are short",
    )
    log_level: str = Field(default="info", description="uvicorn log level")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="proxy processes sharing the port (SO_REUSEPORT); max_in_flight and"
        " /metrics cover all of them",
    )
    # Several Triton addresses (see proxy/replicas.py for the routing rules).
    replica_health_interval: float = Field(
        default=0.5, gt=0, description="seconds between health checks of each replica"
    )
    prefix_affinity_tokens: int = Field(
        default=64,
        ge=0,
        description="prompt block size (tokens) for prefix affinity; 0 = least-loaded only",
    )
    affinity_balance_ratio: float = Field(
        default=1.25,
        ge=1.0,
        description="a request follows its prefix's replica while that replica has at most"
        " max(mean + slack, ratio * mean) requests in flight",
    )
    affinity_balance_slack: int = Field(
        default=2, ge=0, description="absolute part of that bound (see affinity_balance_ratio)"
    )

    @field_validator("triton_url")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        from trtllm_stack.triton.grpc_wire import split_target

        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("no Triton address given")
        for url in urls:
            split_target(url)
        if len(set(urls)) != len(urls):
            raise ValueError("the same Triton address is listed twice")
        return ",".join(urls)

    def triton_urls(self) -> list[str]:
        return self.triton_url.split(",")

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # Env and CLI give "a,b"; an empty string turns CORS off.
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def engine_keepalive(self) -> Keepalive | None:
        if not self.engine_keepalive_time:
            return None
        return Keepalive(self.engine_keepalive_time, self.engine_keepalive_timeout)

    def resolve_tokenizer_dir(self) -> Path:
        """--tokenizer-dir, else the engine dir (the build copies tokenizer files there),
        else the bundled Qwen3 tokenizer (no-GPU demo and tests)."""
        if self.tokenizer_dir is not None:
            return self.tokenizer_dir
        if self.engine_dir is not None and (self.engine_dir / "tokenizer_config.json").is_file():
            return self.engine_dir
        return bundled_qwen3_tokenizer_dir()
