"""Load generation: closed loop (N clients, each sends its next request when the last
ends) and open loop (Poisson arrivals at a rate, optional cap on requests in flight).

One asyncio loop drives every request; each request is an independent streamed call.
Levels are bounded by a request count and/or a duration; requests still running
``grace`` seconds after the bound are cancelled and recorded as incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from trtllm_stack.bench.metrics import ERROR, INCOMPLETE, OK, RequestRecord
from trtllm_stack.bench.workload import WorkItem


class Target(Protocol):
    kind: str
    url: str

    async def open(self, pool_size: int | None) -> None: ...
    async def prepare(self, count: int | None) -> None: ...
    async def close(self) -> None: ...
    async def send(self, item: WorkItem, rec: RequestRecord) -> None: ...
    def finalize(self, records: list[RequestRecord]) -> None: ...
    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Level:
    """One load point: closed loop at ``concurrency``, or open loop at ``rate`` req/s."""

    mode: str  # "closed" | "open"
    concurrency: int | None = None
    rate: float | None = None  # math.inf: every request at once
    max_in_flight: int | None = None

    @property
    def name(self) -> str:
        if self.mode == "closed":
            return f"c={self.concurrency}"
        rate = "inf" if self.rate is not None and math.isinf(self.rate) else f"{self.rate:g}"
        cap = f",max={self.max_in_flight}" if self.max_in_flight else ""
        return f"rate={rate}{cap}"

    @property
    def pool_size(self) -> int | None:
        return self.concurrency if self.mode == "closed" else self.max_in_flight

    def to_json(self) -> dict[str, Any]:
        rate: float | str | None = self.rate
        if self.rate is not None and math.isinf(self.rate):
            rate = "inf"
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": rate,
            "max_in_flight": self.max_in_flight,
        }


@dataclass(frozen=True)
class Bounds:
    num_requests: int | None = None
    duration: float | None = None
    grace: float = 60.0
    warmup: int = 0


@dataclass
class LevelRun:
    """What one (target, level) produced; records stay valid if the run is interrupted."""

    level: Level
    records: list[RequestRecord] = field(default_factory=list)
    wall_time: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


# ---------------------------------------------------------------------------- CPU time


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    return _read_stat(pid)[1]


def _read_stat(pid: int) -> tuple[int, float]:
    """(parent pid, utime + stime in seconds) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # fields after the command name, which may itself contain spaces and parentheses
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return int(fields[1]), ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and its live descendants (tritonserver runs its Python
    models in child stub processes; their CPU is the server's too)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid, seconds = _read_stat(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        parents[int(entry.name)] = ppid
        cpu[int(entry.name)] = seconds
    if root not in cpu:
        raise ProcessLookupError(root)
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat): with the per-process
    numbers it shows how much of a level's CPU went to other work on the machine."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {}
    with contextlib.suppress(OSError, ValueError):
        snap["machine"] = machine_busy_seconds()
    for name, pid in pids.items():
        with contextlib.suppress(OSError, ValueError, IndexError):
            snap[name] = tree_cpu_seconds(pid)
    return snap


# ---------------------------------------------------------------------------- progress


