"""Metric definitions, checked against values computed independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtllm_stack.bench.metrics import (
    ERROR,
    INCOMPLETE,
    SLO,
    RequestRecord,
    parse_slo,
    percentile,
    summarize,
)
from trtllm_stack.errors import UserError


@pytest.mark.parametrize(
    "values",
    [
        [1.0],
        [3.0, 1.0],
        [10.0, 20.0, 30.0, 40.0],
        [float(x) for x in range(1, 102)],
        [0.5, 0.1, 9.0, 2.5, 2.5],
    ],
)
@pytest.mark.parametrize("q", [0, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_hand_checked() -> None:
    # ranks 0..3, p50 sits halfway between 20 and 30
    assert percentile([40.0, 10.0, 30.0, 20.0], 50) == pytest.approx(25.0)
    assert math.isnan(percentile([], 50))


def _rec(i: int, ttft: float, gaps: list[float], tokens: int, **kw: object) -> RequestRecord:
    e2e = ttft + sum(gaps)
    return RequestRecord(
        index=i,
        start=0.0,
        tokens_in=10,
        tokens_out=tokens,
        ttft=ttft,
        e2e=e2e,
        itl=list(gaps),
        chunks=len(gaps) + 1,
        **kw,
    )  # type: ignore[arg-type]


def test_summarize_definitions() -> None:
    a = _rec(0, 0.100, [0.010, 0.020, 0.030], tokens=4)
    b = _rec(1, 0.200, [0.040], tokens=2)
    c = _rec(2, 0.050, [], tokens=1)  # one token: no TPOT
    err = RequestRecord(
        index=3,
        start=0.0,
        status=ERROR,
        error="HTTP 500: boom",
        ttft=0.001,
        e2e=0.002,
        tokens_out=7,
    )
    inc = RequestRecord(index=4, start=0.0, status=INCOMPLETE, tokens_out=3, ttft=0.3, e2e=0.5)
    s = summarize([a, b, c, err, inc], wall_time=2.0)

    assert (s["requests"], s["completed"], s["errors"], s["incomplete"]) == (5, 3, 1, 1)
    assert s["error_rate"] == pytest.approx(1 / 4)  # incomplete requests are not errors
    assert s["error_reasons"] == {"HTTP 500: boom": 1}
    # only successful requests count
    assert s["tokens_out"] == 4 + 2 + 1
    assert s["output_tokens_per_s"] == pytest.approx(7 / 2.0)
    assert s["total_tokens_per_s"] == pytest.approx((7 + 30) / 2.0)
    assert s["requests_per_s"] == pytest.approx(3 / 2.0)

    ttfts_ms = [100.0, 200.0, 50.0]
    assert s["ttft_ms"]["mean"] == pytest.approx(sum(ttfts_ms) / 3)
    assert s["ttft_ms"]["p50"] == pytest.approx(100.0)
    # ITL pools every gap of every successful request
    gaps_ms = [10.0, 20.0, 30.0, 40.0]
    assert s["itl_ms"]["mean"] == pytest.approx(25.0)
    assert s["itl_ms"]["p90"] == pytest.approx(float(np.percentile(gaps_ms, 90)))
    # TPOT per request = (e2e - ttft) / (tokens - 1): a -> 60ms/3, b -> 40ms/1
    tpots = [60.0 / 3, 40.0 / 1]
    assert s["tpot_ms"]["mean"] == pytest.approx(sum(tpots) / 2)
    assert s["tpot_ms"]["p99"] == pytest.approx(float(np.percentile(tpots, 99)))
    e2es = [160.0, 240.0, 50.0]
    assert s["e2e_ms"]["p50"] == pytest.approx(160.0)
    assert s["e2e_ms"]["mean"] == pytest.approx(sum(e2es) / 3)
    assert "goodput" not in s


def test_goodput_counts_requests_meeting_every_slo() -> None:
    recs = [
        _rec(0, 0.100, [0.010] * 9, tokens=10),  # ttft 100ms tpot 10ms: good
        _rec(1, 0.400, [0.010] * 9, tokens=10),  # ttft too slow
        _rec(2, 0.100, [0.050] * 9, tokens=10),  # tpot too slow
        _rec(3, 0.150, [], tokens=1),  # no TPOT: only TTFT applies -> good
        RequestRecord(index=4, start=0.0, status=ERROR, error="x"),
    ]
    s = summarize(recs, wall_time=4.0, slo=SLO(ttft=0.2, tpot=0.02))
    g = s["goodput"]
    assert g["good_requests"] == 2
    assert g["requests_per_s"] == pytest.approx(2 / 4.0)
    assert g["fraction"] == pytest.approx(2 / 5)
    assert g["slo"] == {"ttft_ms": 200.0, "tpot_ms": 20.0, "e2e_ms": None}


def test_summary_of_nothing() -> None:
    s = summarize([], wall_time=0.0)
    assert s["completed"] == 0 and s["error_rate"] == 0.0
    assert s["ttft_ms"]["p50"] is None and s["output_tokens_per_s"] is None


def test_record_json_round_trip() -> None:
    r = _rec(7, 0.0123456, [0.001, 0.002], tokens=3)
    back = RequestRecord.from_json(r.to_json())
    assert back.index == 7 and back.tokens_out == 3
    assert back.ttft == pytest.approx(0.012346, abs=1e-6)
    assert back.itl == pytest.approx([0.001, 0.002])


def test_parse_slo() -> None:
    assert parse_slo("ttft=500,tpot=50") == SLO(ttft=0.5, tpot=0.05)
    slo = parse_slo("ttft=1.5s, e2e=2000ms, tpot=800us")
    assert (slo.ttft, slo.e2e) == (1.5, 2.0)
    assert slo.tpot == pytest.approx(0.0008)
    assert not parse_slo(None).is_set()
    for bad in ("ttft", "latency=5", "ttft=abc", "ttft=-1", "tpot=0"):
        with pytest.raises(UserError):
            parse_slo(bad)
