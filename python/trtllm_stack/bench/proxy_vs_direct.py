"""Proxy SSE versus the same requests straight to Triton gRPC, on the scripted CPU engine.

Starts tritonserver (scripted engine, zero delay by default) and the proxy
(``trtllm-stack proxy``) on free loopback ports, runs ``trtllm-stack bench`` with both
targets and the two servers' CPU time recorded per level, prints ``bench compare`` and a
Markdown summary (added TTFT, proxy CPU per token, throughput ratio, errors), then stops
everything. Usage::

    python -m trtllm_stack.bench.proxy_vs_direct -o python/docs/bench/proxy-vs-direct.json

Arguments after ``--`` go to ``trtllm-stack bench`` unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Stack:
    grpc_url: str  # host:port
    proxy_url: str  # http://127.0.0.1:PORT
    triton_pid: int
    proxy_pid: int


def wait_proxy_ready(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 90.0
) -> None:
    """Wait for a started ``trtllm-stack proxy`` to answer /health/ready (its log's end in
    the error if it exits first)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"proxy not ready after {timeout:.0f} s")
        time.sleep(0.3)


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    token_delay_ms: float = 0.0,
    default_reply_tokens: int = 512,
    proxy_args: Sequence[str] = (),
    event_log: Path | None = None,
) -> Iterator[Stack]:
    """tritonserver with the scripted engine and the proxy in front of it; both stopped
    on exit (also on errors and Ctrl-C)."""
    from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
    from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository
    from trtllm_stack.triton.server import TritonServer, free_port

    repo = write_model_repository(
        workdir / "repo",
        engine="scripted",
        tokenizer_dir=bundled_qwen3_tokenizer_dir(),
        scripted=ScriptedEngineOptions(
            token_delay_ms=token_delay_ms,
            default_reply_tokens=default_reply_tokens,
            event_log=event_log,
        ),
        force=True,
    )
    server = TritonServer(repo, log_path=workdir / "tritonserver.log")
    endpoints = server.start()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        log = open(workdir / "proxy.log", "wb")  # noqa: SIM115 (closed below)
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trtllm_stack",
                "proxy",
                "--triton-url",
                endpoints.grpc_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                *proxy_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        wait_proxy_ready(proxy, url, workdir / "proxy.log")
        assert server.pid is not None
        yield Stack(endpoints.grpc_url, url, server.pid, proxy.pid)
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)  # SIGINT may be ignored in background jobs
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        server.stop()


def bench_command(stack: Stack, args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trtllm_stack",
        "bench",
        "--target",
        f"direct=triton-grpc://{stack.grpc_url}",
        "--target",
        f"proxy={stack.proxy_url}",
        "--concurrency",
        args.concurrency,
        "--input-len",
        str(args.input_len),
        "--output-len",
        str(args.output_len),
        "--num-requests",
        str(args.num_requests),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--cpu-pid",
        f"proxy={stack.proxy_pid}",
        "--cpu-pid",
        f"tritonserver={stack.triton_pid}",
        "-o",
        str(args.output),
        *extra,
    ]


def other_cpu(level: dict[str, Any]) -> float | None:
    """CPU per output token the machine spent outside bench, proxy and tritonserver during
    a level: near 0 on an idle box; large values mean the numbers are skewed."""
    cpu = {k: v.get("us_per_output_token") for k, v in level["cpu"].items()}
    if cpu.get("machine") is None or any(v is None for v in cpu.values()):
        return None
    return float(cpu["machine"]) - sum(float(v) for k, v in cpu.items() if k != "machine")


def markdown_summary(result: dict[str, Any]) -> str:
    """The numbers issue 3 sets targets for, one row per concurrency."""
    targets = {t["label"]: t for t in result["targets"]}
    direct, proxy = targets.get("direct"), targets.get("proxy")
    if direct is None or proxy is None:
        return "(need targets labelled direct and proxy)\n"
    by_level = {lv["level"]["concurrency"]: lv for lv in direct["levels"]}
    rows = [
        "| concurrency | direct TTFT p50 / p99 (ms) | proxy TTFT p50 / p99 (ms)"
        " | added TTFT p50 / p99 (ms) | proxy CPU us/token | direct tok/s | proxy tok/s"
        " | proxy/direct | errors direct / proxy | other work on the box, direct / proxy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in proxy["levels"]:
        c = lv["level"]["concurrency"]
        d = by_level.get(c)
        if d is None:
            continue
        sd, sp = d["summary"], lv["summary"]

        def f(v: Any, digits: int = 2) -> str:
            return "-" if v is None else f"{v:.{digits}f}"

        def added(pct: str, sd: dict[str, Any] = sd, sp: dict[str, Any] = sp) -> str:
            a, b = sd["ttft_ms"][pct], sp["ttft_ms"][pct]
            return "-" if a is None or b is None else f"{b - a:+.2f}"

        tps_d, tps_p = sd["output_tokens_per_s"], sp["output_tokens_per_s"]
        ratio = f"{tps_p / tps_d:.2f}" if tps_d and tps_p else "-"
        cpu = lv["cpu"].get("proxy", {}).get("us_per_output_token")
        partial = " (partial)" if lv.get("interrupted") or d.get("interrupted") else ""
        rows.append(
            f"| {c}{partial} | {f(sd['ttft_ms']['p50'])} / {f(sd['ttft_ms']['p99'])}"
            f" | {f(sp['ttft_ms']['p50'])} / {f(sp['ttft_ms']['p99'])}"
            f" | {added('p50')} / {added('p99')} | {f(cpu, 1)} | {f(tps_d, 0)} | {f(tps_p, 0)}"
            f" | {ratio} | {sd['errors']} / {sp['errors']}"
            f" | {f(other_cpu(d), 0)} / {f(other_cpu(lv), 0)} us/token |"
        )
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m trtllm_stack.bench.proxy_vs_direct",
        description="Proxy SSE vs direct Triton gRPC on the scripted CPU engine.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="result JSON (plot next to it)")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-requests", type=int, default=2000, help="per level (cap)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level and target")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--keep-logs", type=Path, default=None, help="copy server logs here")
    args = p.parse_args(argv)
    from trtllm_stack.bench.report import compare_text, load_result

    with tempfile.TemporaryDirectory(prefix="bench-pvd-") as tmp:
        work = Path(tmp)
        with running_stack(
            work, args.token_delay_ms, default_reply_tokens=max(512, 2 * args.output_len)
        ) as stack:
            cmd = bench_command(stack, args, extra)
            print("+", shlex.join(cmd), file=sys.stderr, flush=True)
            rc = subprocess.call(cmd)
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for name in ("tritonserver.log", "proxy.log"):
                with contextlib.suppress(OSError):
                    (args.keep_logs / name).write_bytes((work / name).read_bytes())
    if not args.output.exists():
        return rc or 1
    result = load_result(args.output)
    print()
    print(compare_text(result, None, ("A", "B")))
    print(markdown_summary(result))
    return rc


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
