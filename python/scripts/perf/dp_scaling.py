"""Data-parallel scale-out on this machine: CPU tritonservers running the scripted engine
paced like a GPU, behind one proxy (python/docs/replicas.md, "Measured").

Each replica generates one token per ``--token-ms`` per request and runs at most
``--batch-slots`` requests at once (the rest queue in arrival order, as inflight batching
does once its batch is full), so one replica's ceiling is batch_slots x 1000/token_ms
tokens/s, and N replicas should give N times that when the load can fill them.

Parts (all through a real proxy process, streamed chat completions, aiohttp client):
1. scaling: closed loop at c = 8/32/64 against 1, 2 and 4 replicas; tokens/s, TTFT p50.
2. routing cost: TTFT at c=1 through a proxy with one address (direct client) and one with
   two (ReplicaPool), alternating requests, same replica doing the work.
3. affinity: multi-turn conversations (distinct long system prompts) over 4 replicas; the
   share of later turns served by their first turn's replica, and requests per replica.
4. failover: 4 replicas at c=32; one SIGKILLed mid-run; errors by request start time.

    python python/scripts/perf/dp_scaling.py --out python/docs/bench/dp-scaling.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository
from trtllm_stack.triton.replica_set import ReplicaSet
from trtllm_stack.triton.server import free_port


@dataclass
class Result:
    ok: bool
    status: int
    start: float
    ttft: float | None = None
    end: float = 0.0
    tokens: int = 0
    request_id: str = ""
    error: str = ""


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_proxy(grpc_urls: str, workdir: Path, name: str, *extra: str) -> Proxy:
    port = free_port()
    log = workdir / f"proxy-{name}.log"
    argv = [
        sys.executable, "-m", "trtllm_stack", "proxy", "--port", str(port),
        "--triton-url", grpc_urls, "--log-level", "warning", "--max-in-flight", "0",
        "--replica-health-interval", "0.25", *extra,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    import urllib.request

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as r:
                if r.status == 200:
                    return Proxy(proc, url, log)
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("proxy not ready")


async def chat(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[Result, str]:
    body = {
        "model": "qwen3",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": messages,
        # Tokens counted by the server: one SSE event may carry several tokens.
        "stream_options": {"include_usage": True},
    }
    res = Result(ok=False, status=0, start=time.monotonic())
    text: list[str] = []
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            res.status = resp.status
            if resp.status != 200:
                res.error = (await resp.text())[:200]
                res.end = time.monotonic()
                return res, ""
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    data = event[6:]
                    if data == b"[DONE]":
                        res.ok = not res.error
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        res.error = obj["error"].get("code") or "error"
                        continue
                    res.request_id = obj.get("id", res.request_id)
                    if obj.get("usage"):
                        res.tokens = obj["usage"]["completion_tokens"]
                    for choice in obj.get("choices", ()):
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if res.ttft is None:
                                res.ttft = time.monotonic() - res.start
                            text.append(piece)
    except (TimeoutError, aiohttp.ClientError) as exc:
        res.error = type(exc).__name__
    res.end = time.monotonic()
    return res, "".join(text)


def connector(limit: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, force_close=False)


async def closed_loop(url: str, concurrency: int, seconds: float, max_tokens: int) -> dict:
    results: list[Result] = []
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector(concurrency), timeout=timeout) as s:

        async def client(k: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                msg = [{"role": "user", "content": f"client {k} request {n}: tell me a story"}]
                res, _ = await chat(s, url, msg, max_tokens)
                results.append(res)
                n += 1

        t0 = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        wall = time.monotonic() - t0
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    ttfts = sorted(r.ttft for r in ok if r.ttft is not None)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1) if ttfts else None,
    }


async def routing_cost(direct: str, pooled: str, n: int, max_tokens: int) -> dict:
    timings: dict[str, list[float]] = {"one_address": [], "pool_of_two": []}
    async with aiohttp.ClientSession(connector=connector(2)) as s:
        for i in range(n):
            for name, url in (("one_address", direct), ("pool_of_two", pooled)):
                msg = [{"role": "user", "content": f"[reply]short answer {i}[/reply]"}]
                res, _ = await chat(s, url, msg, max_tokens)
                if res.ok and res.ttft is not None and i >= 3:  # first few: warm-up
                    timings[name].append(res.ttft)
    out = {k: round(1000 * statistics.median(v), 2) for k, v in timings.items()}
    out["added_ms"] = round(out["pool_of_two"] - out["one_address"], 2)
    out["samples"] = len(timings["one_address"])
    return out


def served_by(event_logs: list[Path]) -> dict[str, int]:
    where: dict[str, int] = {}
    for i, path in enumerate(event_logs):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                ev = json.loads(line)
                if ev.get("event") == "request":
                    where[ev["request_id"]] = i
    return where


async def affinity(url: str, logs: list[Path], conversations: int, turns: int) -> dict:
    system = "You are a meticulous assistant who answers in full sentences. " * 12
    ids: list[list[str]] = [[] for _ in range(conversations)]
    errors = 0
    async with aiohttp.ClientSession(connector=connector(conversations)) as s:

        async def conversation(c: int) -> None:
            nonlocal errors
            messages = [{"role": "system", "content": f"Conversation {c}. {system}"}]
            for t in range(turns):
                messages.append({"role": "user", "content": f"[reply]turn {t} of {c}[/reply]"})
                res, text = await chat(s, url, messages, 32)
                if not res.ok:
                    errors += 1
                    return
                messages.append({"role": "assistant", "content": text})
                ids[c].append(res.request_id)

        await asyncio.gather(*(conversation(c) for c in range(conversations)))
    await asyncio.sleep(0.5)  # event logs are written when a request ends
    where = served_by(logs)
    same = total = 0
    per_replica = [0] * len(logs)
    for conv in ids:
        placed = [where.get(rid) for rid in conv]
        for p in placed:
            if p is not None:
                per_replica[p] += 1
        for p in placed[1:]:
            total += 1
            same += p == placed[0]
    return {
        "conversations": conversations,
        "turns": turns,
        "errors": errors,
        "later_turns_same_replica": same,
        "later_turns": total,
        "share": round(same / total, 3) if total else None,
        "requests_per_replica": per_replica,
        "max_over_min": round(max(per_replica) / max(1, min(per_replica)), 3),
    }


async def failover(url: str, servers: ReplicaSet, concurrency: int, seconds: float) -> dict:
    results: list[Result] = []
    stop_at = time.monotonic() + seconds
    killed_at = detected_at = 0.0
    in_flight_on_victim = None
    victim = servers.servers[-1]
    victim_url = victim.endpoints.grpc_url

    async def probe(s: aiohttp.ClientSession) -> None:
        nonlocal killed_at, detected_at, in_flight_on_victim
        await asyncio.sleep(seconds / 3)
        async with s.get(url + "/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith("trtllm_proxy_replica_requests_in_flight") and victim_url in line:
                in_flight_on_victim = int(float(line.split()[-1]))
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.kill)
        while time.monotonic() - killed_at < 10:
            async with s.get(url + "/health/ready") as r:
                body = await r.json()
            if any(x["url"] == victim_url and not x["ready"] for x in body.get("replicas", ())):
                detected_at = time.monotonic()
                return
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(connector=connector(concurrency + 2)) as s:

        async def client(k: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                msg = [{"role": "user", "content": f"failover client {k} request {n}"}]
                res, _ = await chat(s, url, msg, 48)
                results.append(res)
                n += 1

        await asyncio.gather(probe(s), *(client(k) for k in range(concurrency)))
    before = [r for r in results if r.start < killed_at]
    after = [r for r in results if r.start >= killed_at]
    after_seen = [r for r in results if r.start >= detected_at]
    return {
        "replicas": len(servers.servers),
        "concurrency": concurrency,
        "requests": len(results),
        "detected_after_s": round(detected_at - killed_at, 3),
        "in_flight_on_killed_replica": in_flight_on_victim,
        "errors_started_before_kill": sum(not r.ok for r in before),
        "errors_started_after_kill": sum(not r.ok for r in after),
        "errors_started_after_detection": sum(not r.ok for r in after_seen),
        "error_kinds": sorted({r.error for r in results if not r.ok}),
        "requests_started_after_kill": len(after),
    }


def build_repo(base: Path, token_ms: float, slots: int, i: int) -> tuple[Path, Path]:
    log = base / f"events-{i}.jsonl"
    # batch_slots: the scripted engine's queueing (requests beyond it wait for a slot).
    knobs: dict[str, Any] = {"token_delay_ms": token_ms, "event_log": log, "batch_slots": slots}
    options = ScriptedEngineOptions(**knobs)
    repo = write_model_repository(
        base / f"repo-{i}",
        engine="scripted",
        tokenizer_dir=bundled_qwen3_tokenizer_dir(),
        scripted=options,
    )
    return repo, log


class Replicas:
    """``count`` tritonservers, each on a model repository of its own (its own event log)."""

    def __init__(self, base: Path, count: int, token_ms: float, slots: int) -> None:
        built = [build_repo(base, token_ms, slots, i) for i in range(count)]
        self.logs = [log for _, log in built]
        self.sets = [ReplicaSet(repo, 1, base / f"log-{i}") for i, (repo, _) in enumerate(built)]
        for i in range(count):
            (base / f"log-{i}").mkdir(exist_ok=True)
        self.servers = [s.servers[0] for s in self.sets]

    def start(self) -> None:
        for s in self.sets:
            s.start()

    def urls(self, n: int | None = None) -> str:
        return ",".join(s.endpoints.grpc_url for s in self.servers[: n or len(self.servers)])

    def stop(self) -> None:
        for s in self.sets:
            s.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--token-ms", type=float, default=20.0)
    p.add_argument("--batch-slots", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seconds", type=float, default=12.0, help="per scaling point")
    p.add_argument("--concurrency", default="8,32,64")
    p.add_argument("--replicas", default="1,2,4")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    counts = [int(x) for x in args.replicas.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    base = Path(tempfile.mkdtemp(prefix="dp-scaling-"))
    replicas = Replicas(base, max(counts), args.token_ms, args.batch_slots)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "engine": {"token_ms": args.token_ms, "batch_slots": args.batch_slots},
        "max_tokens": args.max_tokens,
        "seconds_per_point": args.seconds,
    }
    proxies: list[Proxy] = []
    try:
        replicas.start()
        scaling = []
        for n in counts:
            proxy = start_proxy(replicas.urls(n), base, f"r{n}")
            proxies.append(proxy)
            for c in levels:
                row = asyncio.run(closed_loop(proxy.url, c, args.seconds, args.max_tokens))
                row["replicas"] = n
                scaling.append(row)
                print(json.dumps(row), flush=True)
            proxy.stop()
        report["scaling"] = scaling

        direct = start_proxy(replicas.urls(1), base, "direct")
        pooled = start_proxy(replicas.urls(1) + "," + replicas.urls(2).split(",")[1], base, "p2")
        proxies += [direct, pooled]
        # The pool spreads c=1 requests round-robin: both replicas are idle and identical.
        report["routing_ttft"] = asyncio.run(routing_cost(direct.url, pooled.url, 40, 4))
        print(json.dumps(report["routing_ttft"]), flush=True)
        direct.stop()
        pooled.stop()

        full = start_proxy(replicas.urls(), base, "affinity")
        proxies.append(full)
        report["affinity"] = asyncio.run(affinity(full.url, replicas.logs, 32, 6))
        print(json.dumps(report["affinity"]), flush=True)
        report["failover"] = asyncio.run(failover(full.url, replicas, 32, 9.0))
        print(json.dumps(report["failover"]), flush=True)
        full.stop()
    finally:
        for proxy in proxies:
            proxy.stop()
        replicas.stop()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
