"""``trtllm-stack proxy --workers 2`` as real processes over a real tritonserver: one port,
a max-in-flight limit that holds for the whole server, /metrics summed over workers, and
SIGTERM letting every worker finish its streams before everything exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from trtllm_stack.triton.launcher import descendants
from trtllm_stack.triton.server import free_port

pytestmark = pytest.mark.integration


def _body(text: str, max_tokens: int) -> dict:
    return {
        "model": "qwen3",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }


async def _stream(url: str, text: str, max_tokens: int) -> tuple[int, str]:
    # A client (connection) of its own: SO_REUSEPORT spreads connections over the workers.
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=_body(text, max_tokens)) as r,
    ):
        return r.status_code, (await r.aread()).decode()


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_two_workers_share_port_limit_metrics_and_drain(triton_factory, qwen3_tokenizer_dir):
    triton = triton_factory(token_delay_ms=20, default_reply_tokens=400)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "trtllm_stack", "proxy", "--workers", "2", "--port", str(port),
        "--triton-url", triton.endpoints.grpc_url, "--tokenizer-dir", str(qwen3_tokenizer_dir),
        "--max-in-flight", "3", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    tree: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with_pids = descendants(proc.pid)
            try:
                ready = [httpx.get(url + "/health/ready", timeout=2).status_code for _ in range(6)]
                if ready == [200] * 6 and len(with_pids) >= 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "proxy workers not ready"
            time.sleep(0.3)
        for pid in descendants(proc.pid):
            tree[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        workers = [pid for pid, cmd in tree.items() if "spawn_main" in cmd]
        assert len(workers) == 2

        async def limit_holds_for_the_server() -> tuple[list, list]:
            held = [asyncio.create_task(_stream(url, f"long {i}", 150)) for i in range(3)]
            # Wait until the three are admitted (the summed gauge says so).
            for _ in range(100):
                text = (await asyncio.to_thread(httpx.get, url + "/metrics")).text
                if _metric(text, "trtllm_proxy_requests_in_flight") == 3:
                    break
                await asyncio.sleep(0.05)
            extra = await asyncio.gather(*(_stream(url, f"x {i}", 5) for i in range(6)))
            return await asyncio.gather(*held), list(extra)

        held, extra = asyncio.run(limit_holds_for_the_server())
        assert all(status == 200 and "[DONE]" in raw for status, raw in held)
        # Six new connections, spread over both workers: every one over the limit.
        assert [status for status, _ in extra] == [429] * 6

        # Counters summed over workers, whichever answers the scrape.
        scrapes = [httpx.get(url + "/metrics").text for _ in range(4)]
        assert {_metric(t, "trtllm_proxy_requests_total") for t in scrapes} == {9.0}
        assert {_metric(t, "trtllm_proxy_errors_total") for t in scrapes} == {6.0}

        async def drain_on_sigterm() -> list:
            streams = [asyncio.create_task(_stream(url, f"d {i}", 40)) for i in range(3)]
            await asyncio.sleep(0.4)  # admitted and streaming (40 tokens x 20 ms)
            os.kill(proc.pid, signal.SIGTERM)
            return await asyncio.gather(*streams)

        drained = asyncio.run(drain_on_sigterm())
        assert all(s == 200 and '"finish_reason":"length"' in raw for s, raw in drained), drained
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 5  # the resource tracker notices the parent's exit
    while left := [tree[pid] for pid in tree if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, left
        time.sleep(0.1)
