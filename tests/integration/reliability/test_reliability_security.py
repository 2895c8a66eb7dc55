"""Exposure: Triton's ports on loopback only; API keys and prompts never in the logs of a
real ``trtllm-stack proxy`` process (default log level) nor in Triton's log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from reliability_helpers import chat_body, wait_until

from trtllm_stack.triton.server import free_port

pytestmark = pytest.mark.integration

KEY = "sk-secret-7f3a9c1e5b2d4068"
WRONG_KEY = "sk-wrong-0c8e2a6f4b1d3957"
PROMPT = "my bank PIN is 5550-1234-8877"


def _listeners() -> dict[int, set[str]]:
    """Listening TCP port -> local addresses (hex, as /proc/net/tcp{,6} spell them)."""
    out: dict[int, set[str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(name)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr, port = fields[1].rsplit(":", 1)
            out.setdefault(int(port, 16), set()).add(addr)
    return out


# 127.0.0.1, ::ffff:127.0.0.1 (gRPC listens on a dual-stack socket), ::1
LOOPBACK = {
    "0100007F",
    "0000000000000000FFFF00000100007F",
    "00000000000000000000000001000000",
}


def test_triton_ports_listen_on_loopback_only(triton):
    listeners = _listeners()
    ep = triton.endpoints
    for port in (ep.http_port, ep.grpc_port, ep.metrics_port):
        addrs = listeners.get(port)
        assert addrs and addrs <= LOOPBACK, (port, addrs)


def test_keys_and_prompts_never_logged(triton, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTLLM_STACK_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trtllm_stack.cli",
            "proxy",
            "--triton-url",
            triton.endpoints.grpc_url,
            "--port",
            str(port),
            "--api-key-file",
            str(key_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    good = {"Authorization": f"Bearer {KEY}"}
    try:

        def up() -> bool:
            try:
                return httpx.get(base + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        wait_until(up, 60, "proxy process up")
        assert proc.poll() is None
        v1 = base + "/v1/chat/completions"
        r = httpx.post(v1, json=chat_body(PROMPT, stream=False, max_tokens=4), headers=good)
        assert r.status_code == 200
        r = httpx.post(v1, json=chat_body(PROMPT, max_tokens=4), headers=good)
        assert r.status_code == 200
        r = httpx.post(v1, json=chat_body(PROMPT), headers={"Authorization": f"Bearer {WRONG_KEY}"})
        assert r.status_code == 401
        assert WRONG_KEY not in r.text and KEY not in r.text
        # Failing requests that carry the prompt: invalid field, unknown model, bad tool args.
        r = httpx.post(v1, json=chat_body(PROMPT, temperature="hot"), headers=good)
        assert r.status_code == 400
        r = httpx.post(v1, json={**chat_body(PROMPT), "model": "nope"}, headers=good)
        assert r.status_code == 404
        r = httpx.post(
            v1,
            content=b'{"model": "qwen3", "messages": [' + PROMPT.encode(),
            headers=good,
        )
        assert r.status_code == 400
        assert PROMPT not in r.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    log = output.decode(errors="replace")
    assert "Uvicorn running" in log or "Application startup complete" in log, log  # logs seen
    for secret in (KEY, WRONG_KEY, PROMPT, "5550-1234"):
        assert secret not in log
    triton_log = (triton.repo.parent / "tritonserver.log").read_text(errors="replace")
    assert PROMPT not in triton_log and KEY not in triton_log
