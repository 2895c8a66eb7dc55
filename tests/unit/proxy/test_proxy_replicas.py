"""ReplicaPool routing over fake replicas: least loaded, prefix affinity within the balance
bound, down replicas never chosen, retry of failed opens, mid-stream failures, health."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from trtllm_stack.proxy.engine import EngineLimits, EngineUnavailable
from trtllm_stack.proxy.replicas import PrefixTable, ReplicaMetrics, ReplicaPool, RoutingPolicy
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest


class FakeStream:
    def __init__(self, replica: FakeReplica) -> None:
        self.replica = replica
        self.sent = 0
        self.closed = False

    async def next_batch(self) -> list[EngineChunk] | None:
        if self.sent >= 2:
            return None
        await self.replica.gate.wait()
        if self.replica.dead:
            raise EngineUnavailable("connection to the server lost")
        self.sent += 1
        return [EngineChunk([1], None, self.sent == 2)]

    def close(self) -> None:
        self.closed = True


class FakeReplica:
    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.dead = False
        self.ready = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.opened = 0
        self.ready_checks = 0

    async def open(self, req, request_id=None, *, timeout=None) -> FakeStream:
        if self.dead:
            raise EngineUnavailable("connection refused")
        self.opened += 1
        return FakeStream(self)

    async def is_ready(self) -> bool:
        self.ready_checks += 1
        return self.ready and not self.dead

    async def limits(self) -> EngineLimits:
        if self.dead:
            raise EngineUnavailable("connection refused")
        return EngineLimits(100, 200)

    async def close(self) -> None:
        pass


def make_pool(n: int = 3, **policy: object) -> tuple[ReplicaPool, list[FakeReplica]]:
    fakes: list[FakeReplica] = []

    def factory(url: str, model: str) -> FakeReplica:
        fakes.append(FakeReplica(url, model))
        return fakes[-1]

    options = {"health_interval": 3600.0, **policy}
    pool = ReplicaPool(
        [f"127.0.0.1:{9000 + i}" for i in range(n)],
        "m",
        RoutingPolicy(**options),  # type: ignore[arg-type]
        engine_factory=factory,  # type: ignore[arg-type]
    )
    return pool, fakes


def request(ids: list[int]) -> EngineRequest:
    return EngineRequest(prompt_ids=ids, max_tokens=2, end_id=0, pad_id=0, streaming=True)


async def drain(stream) -> int:
    n = 0
    while (batch := await stream.next_batch()) is not None:
        n += len(batch)
    return n


def test_prefix_chain_matches_the_longest_shared_prefix():
    table = PrefixTable(4)
    a = table.chain(list(range(12)))
    assert len(a) == 3
    table.record(a[:2], 0)
    table.record(a, 1)
    longer = table.chain([*range(12), 99, 98, 97, 96])
    assert table.owner(longer) == 1
    # Differs inside the second block: only the first block matches (owner of a[0] is 1).
    assert table.owner(table.chain([0, 1, 2, 3, 0, 0, 0, 0])) == 1
    assert table.owner(table.chain([5, 5, 5, 5])) is None
    assert table.chain([1, 2, 3]) == []  # shorter than a block: no affinity
    table.forget(1)
    assert table.owner(longer) is None


def test_prefix_table_is_bounded():
    table = PrefixTable(2, capacity=10)
    for i in range(20):
        table.record(table.chain([i, i, i, i]), i % 3)
    assert len(table._owners) == 10


async def test_least_loaded_spreads_and_follows_load():
    pool, fakes = make_pool(3, block_tokens=0)
    for f in fakes:
        f.gate.clear()
    streams = [await pool.open(request([i])) for i in range(6)]
    assert [r.in_flight for r in pool.replicas] == [2, 2, 2]
    for f in fakes:
        f.gate.set()
    await drain(streams[0])  # finishing one frees its replica's slot
    busy = [r.in_flight for r in pool.replicas]
    assert sorted(busy) == [1, 2, 2]
    nxt = pool.choose([7])
    assert nxt.in_flight == 1
    for s in streams[1:]:
        s.close()
    assert [r.in_flight for r in pool.replicas] == [0, 0, 0]
    assert pool.decisions["least_loaded"] == 7


async def test_conversation_turns_stick_to_one_replica():
    pool, _ = make_pool(3, block_tokens=4)
    convs = [[c * 100 + k for k in range(8)] for c in range(3)]
    first = [pool.choose(ids).index for ids in convs]
    assert sorted(first) == [0, 1, 2]
    for turn in range(3):
        for c, ids in enumerate(convs):
            ids.extend(range(1000 * turn, 1000 * turn + 5))
            assert pool.choose(ids).index == first[c]
    assert pool.decisions["affinity"] == 9


async def test_affinity_yields_to_load_beyond_the_bound():
    pool, fakes = make_pool(2, block_tokens=4, balance_ratio=1.25, balance_slack=2)
    ids = list(range(8))
    fakes[0].gate.clear()
    fakes[1].gate.clear()
    held = []
    # All requests share one prefix: affinity keeps them together until the owner has more
    # than max(mean + 2, 1.25 * mean) in flight, then they spill over.
    for _ in range(12):
        held.append(await pool.open(request(ids)))
    loads = sorted(r.in_flight for r in pool.replicas)
    mean = sum(loads) / 2
    assert loads[1] <= max(mean + 2, 1.25 * mean) + 1
    assert loads[0] >= 4
    assert pool.decisions["overflow"] > 0
    for s in held:
        s.close()


async def test_down_replica_is_never_chosen_and_open_is_retried():
    pool, fakes = make_pool(2, block_tokens=0)
    fakes[0].dead = True
    # The first open that lands on the dead replica is retried on the live one.
    for _ in range(4):
        stream = await pool.open(request([1]))
        assert await drain(stream) == 2
    assert fakes[1].opened == 4
    assert not pool.replicas[0].up
    assert fakes[0].opened == 0
    fakes[1].dead = True
    with pytest.raises(EngineUnavailable, match="no Triton replica is available"):
        await pool.open(request([1]))


async def test_mid_stream_failure_ends_only_that_replicas_streams():
    pool, fakes = make_pool(2, block_tokens=0)
    fakes[0].gate.clear()
    fakes[1].gate.clear()
    streams = [await pool.open(request([i])) for i in range(4)]
    on_zero = [s for s in streams if s._inner.replica is fakes[0]]
    fakes[0].dead = True
    fakes[0].gate.set()
    fakes[1].gate.set()
    outcomes = []
    for s in streams:
        try:
            outcomes.append(await drain(s))
        except EngineUnavailable:
            outcomes.append("failed")
    assert outcomes.count("failed") == len(on_zero) == 2
    assert not pool.replicas[0].up
    assert [r.in_flight for r in pool.replicas] == [0, 0]
    assert pool.choose([5]).index == 1


async def test_health_checks_take_replicas_out_and_back():
    pool, fakes = make_pool(2, block_tokens=0, health_interval=0.01)
    fakes[1].ready = False
    await pool.check_all()
    assert [r.up for r in pool.replicas] == [True, False]
    status = await pool.check_all()
    assert status[1]["ready"] is False and "error" in status[1]
    assert await pool.is_ready()
    fakes[1].ready = True
    stream = await pool.open(request([1]))  # starts the periodic checks
    await drain(stream)
    for _ in range(200):
        if pool.replicas[1].up:
            break
        await asyncio.sleep(0.01)
    assert pool.replicas[1].up
    assert fakes[1].ready_checks >= 3
    await pool.close()


async def test_limits_come_from_a_reachable_replica():
    pool, fakes = make_pool(2)
    fakes[0].dead = True
    assert await pool.limits() == EngineLimits(100, 200)


def test_duplicate_addresses_are_refused():
    with pytest.raises(ValueError, match="twice"):
        ReplicaPool(["a:1", "a:1"], "m")


async def test_per_replica_metrics():
    pool, fakes = make_pool(2, block_tokens=0)
    registry = CollectorRegistry()
    pool.attach_metrics(ReplicaMetrics(registry))
    fakes[0].dead = True
    await drain(await pool.open(request([1])))
    held = await pool.open(request([2]))
    text = generate_latest(registry).decode()
    held.close()
    assert 'trtllm_proxy_replica_up{replica="127.0.0.1:9000"} 0.0' in text
    assert 'trtllm_proxy_replica_up{replica="127.0.0.1:9001"} 1.0' in text
    assert 'trtllm_proxy_replica_requests_total{replica="127.0.0.1:9001"} 2.0' in text
    assert 'trtllm_proxy_replica_requests_in_flight{replica="127.0.0.1:9001"} 1.0' in text
    assert 'trtllm_proxy_replica_failures_total{replica="127.0.0.1:9000"} 1.0' in text
    assert 'trtllm_proxy_route_decisions_total{decision="least_loaded"} 3.0' in text


def test_shared_in_flight_counts_every_worker():
    import multiprocessing

    from trtllm_stack.proxy.workers import SharedInFlight

    counts = multiprocessing.get_context("spawn").Array("q", 2)
    a, b = SharedInFlight(counts, 0, 3), SharedInFlight(counts, 1, 3)
    assert a.acquire() and b.acquire() and b.acquire()
    assert not a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    assert a.total() == b.total() == 3
