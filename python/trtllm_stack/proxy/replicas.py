"""Several engines behind one endpoint: a :class:`ReplicaPool` is an :class:`Engine` that
routes each request to one of several Triton servers (data-parallel replicas).

Routing (one decision per request, before its first token):
- only replicas not known to be down are candidates; a replica is down from the moment a
  health check or a request saw it unreachable or unready, and back up at the first health
  check that finds server and model ready (checks run every ``health_interval`` seconds);
- by default the least-loaded candidate wins (fewest requests in flight through this proxy,
  ties broken round-robin);
- prefix affinity: the prompt's token ids are cut into blocks of ``block_tokens``, each block
  hashed together with all blocks before it (the way the engine's KV-cache reuse identifies
  blocks); the replica that last served the longest matching block chain gets the request,
  so the turns of one conversation land where their prefix is cached, as long as that
  replica has at most ``max(mean + slack, ratio * mean)`` requests in flight, ``mean``
  being the candidates' average. Beyond that bound load wins (an "overflow").

A replica that fails while streaming ends only its own streams (the error surfaces as the
usual :class:`EngineUnavailable`); an open that fails before anything was generated is
retried on the next candidate, so a request never fails because one of several replicas
just died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from trtllm_stack.proxy.engine import ChunkStream, Engine, EngineLimits, EngineUnavailable
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

log = logging.getLogger("trtllm_stack.proxy")

# Block chains remembered for affinity; an entry is ~150 bytes, so ~15 MB at most.
_AFFINITY_ENTRIES = 100_000
# Blocks hashed per prompt: 256 (16k tokens at 64). Hashing costs ~0.1 ms per 2k tokens on
# the event loop; 16k tokens of shared prefix already tell conversations apart.
_MAX_BLOCKS = 256


@dataclass(slots=True)
class RoutingPolicy:
    block_tokens: int = 64  # 0 turns prefix affinity off
    balance_ratio: float = 1.25
    balance_slack: int = 2
    health_interval: float = 0.5
    health_timeout: float = 2.0


class Replica:
    """One Triton server of the pool and what the proxy knows about it."""

    __slots__ = (
        "_series",
        "engine",
        "failures",
        "in_flight",
        "index",
        "last_error",
        "requests",
        "up",
        "url",
    )

    def __init__(self, index: int, url: str, engine: Engine) -> None:
        self.index = index
        self.url = url
        self.engine = engine
        self.up = True  # optimistic until the first check: the pool starts with the proxy
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.last_error = ""
        self._series: tuple[Any, Any, Any, Any] | None = None  # up, in flight, requests, failures

    def take(self) -> None:
        self.in_flight += 1
        self.requests += 1
        if self._series is not None:
            self._series[1].inc()
            self._series[2].inc()

    def give(self) -> None:
        self.in_flight -= 1
        if self._series is not None:
            self._series[1].dec()

    def set_up(self, up: bool) -> None:
        self.up = up
        if self._series is not None:
            self._series[0].set(1 if up else 0)

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ready": self.up,
            "in_flight": self.in_flight,
            **({"error": self.last_error} if not self.up and self.last_error else {}),
        }


class _RoutedStream:
    """A request's :class:`ChunkStream` that gives its replica slot back exactly once."""

    __slots__ = ("_inner", "_pool", "_replica")

    def __init__(self, inner: ChunkStream, replica: Replica, pool: ReplicaPool) -> None:
        self._inner = inner
        self._replica: Replica | None = replica
        self._pool = pool

    def _release(self) -> None:
        if self._replica is not None:
            self._replica.give()
            self._replica = None

    async def next_batch(self) -> list[EngineChunk] | None:
        try:
            batch = await self._inner.next_batch()
        except EngineUnavailable as exc:
            replica = self._replica
            self._release()
            if replica is not None:
                self._pool.mark_down(replica, str(exc))
            raise
        except BaseException:
            self._release()
            raise
        if batch is None or (batch and batch[-1].final):
            self._release()
        return batch

    def close(self) -> None:
        self._inner.close()
        self._release()


