"""``trtllm-stack proxy --workers N``: N proxy processes on one port.

One process tops out at a few thousand streamed tokens per second per core (python/docs/
bench.md), below what a 4-GPU box generates; more processes use more cores. Each worker
binds its own socket with SO_REUSEPORT, so the kernel spreads new connections over the
workers (no shared accept queue to fight over), and opens its own engine connections.

- Limits hold for the whole server: ``max_in_flight`` counts requests of every worker in
  one shared-memory array (a slot per worker, so a worker that dies gives its count back).
- Metrics: prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh
  directory per server); whichever worker answers ``/metrics`` reports the sum over all.
- Shutdown: SIGINT/SIGTERM reach every worker, each stops accepting and drains its streams
  for up to the graceful timeout; the supervisor waits for all of them.
- A worker that dies is restarted; three deaths within a minute stop the server (exit 1).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from trtllm_stack.errors import UserError

log = logging.getLogger("trtllm_stack.proxy")

GRACEFUL_SECONDS = 5  # uvicorn's timeout_graceful_shutdown in every worker
_PR_SET_PDEATHSIG = 1


class SharedInFlight:
    """Requests in flight across workers; ``acquire`` is False at the limit (then: 429)."""

    __slots__ = ("_counts", "_index", "_limit", "_lock")

    def __init__(self, counts: Any, index: int, limit: int) -> None:
        self._counts = counts.get_obj()
        self._lock = counts.get_lock()
        self._index = index
        self._limit = limit

    def acquire(self) -> bool:
        with self._lock:
            if sum(self._counts) >= self._limit:
                return False
            self._counts[self._index] += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._counts[self._index] -= 1

    def total(self) -> int:
        with self._lock:
            return int(sum(self._counts))


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something listens on: SO_REUSEPORT would otherwise join a proxy that
    is already running (same user) and split its traffic with it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use") from None
            raise UserError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _worker_main(settings: Any, index: int, counts: Any, parent: int) -> None:
    """One worker process (spawned): its own socket on the shared port, app, engine."""
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        return
    import uvicorn

    from trtllm_stack.proxy.app import create_app
    from trtllm_stack.proxy.cli import uvicorn_options

    sock = reuseport_socket(settings.host, settings.port)
    app = create_app(settings)
    if settings.max_in_flight:
        app.state.ctx.shared_limit = SharedInFlight(counts, index, settings.max_in_flight)
    config = uvicorn.Config(app, **uvicorn_options(settings))
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(settings: Any) -> int:
    """Run ``settings.workers`` workers until SIGINT/SIGTERM; the exit code."""
    n = settings.workers
    check_port_free(settings.host, settings.port)
    metrics_dir = tempfile.mkdtemp(prefix="trtllm-stack-metrics-")
    # Read by prometheus_client at import in each worker (spawned, so a fresh import).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Array("q", n)
    procs: list[Any] = [None] * n
    deaths: list[float] = []
    stopping = False

    def start(i: int) -> None:
        proc = ctx.Process(
            target=_worker_main,
            args=(settings, i, counts, os.getpid()),
            name=f"trtllm-stack-proxy-worker-{i}",
        )
        proc.start()
        procs[i] = proc

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    exit_code = 0
    try:
        for i in range(n):
            start(i)
        print(
            f"trtllm-stack proxy: {n} workers on {settings.host}:{settings.port} (SO_REUSEPORT)",
            file=sys.stderr,
            flush=True,
        )
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if stopping or proc.is_alive():
                    continue
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid, metrics_dir)
                with counts.get_lock():
                    counts[i] = 0  # its requests died with it
                now = time.monotonic()
                deaths[:] = [t for t in deaths if now - t < 60] + [now]
                print(
                    f"trtllm-stack proxy: worker {i} (pid {proc.pid}) exited with code"
                    f" {proc.exitcode}",
                    file=sys.stderr,
                    flush=True,
                )
                if len(deaths) >= 3:
                    print(
                        "trtllm-stack proxy: 3 worker deaths within a minute; stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    stopping, exit_code = True, 1
                    break
                start(i)
    finally:
        for proc in procs:
            if proc is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SECONDS + 10
        for proc in procs:
            if proc is None:
                continue
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code
