"""Long prompts versus running streams, and turn 10 of a long conversation (bench.md).

One tritonserver (scripted engine, 20 ms per token, 32K context) for every run; the proxy
is restarted per variant:

- ``before``: the proxy source of ``--before-rev`` (default b58567a: templating + ``encode``
  in ``asyncio.to_thread`` above 16K characters), exported with ``git archive`` to a temp
  dir and run with PYTHONPATH pointing at it;
- ``no-cache``: this tree with ``--prompt-cache-bytes 0`` (prompt thread, no cache);
- ``no-warm``: this tree with ``--no-prompt-warm-replies`` (replies not tokenized ahead;
  not in the default ``--variants``);
- ``nice-0``: this tree with ``--prompt-thread-nice 0`` (the prompt thread at the loop's
  priority; not in the default ``--variants``);
- ``after``: this tree with its defaults.

Per variant: (1) TTFT of turn 10 of ``--conversations`` fresh ~30K-token conversations
(turns 1..9 sent first, each reply sent back in the next turn, as a client does), minus the
TTFT of the same token ids sent straight to Triton; (2) inter-token latency of 32 running
streams for ``--duration`` s without long prompts, then (3) the same while a fresh
~28K-token prompt (turn 10 of a new conversation: every block a cache miss) arrives once
per second; with ``--direct-long-prompts``, (4) the same while those prompts' token ids go
straight to Triton instead (the floor: what the box and the engine stand-in cost the
streams without any proxy work). ``--repeat`` runs the variants again, interleaved, so
that before/after share the same minutes of box load.

Run from the repo root (takes ~4 min per repeat):
    python python/scripts/perf/long_prompt_bench.py --repeat 2 \
        -o python/docs/bench/long-prompts.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trtllm_stack.bench.long_prompts import conversation
from trtllm_stack.bench.proxy_vs_direct import wait_proxy_ready
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton.client import EngineClient
from trtllm_stack.triton.model_repo import (
    RepoOptions,
    ScriptedEngineOptions,
    write_model_repository,
)
from trtllm_stack.triton.server import TritonServer, free_port
from trtllm_stack.triton.tensors import EngineRequest

REPO_ROOT = Path(__file__).resolve().parents[3]
DOC_WORDS = 17_000  # about 28K tokens at turn 10
STREAMS = 32


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def chat_body(messages: list[dict[str, Any]], max_tokens: int, stream: bool) -> bytes:
    return json.dumps(
        {"model": "qwen3", "messages": messages, "max_tokens": max_tokens, "stream": stream}
    ).encode()


@contextlib.contextmanager
def proxy(grpc_url: str, work: Path, pythonpath: str | None, args: list[str]) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    log = open(work / f"proxy-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtllm_stack", "proxy", "--triton-url", grpc_url,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_proxy_ready(proc, url, work / f"proxy-{port}.log")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def stream_times(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[float, list[float]]:
    """(start, arrival time of each SSE chunk that carries generated text)."""
    start = time.perf_counter()
    arrivals: list[float] = []
    async with session.post(
        f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    ) as r:
        r.raise_for_status()
        buf = b""
        async for chunk in r.content.iter_any():
            now = time.perf_counter()
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if ev.startswith(b"data: {") and b'"delta":{"' in ev and b'"role"' not in ev:
                    arrivals.append(now)
    return start, arrivals


async def ttft(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(
        f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    ) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_any():
            if b"content" in chunk:
                first = time.perf_counter() - start
                async for _ in r.content.iter_any():
                    pass
                return first
    raise RuntimeError("stream ended without a token")


async def prompt_seconds(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("trtllm_proxy_prompt_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("trtllm_proxy_prompt_seconds_count"):
            count += float(line.split()[-1])
    return total, count


async def reply_text(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    async with session.post(
        f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    ) as r:
        r.raise_for_status()
        content: str = (await r.json())["choices"][0]["message"]["content"]
        return content


async def turn10_ttfts(url: str, seeds: list[int]) -> dict[str, Any]:
    """Ten turns per seed as a client sends them: each answer that comes back is sent back
    in the next turn. The scripted engine answers turns 1-9 with the conversation's own
    answer text (``[reply]`` in the question, unpaced: ``[delay_ms=0]``)."""
    out: list[float] = []
    prompt_ms: list[float] = []
    turn10: list[list[dict[str, Any]]] = []
    async with aiohttp.ClientSession() as session:
        for seed in seeds:
            full, _ = conversation(10, seed=seed, doc_words=DOC_WORDS)
            sent = [full[0]]
            for t in range(10):
                user = dict(full[1 + 2 * t])
                if t < 9:
                    answer = full[2 + 2 * t]["content"]
                    user["content"] += f" [delay_ms=0][reply]{answer}[/reply]"
                    sent.append(user)
                    reply = await reply_text(session, url, chat_body(sent, 400, False))
                    sent.append({"role": "assistant", "content": reply})
                    continue
                sent.append(user)
                before = await prompt_seconds(session, url)
                out.append(await ttft(session, url, chat_body(sent, 2, True)) * 1000)
                after = await prompt_seconds(session, url)
                if after[1] > before[1]:
                    prompt_ms.append((after[0] - before[0]) * 1000)
            turn10.append(sent)
    return {"ttft_ms": out, "prompt_work_ms": prompt_ms, "messages": turn10}


async def direct_ttfts(
    grpc_url: str, tok: Any, conversations: list[list[dict[str, Any]]]
) -> list[float]:
    """TTFT of the same turn-10 prompts' ids sent straight to Triton."""
    client = EngineClient(grpc_url)
    out = []
    try:
        for i, messages in enumerate(conversations):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
            req = EngineRequest(
                prompt_ids=ids, max_tokens=2, end_id=tok.eos_token_id,
                pad_id=tok.eos_token_id, streaming=True,
            )  # fmt: skip
            start = time.perf_counter()
            stream = await client.open(req, f"direct-{time.time_ns()}-{i}", timeout=60)
            while (batch := await stream.next_batch()) is not None:
                if any(c.token_ids for c in batch):
                    out.append((time.perf_counter() - start) * 1000)
                    break
            stream.close()
    finally:
        await client.close()
    return out


