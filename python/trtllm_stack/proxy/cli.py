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
    _check_tokenizer_source(settings)
    _serve(settings)
    return 0


def _demo_banner(base: str, model: str, key_source: str | None, triton: list[Any]) -> str:
    """What a user needs to talk to the demo. Never the API key itself: only where it is."""
    auth = f' -H "Authorization: Bearer {key_source}"' if key_source else ""
    sdk_key = "os.environ['TRTLLM_STACK_API_KEY']" if key_source else '"sk-dummy"'
    lines = [f"  OpenAI proxy     {base}/v1"]
    for i, ep in enumerate(triton):
        name = "Triton" if len(triton) == 1 else f"Triton {i}"
        lines += [
            f"  {name + ' HTTP':<16} {ep.http_url}",
            f"  {name + ' gRPC':<16} {ep.grpc_url}"
            f"   (bench --target direct=triton-grpc://{ep.grpc_url})",
            f"  {name + ' metrics':<16} {ep.metrics_url}",
        ]
    if key_source:
        lines.append("  API key          required; export TRTLLM_STACK_API_KEY for the examples")
    addresses = "\n".join(lines)
    return f"""
trtllm-stack demo: scripted CPU engine (no GPU) behind tritonserver and the proxy.

{addresses}

  curl -N {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "stream": true,
         "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python - <<'EOF'
import os
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key={sdk_key})
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
[/reply] in your last message (tool calls and <think> included). Ctrl-C (or SIGTERM)
stops everything.
"""


def _check_listen_address(host: str, port: int) -> None:
    """The proxy's port, checked before anything starts (uvicorn would find out last)."""
    from trtllm_stack.errors import UserError
    from trtllm_stack.triton.launch_plan import port_in_use

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {port}")
    if port_in_use(host, port):
        raise UserError(f"--port {port} on {host} is already in use; choose another --port")


def _check_tokenizer_source(settings: Any) -> None:
    """--engine-dir / --tokenizer-dir must exist and hold a tokenizer: never fall back to
    the bundled one behind the user's back."""
    from trtllm_stack.errors import UserError

    if settings.tokenizer_dir is not None:
        _check_tokenizer_dir(settings.tokenizer_dir, "--tokenizer-dir")
    elif settings.engine_dir is not None:
        if not settings.engine_dir.is_dir():
            raise UserError(f"--engine-dir {settings.engine_dir} is not a directory")
        # The file settings.resolve_tokenizer_dir() looks for in an engine directory.
        if not (settings.engine_dir / "tokenizer_config.json").is_file():
            raise UserError(
                f"--engine-dir {settings.engine_dir} has no tokenizer (tokenizer_config.json);"
                " pass --tokenizer-dir"
            )


def _check_tokenizer_dir(path: Any, flag: str) -> None:
    from pathlib import Path

    from trtllm_stack.errors import UserError

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{flag} {path} is not a directory")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise UserError(f"{flag} {path} has no tokenizer (tokenizer.json, tokenizer_config.json)")


def run_demo(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from trtllm_stack.errors import UserError
    from trtllm_stack.signals import StopRequested, stop_on_signals
    from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
    from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository
    from trtllm_stack.triton.replica_set import ReplicaSet

    # Every argument is checked before anything starts.
    if args.token_delay_ms < 0:
        raise UserError("--token-delay-ms must be >= 0")
    if not 1 <= args.replicas <= 16:
        raise UserError("--replicas must be between 1 and 16")
    tokenizer_dir = (
        Path(args.tokenizer_dir)
        if getattr(args, "tokenizer_dir", None)
        else bundled_qwen3_tokenizer_dir()
    )
    _check_tokenizer_dir(tokenizer_dir, "--tokenizer-dir")
    settings = _settings(args, tokenizer_dir=tokenizer_dir)
    _check_listen_address(settings.host, settings.port)

    with stop_on_signals():
        base = Path(tempfile.mkdtemp(prefix="trtllm-stack-demo-"))
        servers: ReplicaSet | None = None
        keep = os.environ.get("TRTLLM_STACK_DEMO_KEEP") == "1"
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
            try:
                endpoints = servers.start()
            except UserError:
                keep = True  # the log is what the user needs now
                _print_log_tails(servers)
                raise
            settings = _settings(args, triton_url=servers.grpc_urls, tokenizer_dir=tokenizer_dir)
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
            key_source = "$TRTLLM_STACK_API_KEY" if settings.api_key else None
            base_url = f"http://{host}:{settings.port}"
            print(
                _demo_banner(base_url, settings.served_model_name, key_source, endpoints),
                flush=True,
            )
            _serve(settings)
        except StopRequested as stop:
            print(f"trtllm-stack demo: {stop}, stopping", file=sys.stderr, flush=True)
        finally:
            if servers is not None:
                servers.stop()
            if not keep:
                shutil.rmtree(base, ignore_errors=True)
    return 0


def _print_log_tails(servers: Any) -> None:
    import sys

    for server in servers.servers:
        tail = server.log_tail()
        if tail and server.log_path is not None:
            print(f"last lines of {server.log_path} (kept):", file=sys.stderr)
            print("\n".join(f"  {line}" for line in tail), file=sys.stderr, flush=True)
