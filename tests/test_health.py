"""The probe's arithmetic without sockets: histogram quantiles as Prometheus computes
them, deployment totals across processes, and rates that survive a process restart."""

from __future__ import annotations

import math

from core.health import Sample, add_up, quantile, step

INF = math.inf


def sample(process: str, published: float, latency: list[tuple[float, float]], **kw: object) -> Sample:
    base: dict = dict(
        process=process,
        at=0.0,
        connections={"websocket": 2},
        published=published,
        delivered=published * 2,
        latency=latency,
        slow_drops=0.0,
        refused=0.0,
        publish_refused=0.0,
        queues={},
        store={"up": True},
        broker={"up": True},
        started=0.0,
    )
    base.update(kw)
    return Sample(**base)


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (INF, 100.0)]
    assert quantile(buckets, 0.5) == 0.01
    assert abs(quantile(buckets, 0.7) - 0.055) < 1e-9  # 20 of 40 into (0.01, 0.1]
    assert abs(quantile(buckets, 0.99) - 0.91) < 1e-9
    assert quantile([(0.1, 0.0), (INF, 0.0)], 0.5) is None
    assert quantile([(0.1, 1.0), (INF, 10.0)], 0.99) == 0.1, "beyond the last bound: that bound"


def test_totals_sum_per_process_counters_and_take_the_stores_queue_depth_once() -> None:
    a = sample("a", 10, [(0.01, 10.0), (INF, 10.0)], queues={"gpu": {"pending": 3, "workers": 1}})
    b = sample("b", 5, [(0.01, 4.0), (INF, 5.0)], queues={"gpu": {"pending": 3, "workers": 2}})
    totals = add_up([a, b])
    assert totals["published"] == 15 and totals["delivered"] == 30
    assert totals["connections"] == {"websocket": 4}
    assert totals["latency"] == [(0.01, 14.0), (INF, 15.0)]
    assert totals["queues"] == {"gpu": {"pending": 3, "workers": 3}}


def test_rates_count_a_restart_as_no_change() -> None:
    before = add_up([sample("a", 100, [(0.01, 100.0), (INF, 100.0)])])
    after = add_up([sample("a", 120, [(0.01, 118.0), (INF, 120.0)])])
    figures = step(before, after, 2.0)
    assert figures["published_per_s"] == 10.0 and figures["delivered_per_s"] == 20.0
    assert figures["p50_ms"] is not None and figures["p50_ms"] <= 10.0
    restarted = add_up([sample("a", 3, [(0.01, 3.0), (INF, 3.0)])])
    assert step(after, restarted, 2.0)["published_per_s"] == 0.0
