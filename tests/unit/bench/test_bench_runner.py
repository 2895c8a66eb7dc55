"""Closed and open loop scheduling with a fake in-process target (counts, bounds, Ctrl-C)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from pathlib import Path
from typing import Any

from trtllm_stack.bench.metrics import ERROR, INCOMPLETE, OK, SLO, RequestRecord
from trtllm_stack.bench.report import load_result
from trtllm_stack.bench.runner import (
    Bounds,
    Level,
    LevelRun,
    machine_busy_seconds,
    process_cpu_seconds,
    run_level,
    tree_cpu_seconds,
)
from trtllm_stack.bench.session import Session
from trtllm_stack.bench.workload import WorkItem

ITEMS = [WorkItem(f"p{i}", (1, 2, i), max_tokens=4, exact_output=True) for i in range(3)]


class FakeTarget:
    """Streams ``max_tokens`` tokens ``gap`` s apart; every ``fail_every``-th request fails."""

    kind = "fake"

    def __init__(self, gap: float = 0.002, fail_every: int = 0) -> None:
        self.url = "fake://"
        self.gap = gap
        self.fail_every = fail_every
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent: list[int] = []
        self.finalized = 0

    async def open(self, pool_size: int | None) -> None: ...
    async def close(self) -> None: ...

    async def prepare(self, count: int | None) -> None:
        self.prepared = count

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind}

    async def send(self, item: WorkItem, rec: RequestRecord) -> None:
        self.sent.append(rec.index)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        t0 = time.perf_counter()
        stamps = []
        try:
            for _ in range(item.max_tokens):
                await asyncio.sleep(self.gap)
                stamps.append(time.perf_counter())
            if self.fail_every and rec.index % self.fail_every == self.fail_every - 1:
                rec.status, rec.error = ERROR, "synthetic"
        finally:
            self.in_flight -= 1
            rec.e2e = time.perf_counter() - t0
            rec.tokens_out = len(stamps)
            rec.tokens_in = len(item.prompt_ids)
            rec.chunks = len(stamps)
            if stamps:
                rec.ttft = stamps[0] - t0
                rec.itl = [b - a for a, b in itertools.pairwise(stamps)]

    def finalize(self, records: list[RequestRecord]) -> None:
        self.finalized += len(records)


async def test_closed_loop_keeps_exactly_n_in_flight_and_counts_add_up() -> None:
    target = FakeTarget(fail_every=5)
    run = LevelRun(Level("closed", concurrency=4))
    await run_level(target, run.level, ITEMS, Bounds(num_requests=20), run)
    assert len(run.records) == 20 and sorted(target.sent) == list(range(20))
    assert target.max_in_flight == 4
    assert sum(r.status == OK for r in run.records) == 16
    assert sum(r.status == ERROR for r in run.records) == 4
    assert all(r.tokens_out == 4 and len(r.itl) == 3 for r in run.records)
    assert target.finalized == 20
    assert run.wall_time > 0 and "bench" in run.cpu_s


async def test_warmup_is_not_recorded() -> None:
    target = FakeTarget()
    run = LevelRun(Level("closed", concurrency=2))
    await run_level(target, run.level, ITEMS, Bounds(num_requests=3, warmup=2), run)
    assert len(target.sent) == 5 and len(run.records) == 3


async def test_duration_bound_cancels_after_grace() -> None:
    target = FakeTarget(gap=0.05)  # each request takes ~0.2 s
    run = LevelRun(Level("closed", concurrency=3))
    await run_level(target, run.level, ITEMS, Bounds(duration=0.05, grace=0.01), run)
    # started before the deadline, still running after the grace period
    assert len(run.records) == 3
    assert all(r.status == INCOMPLETE for r in run.records)
    assert target.in_flight == 0  # cancelled, not leaked


async def test_open_loop_cap_and_count() -> None:
    target = FakeTarget(gap=0.003)
    run = LevelRun(Level("open", rate=math.inf, max_in_flight=3))
    await run_level(target, run.level, ITEMS, Bounds(num_requests=12), run)
    assert len(run.records) == 12 and all(r.status == OK for r in run.records)
    assert target.max_in_flight == 3
    uncapped = FakeTarget(gap=0.003)
    run2 = LevelRun(Level("open", rate=math.inf))
    await run_level(uncapped, run2.level, ITEMS, Bounds(num_requests=12), run2)
    assert uncapped.max_in_flight == 12  # all at once


async def test_session_interrupt_writes_partial_result(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    target = FakeTarget(gap=0.02)
    session = Session(
        [("fake", target)],
        [Level("closed", concurrency=1), Level("closed", concurrency=2)],
        ITEMS,
        Bounds(num_requests=1000),
        SLO(ttft=1.0),
        {},
        out,
        settings={},
        progress=False,
    )
    task = asyncio.create_task(session.run())
    await asyncio.sleep(0.3)
    session.interrupted = True  # what the SIGINT handler sets before cancelling
    task.cancel()
    result = await task
    assert result["interrupted"] is True
    saved = load_result(out)
    level = saved["targets"][0]["levels"][0]
    assert level["interrupted"] is True
    statuses = [r["status"] for r in level["records"]]
    assert statuses.count("ok") >= 2 and statuses[-1] == "incomplete"
    assert level["summary"]["completed"] == statuses.count("ok")
    assert len(saved["targets"][0]["levels"]) == 1  # the second level never started


def test_process_cpu_seconds_of_self() -> None:
    import os

    before = process_cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    # /proc ticks are 10 ms; 0.1 s of busy loop must show as at least 0.05 s
    assert process_cpu_seconds(os.getpid()) - before >= 0.05


def test_tree_cpu_counts_live_children() -> None:
    import os
    import subprocess
    import sys

    burn = (
        "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\ntime.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        deadline = time.monotonic() + 20
        while process_cpu_seconds(child.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = process_cpu_seconds(os.getpid())
        assert tree_cpu_seconds(os.getpid()) - own >= 0.25
    finally:
        child.kill()
        child.wait()


def test_machine_busy_seconds_grows_with_our_own_work() -> None:
    before = machine_busy_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    assert machine_busy_seconds() - before >= 0.05
