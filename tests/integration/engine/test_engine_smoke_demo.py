"""``verify-engine --smoke`` against the real proxy + CPU tritonserver (``trtllm-stack demo``).

The demo's scripted engine does not know arithmetic or geography and repeats one fixed
paragraph, so the smoke check must fail on it, naming the prompts and what it found; this
exercises the whole HTTP path (/v1/models, /v1/chat/completions through the proxy and Triton).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from trtllm_stack.triton.server import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trtllm_stack",
                "demo",
                "--port",
                str(port),
                "--token-delay-ms",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo not ready after 90 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        # Ctrl-C is the demo's documented stop; it stops tritonserver too.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_smoke_against_demo_fails_on_scripted_replies(demo_url):
    proc = subprocess.run(
        [sys.executable, "-m", "trtllm_stack", "verify-engine", "--smoke", demo_url],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    msg = lines[0]
    assert msg.startswith("trtllm-stack verify-engine: smoke check failed (3/3 prompts)")
    assert "expected answer '4', found 'Triton is serving this reply" in msg
    assert "expected answer 'Paris'" in msg
    assert "distinct words" in msg  # the fixed paragraph, repeated


def test_smoke_against_demo_with_unknown_model_is_one_line(demo_url):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtllm_stack",
            "verify-engine",
            "--smoke",
            demo_url,
            "--model",
            "no-such-model",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "returned HTTP 4" in lines[0]
