"""``trtllm-stack triton --engine scripted --replicas 2`` for real (mpirun, CPU tritonserver):
two replicas, each its own mpirun, GPUs (CUDA_VISIBLE_DEVICES) and ports, both serving one
proxy; SIGTERM stops both and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from trtllm_stack.triton.launch_plan import port_in_use
from trtllm_stack.triton.launcher import descendants
from trtllm_stack.triton.server import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (openmpi-bin)"),
]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_two_replicas_pinned_and_served_through_one_proxy(tmp_path, proxy_factory):
    # Six ports: base+0..2 for replica 0, base+10..12 for replica 1; all must be free.
    base = free_port()
    while any(port_in_use("127.0.0.1", base + d) for d in (0, 1, 2, 10, 11, 12)):
        base = free_port()
    runtime = tmp_path / "rt"
    argv = [
        sys.executable, "-m", "trtllm_stack", "triton", "--engine", "scripted",
        "--variant", "qwen3-32b-nvfp4-tp1-dp2", "--runtime-dir", str(runtime),
        "--http-port", str(base), "--grpc-port", str(base + 1),
        "--metrics-port", str(base + 2), "--quiet", "--ready-timeout", "120",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
    err = open(tmp_path / "launcher.stderr", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("all 2 replicas ready"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    tree: dict[int, str] = {}
    try:
        while not ready.wait(0.5):
            assert proc.poll() is None, (tmp_path / "launcher.stderr").read_text()
        grpc = [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 11}"]
        assert f"--triton-url {','.join(grpc)}" in lines[-1]
        servers = {}
        for pid in descendants(proc.pid):
            tree[pid] = _cmdline(pid)
            if Path(tree[pid].split(" ")[0]).name == "tritonserver":
                port = next(a for a in tree[pid].split() if a.startswith("--grpc-port="))
                servers[port.split("=")[1]] = _environ(pid).get("CUDA_VISIBLE_DEVICES")
        assert servers == {str(base + 1): "3", str(base + 11): "5"}

        proxy = proxy_factory(triton_url=",".join(grpc))
        ready_body = httpx.get(proxy.base_url + "/health/ready", timeout=10).json()
        assert ready_body["replicas_ready"] == 2
        for i in range(2):
            message = {"role": "user", "content": f"[reply]{i}[/reply]"}
            body = {"model": "qwen3", "messages": [message]}
            r = httpx.post(proxy.v1 + "/chat/completions", json=body, timeout=30)
            assert r.json()["choices"][0]["message"]["content"] == str(i)
        assert [r.requests for r in proxy.app.state.ctx.engine.replicas] == [1, 1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
    assert proc.returncode == 0, (tmp_path / "launcher.stderr").read_text()
    time.sleep(0.5)
    left = [pid for pid, cmd in tree.items() if cmd and _cmdline(pid) == cmd]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
