"""``trtllm-stack proxy`` (the OpenAI-compatible server) and ``trtllm-stack demo`` (no GPU)."""

from __future__ import annotations

import argparse
import os
from typing import Any

# Set by the demo itself, or not a flag (the key is read from a file, not typed).
_DEMO_FIXED = frozenset({"triton_url", "triton_model", "engine_dir"})
_NOT_FLAGS = frozenset({"api_key"})


def _add_proxy_flags(p: argparse.ArgumentParser, *, demo: bool) -> None:
    from trtllm_stack.proxy.settings import ProxySettings
    from trtllm_stack.proxy.settings_flags import add_settings_flags

    add_settings_flags(p, ProxySettings, skip=_NOT_FLAGS | (_DEMO_FIXED if demo else set()))
    p.add_argument(
        "--api-key-file",
        default=None,
        help="file holding the API key clients must send as Bearer (or env"
        " TRTLLM_STACK_API_KEY); without one any key is accepted",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="OpenAI-compatible API server in front of Triton",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health,"
        " /health/ready and /metrics over Triton's gRPC tensorrt_llm model. Every flag can"
        " also be set as TRTLLM_STACK_<NAME> (e.g. TRTLLM_STACK_TRITON_URL).",
    )
    _add_proxy_flags(p, demo=False)
    p.set_defaults(handler=run_proxy)

    d = subparsers.add_parser(
        "demo",
        help="no-GPU quick start: scripted CPU engine + tritonserver + the proxy",
        description="Builds a scripted-engine model repository in a temporary directory,"
        " starts tritonserver (CPU) and the proxy, prints client examples; Ctrl-C stops all.",
    )
    _add_proxy_flags(d, demo=True)
    d.add_argument(
        "--token-delay-ms",
        type=float,
        default=20.0,
        help="simulated time per generated token (default 20)",
    )
    d.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="tritonservers (scripted engine copies) behind the one proxy (default 1)",
    )
    d.set_defaults(handler=run_demo)


def _settings(args: argparse.Namespace, **fixed: Any) -> Any:
    from pydantic import ValidationError

    from trtllm_stack.errors import UserError
    from trtllm_stack.proxy.settings import ProxySettings
    from trtllm_stack.proxy.settings_flags import settings_values

    values = settings_values(args, ProxySettings)
    if args.api_key_file:
        try:
            values["api_key"] = open(args.api_key_file, encoding="utf-8").read().strip()  # noqa: SIM115
        except OSError as exc:
            raise UserError(f"cannot read --api-key-file: {exc.strerror}") from None
        if not values["api_key"]:
            raise UserError(f"--api-key-file {args.api_key_file} is empty")
    values.update(fixed)
    try:
        return ProxySettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise UserError(f"invalid {field}: {first.get('msg')}") from None


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn.Config keywords shared by the one-process server and every worker."""
    from trtllm_stack.proxy.http_guard import guarded_http_protocol

    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": 5,
        # Longer than the idle expiry of HTTP clients (httpx / openai SDK: 5 s, aiohttp:
        # 15 s) so that the client closes idle connections first: with equal timeouts a
        # client can reuse a connection at the moment the server closes it (a reset).
        "timeout_keep_alive": 75,
        "access_log": settings.log_level == "debug",
        # Header/body read timeouts and the connection cap uvicorn lacks (http_guard.py).
        "http": guarded_http_protocol(settings),
    }


def _serve(settings: Any) -> None:
    if settings.workers > 1:
        from trtllm_stack.proxy.workers import serve_workers

        code = serve_workers(settings)
        if code:
            raise SystemExit(code)
        return
    import uvicorn

    from trtllm_stack.proxy.app import create_app

    app = create_app(settings)
    uvicorn.run(app, **uvicorn_options(settings))


def run_proxy(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _serve(settings)
    return 0


def _demo_banner(base: str, model: str, key: str | None) -> str:
    auth = f' -H "Authorization: Bearer {key}"' if key else ""
    sdk_key = key or "sk-dummy"
    return f"""
trtllm-stack demo: scripted CPU engine (no GPU) behind tritonserver and the proxy.

  curl -N {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "stream": true,
         "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{sdk_key}")
stream = client.chat.completions.create(
    model="{model}", stream=True,
    messages=[{{"role": "user",
               "content": "[reply]<think>\\nA greeting.\\n</think>\\n\\nHi![/reply]"}}],
)
for chunk in stream:
    delta = chunk.choices[0].delta if chunk.choices else None
    if delta and delta.content:
        print(delta.content, end="", flush=True)
print()
EOF

The scripted engine replies with a fixed text, or exactly the text between [reply] and
[/reply] in your last message (tool calls and <think> included). Ctrl-C stops everything.
"""


def run_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from trtllm_stack.errors import UserError
    from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
    from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository
    from trtllm_stack.triton.replica_set import ReplicaSet

    if args.token_delay_ms < 0:
        raise UserError("--token-delay-ms must be >= 0")
    if not 1 <= args.replicas <= 16:
        raise UserError("--replicas must be between 1 and 16")
    tokenizer_dir = (
        Path(args.tokenizer_dir)
        if getattr(args, "tokenizer_dir", None)
        else bundled_qwen3_tokenizer_dir()
    )
    base = Path(tempfile.mkdtemp(prefix="trtllm-stack-demo-"))
    servers: ReplicaSet | None = None
    try:
        print(f"building the scripted-engine model repository in {base} ...", flush=True)
        repo = write_model_repository(
            base / "repo",
            engine="scripted",
            tokenizer_dir=tokenizer_dir,
            scripted=ScriptedEngineOptions(token_delay_ms=args.token_delay_ms),
        )
        servers = ReplicaSet(repo, args.replicas, base)
        print(f"starting {args.replicas} tritonserver(s) (CPU) ...", flush=True)
        servers.start()
        settings = _settings(args, triton_url=servers.grpc_urls, tokenizer_dir=tokenizer_dir)
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        key = settings.api_key.get_secret_value() if settings.api_key else None
        print(_demo_banner(f"http://{host}:{settings.port}", settings.served_model_name, key))
        if args.replicas > 1:
            print(
                f"{args.replicas} replicas ({settings.triton_url}); each one's state:"
                f" http://{host}:{settings.port}/health/ready\n",
                flush=True,
            )
        _serve(settings)
    finally:
        if servers is not None:
            servers.stop()
        if os.environ.get("TRTLLM_STACK_DEMO_KEEP") != "1":
            shutil.rmtree(base, ignore_errors=True)
    return 0