class Progress:
    """One status line on stderr, redrawn a few times a second (plain text: cheap)."""

    def __init__(self, enabled: bool, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.label = ""
        self.total: int | None = None
        self.done = 0
        self.errors = 0
        self.tokens = 0
        self.in_flight = 0
        self.t0 = time.perf_counter()
        self.duration: float | None = None

    def start(self, label: str, total: int | None, duration: float | None) -> None:
        self.label, self.total, self.duration = label, total, duration
        self.done = self.errors = self.tokens = self.in_flight = 0
        self.t0 = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        if self.total:
            frac = self.done / self.total
        elif self.duration:
            frac = elapsed / self.duration
        else:
            frac = 0.0
        frac = min(max(frac, 0.0), 1.0)
        width = 20
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        total = f"/{self.total}" if self.total else ""
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.label} [{bar}] {self.done}{total} done, {self.in_flight} in flight,"
            f" {self.errors} err, {elapsed:5.1f}s, {rate:8.0f} out tok/s"
        )

    def draw(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K" + self.line() + "\n")
            self.stream.flush()

    async def ticker(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(0.25)


# ---------------------------------------------------------------------------- one level


async def _one(
    target: Target, item: WorkItem, rec: RequestRecord, progress: Progress | None
) -> None:
    if progress is not None:
        progress.in_flight += 1
    try:
        await target.send(item, rec)
    except asyncio.CancelledError:
        rec.status, rec.error = INCOMPLETE, None
        raise
    except Exception as exc:  # a target bug must not end the run: record it
        rec.status, rec.error = ERROR, f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if progress is not None:
            progress.in_flight -= 1
            if rec.status != INCOMPLETE:
                progress.done += 1
                progress.tokens += rec.tokens_out
                if rec.status == ERROR:
                    progress.errors += 1


async def run_level(
    target: Target,
    level: Level,
    items: Sequence[WorkItem],
    bounds: Bounds,
    run: LevelRun,
    progress: Progress | None = None,
    seed: int = 0,
    cpu_pids: dict[str, int] | None = None,
    label: str | None = None,
) -> None:
    """Run one level, appending to ``run.records`` as requests start (so a cancelled
    run keeps what it measured). Cancellation stops the level and re-raises."""
    if bounds.num_requests is None and bounds.duration is None:
        raise ValueError("a level needs num_requests or duration")
    await target.prepare(level.pool_size)
    if bounds.warmup:
        warm = LevelRun(level)
        warm_level = Level(
            "closed", concurrency=min(bounds.warmup, level.pool_size or bounds.warmup)
        )
        await _drive(
            target,
            warm_level,
            items,
            Bounds(num_requests=bounds.warmup, grace=bounds.grace),
            warm,
            None,
            seed + 1,
        )
    pids = dict(cpu_pids or {})
    pids.setdefault("bench", os.getpid())
    before = _cpu_snapshot(pids)
    if progress is not None:
        progress.start(f"{label or target.url} {level.name}", bounds.num_requests, bounds.duration)
    try:
        await _drive(target, level, items, bounds, run, progress, seed)
    finally:
        after = _cpu_snapshot(pids)
        run.cpu_s = {k: round(after[k] - before[k], 4) for k in after if k in before}
        if progress is not None:
            progress.finish()
        target.finalize(run.records)


async def _drive(
    target: Target,
    level: Level,
    items: Sequence[WorkItem],
    bounds: Bounds,
    run: LevelRun,
    progress: Progress | None,
    seed: int,
) -> None:
    t0 = time.perf_counter()
    deadline = t0 + bounds.duration if bounds.duration is not None else math.inf
    limit = bounds.num_requests if bounds.num_requests is not None else math.inf
    next_index = 0

    def take() -> tuple[WorkItem, RequestRecord] | None:
        nonlocal next_index
        now = time.perf_counter()
        if next_index >= limit or now >= deadline:
            return None
        rec = RequestRecord(index=next_index, start=now - t0)
        item = items[next_index % len(items)]
        next_index += 1
        run.records.append(rec)
        return item, rec

    async def closed_client() -> None:
        while (job := take()) is not None:
            await _one(target, job[0], job[1], progress)

    async def open_dispatcher(tasks: set[asyncio.Task[None]]) -> None:
        rng = random.Random(seed)
        gate = asyncio.Semaphore(level.max_in_flight) if level.max_in_flight else None
        rate = level.rate or math.inf
        due = t0

        async def fire(item: WorkItem, rec: RequestRecord) -> None:
            try:
                await _one(target, item, rec, progress)
            finally:
                if gate is not None:
                    gate.release()

        while True:
            if not math.isinf(rate):
                due += rng.expovariate(rate)
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if gate is not None:
                # arrivals beyond the cap wait here; the request is sent (and timed) when a
                # slot frees
                await gate.acquire()
            job = take()
            if job is None:
                if gate is not None:
                    gate.release()
                return
            task = asyncio.create_task(fire(*job))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    ticker = (
        asyncio.create_task(progress.ticker())
        if progress is not None and progress.enabled
        else None
    )
    in_flight: set[asyncio.Task[None]] = set()
    try:
        if level.mode == "closed":
            workers = [asyncio.create_task(closed_client()) for _ in range(level.concurrency or 1)]
            in_flight.update(workers)
            await _wait_bounded(in_flight, deadline, bounds.grace)
        else:
            dispatcher = asyncio.create_task(open_dispatcher(in_flight))
            await _wait_bounded({dispatcher}, deadline, bounds.grace)
            await _wait_bounded(in_flight, deadline, bounds.grace)
    finally:
        pending = [t for t in in_flight if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        ends = [
            r.start + r.e2e for r in run.records if r.e2e is not None and r.status != INCOMPLETE
        ]
        run.wall_time = max(ends) if ends else time.perf_counter() - t0
        for r in run.records:
            if r.status == OK and r.e2e is None:
                r.status = INCOMPLETE  # never started its stream before the end


async def _wait_bounded(tasks: set[asyncio.Task[None]], deadline: float, grace: float) -> None:
    """Wait for tasks; give up ``grace`` seconds after the deadline (tasks left are
    cancelled by the caller)."""
    while tasks:
        pending = {t for t in tasks if not t.done()}
        if not pending:
            return
        timeout = None if math.isinf(deadline) else max(0.0, deadline + grace - time.perf_counter())
        done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.ALL_COMPLETED)
        if timeout is not None and not done.issuperset(pending):
            return
