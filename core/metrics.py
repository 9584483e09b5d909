"""Prometheus metrics, one registry per Core (no module-level state).

Hot-path counts (deliveries per transport, open connections) are plain integers read at
scrape time by a custom collector: a ``Counter.inc()`` per delivery would cost more
than the delivery. Everything counted once per connection, resume or request
(outcomes, refusals, replay and auth timings) uses ordinary prometheus_client types.
The publish-to-deliver histogram is observed once per fan-out and transport, at the
moment the last subscriber's write was issued (the worst case of that fan-out).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.transport import TransportName

TRANSPORTS = tuple(name.value for name in TransportName)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """Herald's metrics.

    Label values, so that alerts can rely on them:

    - ``transport``: ``websocket``, ``sse``, ``longpoll``, ``worker``.
    - ``connections_refused`` ``reason``: ``unauthorized``, ``forbidden``, ``not_found``,
      ``bad_request``, ``too_many_connections``, ``subject_limit``, ``draining``, ``error``.
    - ``connections_closed`` ``reason``: ``normal`` (terminal event), ``client`` (the
      peer left), ``slow``, ``expired``, ``heartbeat``, ``drain``, ``error``.
    - ``resumes`` ``outcome``: ``from_memory``, ``from_store``, ``reset``.
    - ``publish_refused`` ``reason``: an error code (``rate_limited``, ``bad_request``,
      ``event_too_large``, ``stream_closed``, ...).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections: Tally[str] = Tally({t: 0 for t in TRANSPORTS})
        self.delivered: Tally[str] = Tally({t: 0 for t in TRANSPORTS})
        self.published = Counter("herald_events_published", "Events stored and published", registry=self.registry)
        self.latency = Histogram(
            "herald_publish_to_deliver_seconds",
            "Time from an event's store timestamp to its write to the last subscriber of a fan-out",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connections_opened = Counter(
            "herald_connections_opened", "Connections admitted", ["transport"], registry=self.registry
        )
        self.connections_refused = Counter(
            "herald_connections_refused",
            "Connections refused, by reason",
            ["transport", "reason"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "herald_connections_closed", "Connections ended, by reason", ["transport", "reason"], registry=self.registry
        )
        self.resumes = Counter(
            "herald_resumes",
            "Catch-ups (a subscription reading what it missed), by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.replay_seconds = Histogram(
            "herald_replay_seconds",
            "Time from a subscription's start to having every event stored before it",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.replay_events = Histogram(
            "herald_replay_events",
            "Events a catch-up replayed",
            buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000),
            registry=self.registry,
        )
        self.auth_seconds = Histogram(
            "herald_auth_check_seconds",
            "Time to authenticate and authorise a request or connection",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.publish_refused = Counter(
            "herald_publish_refused", "Publishes refused, by error code", ["reason"], registry=self.registry
        )
        self.registry.register(_LiveCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Reads the plain integer tallies at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        conns = GaugeMetricFamily("herald_connections", "Open connections", labels=["transport"])
        for transport, n in sorted(self.metrics.connections.items()):
            conns.add_metric([transport], n)
        yield conns
        delivered = CounterMetricFamily(
            "herald_events_delivered", "Events written to subscribers", labels=["transport"]
        )
        for transport, n in sorted(self.metrics.delivered.items()):
            delivered.add_metric([transport], n)
        yield delivered