def direct_request(tok: Any, messages: list[dict[str, Any]]) -> EngineRequest:
    """The engine request the proxy would send for ``messages`` (1 output token)."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return EngineRequest(
        prompt_ids=ids, max_tokens=1, end_id=tok.eos_token_id, pad_id=tok.eos_token_id,
        streaming=True,
    )  # fmt: skip


async def itl_run(
    url: str, duration: float, long_prompts: str | None, seed0: int, grpc_url: str, tok: Any
) -> dict[str, Any]:
    """ITL of 32 proxy streams; ``long_prompts``: None (calm), "proxy" (a fresh ~28K-token
    chat per second through the proxy) or "direct" (the same prompts' ids straight to
    Triton: what the box and the engine stand-in cost the streams, without proxy work)."""
    short = chat_body([{"role": "user", "content": "Tell me about Triton."}], 1000, True)
    # Streams end on their own (the scripted reply's length); workers start the next one.
    stop_at = time.perf_counter() + duration + 3
    window = (time.perf_counter() + 3, time.perf_counter() + 3 + duration)
    gaps: list[float] = []
    long_lat: list[float] = []
    chats = (
        [conversation(10, seed=seed0 + i, doc_words=DOC_WORDS)[0] for i in range(int(duration) + 1)]
        if long_prompts else []
    )  # fmt: skip
    bodies = [chat_body(m, 1, False) for m in chats] if long_prompts == "proxy" else []
    # Tokenized before the window, so the load generator does not tokenize during it.
    direct = [direct_request(tok, m) for m in chats] if long_prompts == "direct" else []
    engine = EngineClient(grpc_url) if direct else None

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            _, arrivals = await stream_times(session, url, short)
            for a, b in itertools.pairwise(arrivals):
                if window[0] <= a and b <= window[1]:
                    gaps.append((b - a) * 1000)

    async def via_proxy(session: aiohttp.ClientSession, i: int) -> None:
        async with session.post(
            f"{url}/v1/chat/completions", data=bodies[i],
            headers={"content-type": "application/json"},
        ) as r:  # fmt: skip
            await r.read()
            r.raise_for_status()

    async def straight_to_triton(session: aiohttp.ClientSession, i: int) -> None:
        assert engine is not None
        stream = await engine.open(direct[i], f"direct-long-{seed0}-{i}", timeout=60)
        while await stream.next_batch() is not None:
            pass
        stream.close()

    async def sender(session: aiohttp.ClientSession) -> None:
        send = straight_to_triton if direct else via_proxy
        for i in range(len(direct or bodies)):
            due = window[0] + i
            if due > window[1]:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            t = time.perf_counter()
            await send(session, i)
            long_lat.append((time.perf_counter() - t) * 1000)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(STREAMS)]
        tasks.append(asyncio.create_task(sender(session)))
        try:
            await asyncio.gather(*tasks)
        finally:
            if engine is not None:
                await engine.close()
    return {
        "long_prompts": long_prompts,
        "itl_samples": len(gaps),
        "itl_p50_ms": pct(gaps, 0.50),
        "itl_p99_ms": pct(gaps, 0.99),
        "itl_max_ms": max(gaps, default=float("nan")),
        "long_prompt_requests": len(long_lat),
        "long_prompt_latency_median_ms": statistics.median(long_lat) if long_lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before-rev", default="b58567a")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--variants", default="before,no-cache,after")
    ap.add_argument(
        "--direct-long-prompts",
        action="store_true",
        help="also measure ITL while the long prompts go straight to Triton (the floor)",
    )
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    # SIGTERM/SIGHUP unwind like Ctrl-C, so that the proxy and tritonserver are stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    tok = load_tokenizer(bundled_qwen3_tokenizer_dir())
    results: dict[str, Any] = {"runs": [], "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="lp-bench-") as tmp:
        work = Path(tmp)
        before_src = work / "before"
        before_src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", args.before_rev, "python"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive, check=True)
        variants = {
            "before": (str(before_src / "python"), []),
            "no-cache": (None, ["--prompt-cache-bytes", "0"]),
            "no-warm": (None, ["--no-prompt-warm-replies"]),
            "nice-0": (None, ["--prompt-thread-nice", "0"]),
            "after": (None, []),
        }
        repo = write_model_repository(
            work / "repo", engine="scripted", tokenizer_dir=bundled_qwen3_tokenizer_dir(),
            scripted=ScriptedEngineOptions(token_delay_ms=20.0, default_reply_tokens=300),
            options=RepoOptions(max_input_len=32_000, max_seq_len=32_768),
        )  # fmt: skip
        server = TritonServer(repo, log_path=work / "tritonserver.log")
        endpoints = server.start()
        try:
            for rep in range(args.repeat):
                for name in args.variants.split(","):
                    pythonpath, extra = variants[name]
                    with proxy(endpoints.grpc_url, work, pythonpath, extra) as url:
                        # Fresh seeds per run: nothing cached from an earlier run.
                        base = 10_000 * (rep + 1) + 100 * list(variants).index(name)
                        seeds = [base + i for i in range(args.conversations)]
                        t10 = asyncio.run(turn10_ttfts(url, seeds))
                        grpc = endpoints.grpc_url
                        direct = asyncio.run(direct_ttfts(grpc, tok, t10.pop("messages")))
                        t10["direct_ttft_ms"] = direct
                        calm = asyncio.run(itl_run(url, args.duration, None, base + 50, grpc, tok))
                        busy = asyncio.run(
                            itl_run(url, args.duration, "proxy", base + 50, grpc, tok)
                        )
                        floor = (
                            asyncio.run(itl_run(url, args.duration, "direct", base + 70, grpc, tok))
                            if args.direct_long_prompts
                            else None
                        )
                    run = {
                        "variant": name, "repeat": rep, "load_avg": os.getloadavg()[0],
                        "turn10": t10, "itl_calm": calm, "itl_long": busy,
                        "itl_long_direct": floor,
                    }  # fmt: skip
                    results["runs"].append(run)
                    t = t10["ttft_ms"]
                    print(
                        f"[{name} #{rep}] load {run['load_avg']:.1f} | turn-10 TTFT median"
                        f" {statistics.median(t):.1f} ms (added vs direct"
                        f" {statistics.median(t) - statistics.median(direct):+.1f}) prompt work"
                        f" {statistics.median(t10['prompt_work_ms']) if t10['prompt_work_ms'] else float('nan'):.1f} ms"  # noqa: E501
                        f" | ITL p50/p99/max calm {calm['itl_p50_ms']:.1f}/{calm['itl_p99_ms']:.1f}"
                        f"/{calm['itl_max_ms']:.1f} with long prompts {busy['itl_p50_ms']:.1f}"
                        f"/{busy['itl_p99_ms']:.1f}/{busy['itl_max_ms']:.1f}"
                        f" ({busy['long_prompt_requests']} long prompts)"
                        + (
                            f" | long prompts straight to Triton {floor['itl_p50_ms']:.1f}"
                            f"/{floor['itl_p99_ms']:.1f}/{floor['itl_max_ms']:.1f}"
                            if floor
                            else ""
                        ),
                        flush=True,
                    )
        finally:
            server.stop()
    results["load_avg_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
