"""Per-request records and the per-level statistics computed from them.

Definitions (the same as vLLM's ``bench serve`` so numbers compare):

- TTFT: request sent -> first chunk that carries output content.
- ITL (inter-token latency): gap between consecutive content chunks, pooled over all
  successful requests. A server that coalesces several tokens into one chunk shows fewer,
  longer gaps; TPOT is the per-token view.
- TPOT (time per output token): ``(e2e - ttft) / (tokens_out - 1)`` per request with at
  least two output tokens, then summarised across requests.
- E2E: request sent -> stream end.
- Throughput: tokens of successful requests divided by the level's wall time (first send
  to last end).
- Goodput: successful requests per second that meet every SLO given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trtllm_stack.errors import UserError

PERCENTILES = (50, 90, 99)

# status values of a record
OK = "ok"
ERROR = "error"
# still running when the level ended (time bound / Ctrl-C); not counted as an error
INCOMPLETE = "incomplete"


@dataclass(slots=True)
class RequestRecord:
    """What one request measured. Times are seconds; ``start`` is relative to level start."""

    index: int
    start: float
    tokens_in: int = 0
    tokens_out: int = 0
    ttft: float | None = None
    e2e: float | None = None
    # gaps between consecutive content chunks, seconds
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    status: str = OK
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.status != OK or self.ttft is None or self.e2e is None or self.tokens_out < 2:
            return None
        return (self.e2e - self.ttft) / (self.tokens_out - 1)

    def to_json(self) -> dict[str, Any]:
        # milliseconds, rounded to microseconds: keeps result files small and readable
        return {
            "index": self.index,
            "start_s": round(self.start, 6),
            "status": self.status,
            "error": self.error,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "chunks": self.chunks,
            "ttft_ms": _ms(self.ttft),
            "e2e_ms": _ms(self.e2e),
            "itl_ms": [round(g * 1e3, 3) for g in self.itl],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestRecord:
        return cls(
            index=int(d["index"]),
            start=float(d["start_s"]),
            tokens_in=int(d["tokens_in"]),
            tokens_out=int(d["tokens_out"]),
            ttft=_s(d.get("ttft_ms")),
            e2e=_s(d.get("e2e_ms")),
            itl=[g / 1e3 for g in d.get("itl_ms", [])],
            chunks=int(d.get("chunks", 0)),
            status=str(d.get("status", OK)),
            error=d.get("error"),
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _s(ms: float | None) -> float | None:
    return None if ms is None else float(ms) / 1e3


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """mean and percentiles in milliseconds (input seconds); None when there is no sample."""
    if not values:
        out: dict[str, float | None] = {"mean": None}
        out.update({f"p{p}": None for p in PERCENTILES})
        return out
    out = {"mean": round(math.fsum(values) / len(values) * 1e3, 4)}
    out.update({f"p{p}": round(percentile(values, p) * 1e3, 4) for p in PERCENTILES})
    return out


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in seconds; a request is "good" if it meets all set ones."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft, self.tpot, self.e2e))

    def met_by(self, r: RequestRecord) -> bool:
        if r.status != OK:
            return False
        if self.ttft is not None and (r.ttft is None or r.ttft > self.ttft):
            return False
        if self.tpot is not None:
            tpot = r.tpot
            # one-token replies have no TPOT; they cannot violate it
            if tpot is not None and tpot > self.tpot:
                return False
        return not (self.e2e is not None and (r.e2e is None or r.e2e > self.e2e))

    def to_json(self) -> dict[str, float | None]:
        return {
            "ttft_ms": _ms(self.ttft),
            "tpot_ms": _ms(self.tpot),
            "e2e_ms": _ms(self.e2e),
        }


def parse_slo(text: str | None) -> SLO:
    """``ttft=500,tpot=50`` (milliseconds) or with units: ``ttft=0.5s,tpot=50ms``."""
    if not text:
        return SLO()
    values: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise UserError(f"--slo: expected ttft=MS,tpot=MS,e2e=MS, got {part!r}")
        values[key] = _parse_duration(raw.strip(), f"--slo {key}")
    return SLO(**values)


def _parse_duration(raw: str, what: str) -> float:
    """Seconds from ``50``/``50ms`` (milliseconds), ``0.5s``, ``500us``."""
    scale = 1e-3
    for suffix, factor in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{what}: not a duration: {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what}: must be a positive duration")
    return value * scale


def summarize(
    records: Iterable[RequestRecord], wall_time: float, slo: SLO | None = None
) -> dict[str, Any]:
    """Statistics of one level (one target, one concurrency or rate)."""
    recs = list(records)
    ok = [r for r in recs if r.status == OK]
    errors = [r for r in recs if r.status == ERROR]
    incomplete = sum(1 for r in recs if r.status == INCOMPLETE)
    finished = len(ok) + len(errors)
    tokens_out = sum(r.tokens_out for r in ok)
    tokens_in = sum(r.tokens_in for r in ok)
    gaps = [g for r in ok for g in r.itl]
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    per_s = (lambda n: round(n / wall_time, 4)) if wall_time > 0 else (lambda n: None)
    reasons: dict[str, int] = {}
    for r in errors:
        key = r.error or "unknown"
        reasons[key] = reasons.get(key, 0) + 1
    summary: dict[str, Any] = {
        "requests": len(recs),
        "completed": len(ok),
        "errors": len(errors),
        "incomplete": incomplete,
        "error_rate": round(len(errors) / finished, 6) if finished else 0.0,
        "error_reasons": reasons,
        "wall_time_s": round(wall_time, 6),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "requests_per_s": per_s(len(ok)),
        "output_tokens_per_s": per_s(tokens_out),
        "total_tokens_per_s": per_s(tokens_in + tokens_out),
        "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": distribution(gaps),
        "tpot_ms": distribution(tpots),
        "e2e_ms": distribution([r.e2e for r in ok if r.e2e is not None]),
    }
    if slo is not None and slo.is_set():
        good = sum(1 for r in ok if slo.met_by(r))
        summary["goodput"] = {
            "slo": slo.to_json(),
            "good_requests": good,
            "requests_per_s": per_s(good),
            "fraction": round(good / finished, 6) if finished else 0.0,
        }
    return summary
