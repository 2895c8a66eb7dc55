"""The event-loop histogram renders exactly like prometheus_client's own Histogram."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from trtllm_stack.proxy.metrics import LoopHistogram, ProxyMetrics

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04)


def _lines(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_loop_histogram_matches_prometheus_histogram():
    rng = random.Random(7)
    values = [rng.expovariate(300) for _ in range(5000)] + [0.0005, 0.001, 0.04, 0.0, 99.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("itl_seconds", "doc", BUCKETS, ours)
    slow = Histogram("itl_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for v in values:
        fast.observe(v)
        slow.observe(v)
    mine, reference = _lines(ours), _lines(theirs)
    # Same bucket boundaries (le labels), counts and count; the sum up to float rounding.
    assert [x for x in mine if "_sum" not in x] == [x for x in reference if "_sum" not in x]
    assert "_sum" in mine[-1] and "_sum" in reference[-1]
    assert abs(float(mine[-1].split()[-1]) - float(reference[-1].split()[-1])) < 1e-9


def test_proxy_metrics_expose_inter_token_histogram():
    metrics = ProxyMetrics()
    metrics.inter_token.observe(0.003)
    text = metrics.render().decode()
    assert "# TYPE trtllm_proxy_inter_token_seconds histogram" in text
    assert 'trtllm_proxy_inter_token_seconds_bucket{le="0.005"} 1.0' in text
    assert 'trtllm_proxy_inter_token_seconds_bucket{le="0.0025"} 0.0' in text
    assert "trtllm_proxy_inter_token_seconds_count 1.0" in text
