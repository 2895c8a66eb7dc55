"""Soak run of the demo stack (not a pytest test): N concurrent streams for D seconds.

Starts ``trtllm-stack demo`` (scripted CPU engine behind tritonserver, proxy in the demo
process) on a free port, keeps ``--concurrency`` chat streams open back to back for
``--duration`` seconds, checks every stream (role first, finish_reason, ``[DONE]``, no
error event, token count), and samples the proxy's resident memory (VmRSS of the demo
process, which is the proxy; tritonserver is its child with its own memory).

    python tests/soak/soak_proxy.py --duration 600 --concurrency 64 --token-delay-ms 5 \
        --out soak.json

Exit code 0 when there were no errors and RSS grew less than ``--max-rss-growth`` (from the
sample taken after the warm-up to the last sample), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Totals:
    streams: int = 0
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(what)


async def one_stream(client: httpx.AsyncClient, max_tokens: int, totals: Totals, t0: float) -> None:
    body = {
        "model": "qwen3",
        "stream": True,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Tell me about the soak test."}],
    }
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                totals.fail(f"status {resp.status_code}: {(await resp.aread())[:200]!r}")
                return
            datas = []
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    datas.append(line[6:])
    except httpx.HTTPError as exc:
        # When and where: before the response head (connection reuse) or mid-stream.
        phase = f"after {len(datas)} events" if "datas" in locals() else "before the response"
        totals.fail(f"t={time.monotonic() - t0:.1f}s {type(exc).__name__} {phase}: {exc!r}")
        return
    if not datas or datas[-1] != "[DONE]":
        totals.fail("stream did not end with [DONE]")
        return
    chunks = [json.loads(d) for d in datas[:-1]]
    if any("error" in c for c in chunks):
        totals.fail(f"error event: {next(c for c in chunks if 'error' in c)}")
        return
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    usage = chunks[-1].get("usage") or {}
    if finishes[-1] != "length" or usage.get("completion_tokens") != max_tokens:
        totals.fail(f"unexpected end: finish={finishes[-1]} usage={usage}")
        return
    totals.streams += 1
    totals.tokens += usage["completion_tokens"]


async def soak(base: str, args: argparse.Namespace, pid: int) -> dict:
    totals = Totals()
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    end = start + args.duration
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while time.monotonic() < end:
                await one_stream(client, args.max_tokens, totals, start)

        async def sampler() -> None:
            while time.monotonic() < end:
                samples.append((round(time.monotonic() - start, 1), rss_kib(pid)))
                await asyncio.sleep(args.sample_every)

        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
        samples.append((round(time.monotonic() - start, 1), rss_kib(pid)))
        metrics = (await client.get("/metrics")).text
    elapsed = time.monotonic() - start
    in_flight = next(
        (
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("trtllm_proxy_requests_in_flight ")
        ),
        None,
    )
    warm = next((kib for t, kib in samples if t >= args.warmup), samples[0][1])
    last = samples[-1][1]
    growth = (last - warm) / warm
    return {
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "token_delay_ms": args.token_delay_ms,
        "max_tokens": args.max_tokens,
        "streams_ok": totals.streams,
        "tokens": totals.tokens,
        "tokens_per_s": round(totals.tokens / elapsed, 1),
        "errors": totals.errors,
        "error_samples": totals.error_samples,
        "in_flight_after": in_flight,
        "rss_kib_first": samples[0][1],
        "rss_kib_after_warmup": warm,
        "rss_kib_last": last,
        "rss_kib_max": max(k for _, k in samples),
        "rss_growth_after_warmup": round(growth, 4),
        "rss_samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--token-delay-ms", type=float, default=5.0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=float, default=30.0, help="RSS baseline after this many s")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--max-rss-growth", type=float, default=0.10)
    ap.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = ap.parse_args()

    port = free_port()
    cmd = [
        sys.executable, "-m", "trtllm_stack.cli", "demo",
        "--port", str(port), "--token-delay-ms", str(args.token_delay_ms),
        "--log-level", "warning",
    ]  # fmt: skip
    demo = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if demo.poll() is not None:
                print(f"demo exited with {demo.returncode}", file=sys.stderr)
                return 1
            try:
                if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("demo not ready after 180 s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        result = asyncio.run(soak(base, args, demo.pid))
    finally:
        # Ctrl-C path of the demo: stops tritonserver and removes its temp dir.
        os.kill(demo.pid, signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=1))
    ok = result["errors"] == 0 and result["rss_growth_after_warmup"] < args.max_rss_growth
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
