"""``trtllm-stack demo --replicas 2``: two CPU tritonservers behind one proxy, from the CLI;
Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from trtllm_stack.triton.server import free_port

pytestmark = pytest.mark.integration


def test_demo_with_two_replicas(tmp_path):
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trtllm_stack", "demo", "--replicas", "2", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                ready = httpx.get(f"{url}/health/ready", timeout=5)
                if ready.status_code == 200 and ready.json()["replicas_ready"] == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        client = OpenAI(base_url=f"{url}/v1", api_key="sk-dummy", max_retries=0, timeout=30)
        for i in range(2):
            reply = client.chat.completions.create(
                model="qwen3", messages=[{"role": "user", "content": f"[reply]hi {i}[/reply]"}]
            )
            assert reply.choices[0].message.content == f"hi {i}"
        metrics = httpx.get(f"{url}/metrics").text
        series = r'trtllm_proxy_replica_requests_total\{replica="[^"]+"\} (\S+)'
        served = re.findall(series, metrics)
        assert sorted(float(v) for v in served) == [1.0, 1.0]
        banner = log.read_text()
        # The banner lists every replica's Triton addresses (bench needs the gRPC ones).
        assert all(f"Triton {r} gRPC" in banner for r in (0, 1)), banner[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    base = re.search(r"model repository in (\S+) \.\.\.", log.read_text())
    assert base is not None
    left = subprocess.run(["pgrep", "-f", base.group(1)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
