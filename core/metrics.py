"""Prometheus metrics, one registry per Core (no module-level state).

Hot-path counts (deliveries per transport) are plain integers read at scrape time by a
custom collector: a ``Counter.inc()`` per delivery would cost more than the delivery.
The publish-to-deliver histogram is observed once per fan-out and transport, at the
moment the last subscriber's write was issued (the worst case of that fan-out).
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

TRANSPORTS = ("websocket", "sse", "longpoll")


class Metrics:
    """Herald's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections: Tally[str] = Tally({t: 0 for t in TRANSPORTS})
        self.delivered: Tally[str] = Tally({t: 0 for t in TRANSPORTS})
        self.published = Counter("herald_events_published", "Events stored and published", registry=self.registry)
        self.latency = Histogram(
            "herald_publish_to_deliver_seconds",
            "Time from an event's store timestamp to its write to the last subscriber of a fan-out",
            ["transport"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        conns = GaugeMetricFamily("herald_connections", "Open stream connections", labels=["transport"])
        for transport, n in sorted(self.metrics.connections.items()):
            conns.add_metric([transport], n)
        yield conns
        delivered = CounterMetricFamily(
            "herald_events_delivered", "Events written to subscribers", labels=["transport"]
        )
        for transport, n in sorted(self.metrics.delivered.items()):
            delivered.add_metric([transport], n)
        yield delivered
