"""Proxy settings: defaults, ``TRTLLM_STACK_*`` environment variables, CLI flags on top.

Each field is the whole definition of a setting: its ``--flag`` and help are generated from
the type, default and description (proxy/settings_flags.py), so give every field one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir


class ProxySettings(BaseSettings):
    """Everything the proxy can be told. Each field is also ``TRTLLM_STACK_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TRTLLM_STACK_", extra="ignore")

    triton_url: str = Field(default="localhost:8001", description="Triton gRPC address (host:port)")
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
        description="tokenizer files; default: the engine dir's, else the bundled Qwen3",
    )
    engine_dir: Path | None = Field(
        default=None, description="engine dir (its tokenizer files are used)"
    )
    # Loopback by default: opening the API to the network is a decision the user makes (--host).
    host: str = Field(
        default="127.0.0.1", description="bind address (0.0.0.0 opens it to the network)"
    )
    port: int = Field(default=9000, ge=0, le=65535, description="HTTP port")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="comma-separated CORS origins ('' = off)"
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
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="max_tokens when the request has none (None: rest of context)",
    )
    backend_timeout: float = Field(
        default=60.0, gt=0, description="seconds without a token from Triton before a request fails"
    )
    send_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a client may stop reading a stream before its request is cancelled",
    )
    reasoning_parser: bool = Field(default=True, description="split <think> into reasoning_content")
    tool_call_streaming: Literal["incremental", "buffered"] = Field(
        default="incremental",
        description="incremental: a tool call's name, then its argument fragments as they"
        " arrive; buffered: each call whole once its block closed (a broken block: content)",
    )
    log_level: str = Field(default="info", description="uvicorn log level")

    @field_validator("cors_origins", mode="before")
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

    def resolve_tokenizer_dir(self) -> Path:
        """--tokenizer-dir, else the engine dir (the build copies tokenizer files there),
        else the bundled Qwen3 tokenizer (no-GPU demo and tests)."""
        if self.tokenizer_dir is not None:
            return self.tokenizer_dir
        if self.engine_dir is not None and (self.engine_dir / "tokenizer_config.json").is_file():
            return self.engine_dir
        return bundled_qwen3_tokenizer_dir()