class PrefixTable:
    """Block-chain hash -> replica index, least recently used entries dropped first."""

    def __init__(self, block_tokens: int, capacity: int = _AFFINITY_ENTRIES) -> None:
        self.block = block_tokens
        self.capacity = capacity
        self._owners: OrderedDict[int, int] = OrderedDict()

    def chain(self, ids: Sequence[int]) -> list[int]:
        """Hash of every whole block together with the blocks before it."""
        block = self.block
        n = min(len(ids) // block, _MAX_BLOCKS)
        hashes: list[int] = []
        h = 0
        for k in range(n):
            # Tuples of ints hash the same in every process (no hash randomisation).
            h = hash((h, tuple(ids[k * block : (k + 1) * block])))
            hashes.append(h)
        return hashes

    def owner(self, hashes: list[int]) -> int | None:
        owners = self._owners
        for h in reversed(hashes):
            index = owners.get(h)
            if index is not None:
                return index
        return None

    def record(self, hashes: list[int], index: int) -> None:
        owners = self._owners
        for h in hashes:
            owners[h] = index
            owners.move_to_end(h)
        while len(owners) > self.capacity:
            owners.popitem(last=False)

    def forget(self, index: int) -> None:
        """Drop a replica's entries (it restarted: its KV cache is empty)."""
        for h in [h for h, i in self._owners.items() if i == index]:
            del self._owners[h]


class ReplicaPool:
    """An :class:`Engine` over several Triton servers; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        policy: RoutingPolicy | None = None,
        *,
        engine_factory: Callable[[str, str], Engine] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a replica pool needs at least one address")
        if len(set(urls)) != len(urls):
            raise ValueError(f"the same Triton address is listed twice: {', '.join(urls)}")
        if engine_factory is None:
            from trtllm_stack.triton.client import EngineClient

            engine_factory = EngineClient
        self.policy = policy or RoutingPolicy()
        self.replicas = [Replica(i, url, engine_factory(url, model)) for i, url in enumerate(urls)]
        self.prefixes = PrefixTable(self.policy.block_tokens) if self.policy.block_tokens else None
        self.decisions = {"affinity": 0, "overflow": 0, "least_loaded": 0}
        self._decision_series: dict[str, Any] = {}
        self._next = 0
        self._health: asyncio.Task[None] | None = None
        self._closed = False

    def attach_metrics(self, metrics: ReplicaMetrics) -> None:
        """Per-replica series on the proxy's registry (Prometheus multiprocess-safe)."""
        for r in self.replicas:
            r._series = (
                metrics.up.labels(r.url),
                metrics.in_flight.labels(r.url),
                metrics.requests.labels(r.url),
                metrics.failures.labels(r.url),
            )
            r._series[0].set(1 if r.up else 0)
        self._decision_series = {d: metrics.decisions.labels(d) for d in self.decisions}

    def _decided(self, decision: str) -> None:
        self.decisions[decision] += 1
        series = self._decision_series.get(decision)
        if series is not None:
            series.inc()

    # -- routing ---------------------------------------------------------------------

    def _least_loaded(self, candidates: list[Replica]) -> Replica:
        # Round-robin start so that ties (an idle pool) spread instead of piling on replica 0.
        start = self._next
        self._next = (start + 1) % len(self.replicas)
        n = len(candidates)
        best = candidates[start % n]
        for k in range(1, n):
            r = candidates[(start + k) % n]
            if r.in_flight < best.in_flight:
                best = r
        return best

    def choose(self, prompt_ids: Sequence[int], exclude: frozenset[int] = frozenset()) -> Replica:
        """The replica for a request with this prompt (it does not reserve a slot)."""
        candidates = [r for r in self.replicas if r.up and r.index not in exclude]
        if not candidates:
            down = sum(not r.up for r in self.replicas)
            raise EngineUnavailable(
                f"no Triton replica is available ({down} of {len(self.replicas)} known down)"
            )
        least = self._least_loaded(candidates)
        table = self.prefixes
        if table is None:
            self._decided("least_loaded")
            return least
        hashes = table.chain(prompt_ids)
        owner_index = table.owner(hashes) if hashes else None
        chosen = least
        if owner_index is None:
            self._decided("least_loaded")
        else:
            owner = self.replicas[owner_index]
            p = self.policy
            mean = sum(r.in_flight for r in candidates) / len(candidates)
            bound = max(mean + p.balance_slack, p.balance_ratio * mean)
            if owner.up and owner.index not in exclude and owner.in_flight <= bound:
                chosen = owner
                self._decided("affinity")
            else:
                self._decided("overflow")
        if hashes:
            table.record(hashes, chosen.index)
        return chosen

    async def open(
        self, req: EngineRequest, request_id: str | None = None, *, timeout: float | None = None
    ) -> ChunkStream:
        self._ensure_health_checks()
        tried: set[int] = set()
        while True:
            replica = self.choose(req.prompt_ids, frozenset(tried))
            replica.take()
            try:
                inner = await replica.engine.open(req, request_id, timeout=timeout)
            except EngineUnavailable as exc:
                # Nothing was generated yet: another replica can take the request.
                replica.give()
                self.mark_down(replica, str(exc))
                tried.add(replica.index)
                continue
            except BaseException:
                replica.give()
                raise
            return _RoutedStream(inner, replica, self)

    # -- health ----------------------------------------------------------------------

    def mark_down(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        if replica._series is not None:
            replica._series[3].inc()
        replica.last_error = reason
        if replica.up:
            replica.set_up(False)
            log.warning("Triton replica %s is down: %s", replica.url, reason)

    def _mark_up(self, replica: Replica) -> None:
        if not replica.up:
            replica.set_up(True)
            replica.last_error = ""
            if self.prefixes is not None:
                self.prefixes.forget(replica.index)
            log.warning("Triton replica %s is ready again", replica.url)

    async def _check(self, replica: Replica) -> bool:
        try:
            ready = await asyncio.wait_for(replica.engine.is_ready(), self.policy.health_timeout)
        except (TimeoutError, EngineUnavailable) as exc:
            ready, reason = False, str(exc) or "health check timed out"
        else:
            reason = "server or model not ready"
        if ready:
            self._mark_up(replica)
        elif replica.up:
            self.mark_down(replica, reason)
        else:
            replica.last_error = replica.last_error or reason
        return ready

    async def status(self) -> list[dict[str, Any]]:
        """Every replica's state for /health/ready: what the periodic checks and the
        requests last saw (a hung replica must not hold the answer for the check timeout);
        checked now only before the periodic checks have started."""
        if self._health is None:
            return await self.check_all()
        return [r.status() for r in self.replicas]

    async def check_all(self) -> list[dict[str, Any]]:
        """Check every replica now; their status (for /health/ready)."""
        self._ensure_health_checks()
        await asyncio.gather(*(self._check(r) for r in self.replicas))
        return [r.status() for r in self.replicas]

    def _ensure_health_checks(self) -> None:
        # Started on first use: the pool is built before the server's event loop runs.
        if self._health is None and not self._closed:
            self._health = asyncio.get_running_loop().create_task(self._health_loop())

    async def _health_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await asyncio.gather(*(self._check(r) for r in self.replicas))
            await asyncio.sleep(self.policy.health_interval)

    # -- the rest of the Engine interface --------------------------------------------

    async def is_ready(self) -> bool:
        return any(s["ready"] for s in await self.status())

    async def limits(self) -> EngineLimits:
        """The first reachable replica's limits (replicas serve the same engine)."""
        error: EngineUnavailable | None = None
        for replica in sorted(self.replicas, key=lambda r: not r.up):
            try:
                return await replica.engine.limits()
            except EngineUnavailable as exc:
                error = exc
        assert error is not None
        raise error

    async def close(self) -> None:
        self._closed = True
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        for replica in self.replicas:
            await replica.engine.close()


class ReplicaMetrics:
    """Per-replica series. Ordinary prometheus_client metrics, so that with ``--workers`` the
    multiprocess collector sums them over workers (gauges: in flight summed over live
    workers; up = the lowest any live worker sees, so one worker's view of a down replica
    shows)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.up = Gauge(
            "trtllm_proxy_replica_up",
            "1 if the replica is taking requests",
            ["replica"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.in_flight = Gauge(
            "trtllm_proxy_replica_requests_in_flight",
            "Requests in flight on the replica",
            ["replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.requests = Counter(
            "trtllm_proxy_replica_requests",
            "Requests routed to the replica (including opens retried elsewhere)",
            ["replica"],
            registry=r,
        )
        self.failures = Counter(
            "trtllm_proxy_replica_failures",
            "Times the replica was found unreachable or unready",
            ["replica"],
            registry=r,
        )
        self.decisions = Counter(
            "trtllm_proxy_route_decisions",
            "Routing decisions: affinity (prefix replica), overflow (prefix replica too"
            " loaded), least_loaded (no prefix known)",
            ["decision"],
            registry=r,
        )
