"""`trtllm-stack bench` against tritonserver with the scripted engine (20 ms per token),
straight over gRPC and through the proxy: the measured gaps match the delay, every count
adds up, and Ctrl-C keeps what was measured."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtllm_stack.bench.proxy_vs_direct import Stack, running_stack
from trtllm_stack.cli import main

pytestmark = pytest.mark.integration

DELAY_MS = 20.0
OUTPUT_LEN = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    work = tmp_path_factory.mktemp("bench-stack")
    events = work / "events.jsonl"
    with running_stack(
        work, token_delay_ms=DELAY_MS, default_reply_tokens=64, event_log=events
    ) as s:
        yield s, events


def _requests_logged(events: Path) -> list[dict]:
    lines = events.read_text().splitlines() if events.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == "request"]


def test_direct_and_proxy_match_the_engine_delay(
    stack: tuple[Stack, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, events = stack
    before = len(_requests_logged(events))
    out = tmp_path / "run.json"
    rc = main(
        [
            "bench",
            "--target",
            f"direct=triton-grpc://{s.grpc_url}",
            "--target",
            f"proxy={s.proxy_url}",
            "--concurrency",
            "1,4",
            "--num-requests",
            "8",
            "--input-len",
            "32",
            "--output-len",
            str(OUTPUT_LEN),
            "--cpu-pid",
            f"proxy={s.proxy_pid}",
            "--no-progress",
            "--slo",
            "ttft=5000,tpot=1000",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "direct" in table and "proxy" in table
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert result["interrupted"] is False and result["environment"]["cpu_count"]

    tokens_in: dict[str, list[int]] = {}
    for target in result["targets"]:
        assert [lv["level"]["concurrency"] for lv in target["levels"]] == [1, 4]
        for lv in target["levels"]:
            summary, records = lv["summary"], lv["records"]
            assert (summary["completed"], summary["errors"], summary["incomplete"]) == (8, 0, 0)
            assert [r["index"] for r in records] == list(range(8))
            assert all(r["tokens_out"] == OUTPUT_LEN for r in records)
            assert summary["tokens_out"] == 8 * OUTPUT_LEN
            assert summary["goodput"]["good_requests"] == 8
            # gRPC: one response per token; SSE: the proxy may coalesce tokens that arrive together
            for r in records:
                assert len(r["itl_ms"]) == r["chunks"] - 1
                if target["label"] == "direct":
                    assert r["chunks"] == OUTPUT_LEN
                else:
                    assert 1 <= r["chunks"] <= OUTPUT_LEN
            # the engine sleeps DELAY_MS before every token: nothing can be faster, and on
            # an idle loopback the median is close to it
            ttfts = [r["ttft_ms"] for r in records]
            tpots = [(r["e2e_ms"] - r["ttft_ms"]) / (r["tokens_out"] - 1) for r in records]
            assert min(ttfts) >= 0.9 * DELAY_MS
            assert 0.9 * DELAY_MS <= statistics.median(tpots) <= 3 * DELAY_MS
            assert summary["tpot_ms"]["p50"] == pytest.approx(statistics.median(tpots), abs=0.01)
            if target["label"] == "direct":
                gaps = [g for r in records for g in r["itl_ms"]]
                assert 0.8 * DELAY_MS <= statistics.median(gaps) <= 3 * DELAY_MS
            tokens_in.setdefault(target["label"], []).extend(r["tokens_in"] for r in records)
        if target["label"] == "proxy":
            assert all(
                "proxy" in lv["cpu"] and lv["cpu"]["proxy"]["cpu_s"] >= 0 for lv in target["levels"]
            )
    # both paths sent the same prompt tokens (the proxy reports them in usage)
    assert tokens_in["proxy"] == tokens_in["direct"]

    # the engine saw exactly the requests the benchmark recorded, each cut at max_tokens
    seen = _requests_logged(events)[before:]
    assert len(seen) == 2 * 2 * 8
    assert {(e["outcome"], e["output_tokens"]) for e in seen} == {("length", OUTPUT_LEN)}

    assert main(["bench", "compare", str(out)]) == 0
    assert "B = proxy  vs  A = direct" in capsys.readouterr().out


def test_ctrl_c_writes_what_was_measured(stack: tuple[Stack, Path], tmp_path: Path) -> None:
    s, _ = stack
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trtllm_stack",
            "bench",
            "--target",
            f"triton-grpc://{s.grpc_url}",
            "--concurrency",
            "2",
            "--duration",
            "120",
            "--output-len",
            str(OUTPUT_LEN),
            "--input-len",
            "16",
            "--no-progress",
            "--no-plot",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "preparing N prompts..."
        assert b"preparing" in first
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    result = json.loads(out.read_text())
    assert result["interrupted"] is True
    level = result["targets"][0]["levels"][0]
    assert level["interrupted"] is True and level["records"]
    statuses = {r["status"] for r in level["records"]}
    assert statuses <= {"ok", "incomplete"}
    assert level["summary"]["completed"] == sum(r["status"] == "ok" for r in level["records"])
    assert b"direct" not in stdout and b"c=2 (partial)" in stdout
