"""The operations probe: store and broker health, queues, build info, and the console's
figures, sampled off the request path.

Once every ``interval`` seconds (2 s) the probe pings the store and the broker (up and
round-trip time), asks the dispatcher for its queues (depth and this process's
workers), and reads this process's counters into a *sample*. Prometheus reads the
latest results at scrape time through a collector, so a scrape never waits on a ping;
nothing here runs per event, so the hot path keeps its cost.

The console (``GET /api/stats``) wants the whole deployment, not one process: each
probe publishes its sample on the broker channel ``_stats``, every process keeps the
latest sample of each peer (dropped after three silent intervals), and keeps a ring of
deployment totals (ten minutes) for the charts. Counters are cumulative per process, so
a rate is the difference of two totals; a peer that restarts makes a total go down,
which counts as zero for that step (as Prometheus's ``rate`` treats a reset).

Every process hears every execution's end (the change channel reaches all processes),
so ``herald_executions_ended_total`` is the same in each: aggregate it with ``max``,
not ``sum``. ``herald_queue_depth`` is the store's count, also the same everywhere;
``herald_queue_workers`` is this process's workers: ``sum`` it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import platform
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import tornado
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from core.model import Event, Execution
from core.service import Core

log = logging.getLogger("herald.health")

#: Seconds between two probes (and two samples of the console's charts).
INTERVAL = 2.0
#: Samples kept for the charts: ten minutes at the default interval.
HISTORY = 300
#: A ping slower than this counts as "down".
PING_TIMEOUT = 2.0
#: The broker channel on which processes share their samples.
STATS_CHANNEL = "_stats"
#: A peer whose sample is older than this many intervals is gone.
PEER_TTL_INTERVALS = 3


class QueueSource(Protocol):
    """Who knows the queues: the dispatcher (``describe()``, as ``GET /api/queues``)."""

    async def describe(self) -> list[dict[str, Any]]:
        """Each queue: ``name``, ``pending``, ``workers`` (list), ``waiting_claims``."""


@dataclass
class Check:
    """One dependency's last probe: answered or not, and how long the ping took."""

    up: bool = False
    rtt: float | None = None
    error: str | None = None
    checked_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"up": self.up, "rtt_seconds": self.rtt, "error": self.error, "checked_at": self.checked_at}


def build_info(core: Core) -> dict[str, str]:
    """What is running: Herald's version, Python, Tornado, and which store and broker."""
    try:
        version = metadata.version("herald")
    except metadata.PackageNotFoundError:  # a checkout run without `pip install -e .`
        version = "unknown"
    return {
        "version": version,
        "python": platform.python_version(),
        "tornado": tornado.version,
        "store": "mongodb" if core.settings.mongo_uri else "memory",
        "broker": "redis" if core.settings.redis_url else "local",
    }


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``[(le, count), ...]`` (sorted by
    ``le``, the last one ``+Inf``), interpolated inside its bucket as Prometheus's
    ``histogram_quantile`` does; ``None`` without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le  # beyond the last finite bucket: its bound is all we know
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


@dataclass
class Sample:
    """One process's counters at one moment: what the console adds up and charts."""

    process: str
    at: float
    connections: dict[str, int]
    published: float
    delivered: float
    #: publish→deliver histogram, every transport together: [(le, cumulative count)].
    latency: list[tuple[float, float]]
    slow_drops: float
    refused: float
    publish_refused: float
    queues: dict[str, dict[str, int]]
    store: dict[str, Any]
    broker: dict[str, Any]
    started: float
    build: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "at": self.at,
            "connections": self.connections,
            "published": self.published,
            "delivered": self.delivered,
            "latency": [[le if le != float("inf") else "+Inf", n] for le, n in self.latency],
            "slow_drops": self.slow_drops,
            "refused": self.refused,
            "publish_refused": self.publish_refused,
            "queues": self.queues,
            "store": self.store,
            "broker": self.broker,
            "started": self.started,
            "build": self.build,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        latency = [(float("inf") if le == "+Inf" else float(le), float(n)) for le, n in d["latency"]]
        return cls(**{**d, "latency": latency})


def read_sample(
    core: Core, process: str, started: float, queues: dict[str, dict[str, int]], checks: dict[str, Check]
) -> Sample:
    """This process's counters, read through the registry's public ``collect()``."""
    values: dict[str, float] = {}
    connections: dict[str, int] = {}
    buckets: dict[float, float] = {}
    slow = refused = 0.0
    for metric in core.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "herald_connections":
                connections[s.labels["transport"]] = int(s.value)
            elif s.name == "herald_publish_to_deliver_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "herald_connections_closed_total" and s.labels.get("reason") == "slow":
                slow += s.value
            elif s.name == "herald_connections_refused_total":
                refused += s.value
            elif (
                s.name in ("herald_events_published_total", "herald_events_delivered_total")
                or s.name == "herald_publish_refused_total"
            ):
                values[s.name] = values.get(s.name, 0.0) + s.value
    return Sample(
        process=process,
        at=time.time(),
        connections=connections,
        published=values.get("herald_events_published_total", 0.0),
        delivered=values.get("herald_events_delivered_total", 0.0),
        latency=sorted(buckets.items()),
        slow_drops=slow,
        refused=refused,
        publish_refused=values.get("herald_publish_refused_total", 0.0),
        queues=queues,
        store=checks["store"].as_dict(),
        broker=checks["broker"].as_dict(),
        started=started,
    )


def add_up(samples: Sequence[Sample]) -> dict[str, Any]:
    """Deployment totals of several processes' samples at about the same moment."""
    latency: dict[float, float] = {}
    connections: dict[str, int] = {}
    queues: dict[str, dict[str, int]] = {}
    for s in samples:
        for le, n in s.latency:
            latency[le] = latency.get(le, 0.0) + n
        for transport, n in s.connections.items():
            connections[transport] = connections.get(transport, 0) + n
        for name, q in s.queues.items():
            total = queues.setdefault(name, {"pending": 0, "workers": 0})
            total["pending"] = max(total["pending"], q["pending"])  # the store's count: the same everywhere
            total["workers"] += q["workers"]  # each process's own workers
    return {
        "connections": connections,
        "published": sum(s.published for s in samples),
        "delivered": sum(s.delivered for s in samples),
        "latency": sorted(latency.items()),
        "slow_drops": sum(s.slow_drops for s in samples),
        "refused": sum(s.refused for s in samples),
        "publish_refused": sum(s.publish_refused for s in samples),
        "queues": queues,
    }


def step(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Rates and latency quantiles between two deployment totals (a decrease — a
    process restarted or left — counts as no change)."""

    def rate(name: str) -> float:
        return max(0.0, after[name] - before[name]) / seconds if seconds > 0 else 0.0

    old = dict(before["latency"])
    window = [(le, max(0.0, n - old.get(le, 0.0))) for le, n in after["latency"]]
    p50, p99 = quantile(window, 0.5), quantile(window, 0.99)
    return {
        "connections": sum(after["connections"].values()),
        "published_per_s": rate("published"),
        "delivered_per_s": rate("delivered"),
        "p50_ms": None if p50 is None else 1000 * p50,
        "p99_ms": None if p99 is None else 1000 * p99,
        "slow_drops_per_s": rate("slow_drops"),
        "refused_per_s": rate("refused") + rate("publish_refused"),
    }


class HealthProbe:
    """Probes the store and broker, samples counters, and serves both to Prometheus
    (a collector on the Core's registry) and to ``GET /api/stats``."""

    def __init__(
        self, core: Core, queues: QueueSource | None, *, interval: float = INTERVAL, history: int = HISTORY
    ) -> None:
        self.core = core
        self.queue_source = queues
        self.interval = interval
        self.process = f"{socket.gethostname()}:{os.getpid()}:{core.settings.port}"
        self.started = time.time()
        self.build = build_info(core)
        self.checks = {"store": Check(), "broker": Check()}
        self.queues: dict[str, dict[str, int]] = {}
        self.peers: dict[str, Sample] = {}
        self.own: Sample | None = None
        #: (time, deployment totals) per probe, oldest first.
        self.totals: deque[tuple[float, dict[str, Any]]] = deque(maxlen=history + 1)
        self._task: asyncio.Task[None] | None = None
        self.ended = Counter(
            "herald_executions_ended",
            "Executions that reached a terminal event, by outcome and error_type (every process counts "
            "every execution: aggregate with max)",
            ["outcome", "error_type"],
            registry=core.metrics.registry,
        )
        # The outcomes alerts watch exist from the start, so rate() sees their first increase.
        for outcome, error_type in (
            ("succeeded", ""),
            ("cancelled", ""),
            ("failed", "timeout"),
            ("failed", "worker_lost"),
        ):
            self.ended.labels(outcome, error_type)
        core.metrics.registry.register(_ProbeCollector(self))
        core.changes.observe(self._observe)

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start probing (needs a running event loop); idempotent."""
        if self._task is None or self._task.done():
            self.core.broker.subscribe(STATS_CHANNEL, self._on_peer_samples)
            self._task = asyncio.ensure_future(self._probe_forever())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _probe_forever(self) -> None:
        while not self.core.draining:
            try:
                await self.probe_once()
            except Exception:
                log.exception("health probe failed")
            await asyncio.sleep(self.interval)

    # --- one probe ----------------------------------------------------------------------
    async def probe_once(self) -> None:
        """Ping both dependencies, read the queues, take and share a sample."""
        await asyncio.gather(self._ping("store", self.core.store), self._ping("broker", self.core.broker))
        if self.queue_source is not None and self.checks["store"].up:
            try:
                views = await asyncio.wait_for(self.queue_source.describe(), PING_TIMEOUT)
                self.queues = {v["name"]: {"pending": v["pending"], "workers": len(v["workers"])} for v in views}
            except Exception as exc:  # noqa: BLE001 - keep the last known queues
                log.warning("reading the queues failed: %s", exc)
        sample = read_sample(self.core, self.process, self.started, self.queues, self.checks)
        sample.build = self.build
        self.own = sample
        self._record(sample.at)
        if self.checks["broker"].up:
            try:
                record = Event(STATS_CHANNEL, 0, "sample", sample.as_dict(), sample.at)
                await asyncio.wait_for(self.core.broker.publish(STATS_CHANNEL, [record]), PING_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - peers will drop us; we still serve our own
                log.warning("sharing the stats sample failed: %s", exc)

    async def _ping(self, name: str, component: Any) -> None:
        check = self.checks[name]
        begin = time.perf_counter()
        try:
            await asyncio.wait_for(component.ping(), PING_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure means "down"
            check.up, check.rtt, check.error = False, None, exc.__class__.__name__
        else:
            check.up, check.rtt, check.error = True, time.perf_counter() - begin, None
        check.checked_at = time.time()

    def _on_peer_samples(self, events: list[Event]) -> None:
        for event in events:
            try:
                sample = Sample.from_dict(event.data)
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring a malformed stats sample")
                continue
            if sample.process != self.process:
                self.peers[sample.process] = sample

    def samples(self, now: float | None = None) -> list[Sample]:
        """This process's latest sample and each live peer's, this process first."""
        now = time.time() if now is None else now
        ttl = PEER_TTL_INTERVALS * self.interval
        for name in [p for p, s in self.peers.items() if now - s.at > ttl]:
            del self.peers[name]
        own = [self.own] if self.own is not None else []
        return own + sorted(self.peers.values(), key=lambda s: s.process)

    def _record(self, now: float) -> None:
        self.totals.append((now, add_up(self.samples(now))))

    def _observe(self, execution: Execution, events: list[Event]) -> None:
        """Change-channel observer: count executions reaching a terminal event."""
        if not events or not execution.status.terminal:
            return
        last = events[-1]
        data = last.data if isinstance(last.data, dict) else {}
        error_type = str(data.get("error_type") or "") if last.event == "error" else ""
        self.ended.labels(execution.status.value, error_type).inc()

    # --- the console's view ---------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``GET /api/stats``: processes, current figures, queues, and the chart series."""
        samples = self.samples()
        series: dict[str, list[Any]] = {
            k: []
            for k in (
                "t",
                "connections",
                "published_per_s",
                "delivered_per_s",
                "p50_ms",
                "p99_ms",
                "slow_drops_per_s",
                "refused_per_s",
            )
        }
        points = list(self.totals)
        for (t0, before), (t1, after) in itertools.pairwise(points):
            figures = step(before, after, t1 - t0)
            series["t"].append(round(t1, 3))
            for name, value in figures.items():
                series[name].append(value)
        now = {name: values[-1] if values else None for name, values in series.items() if name != "t"}
        totals = add_up(samples)
        now["connections_by_transport"] = totals["connections"]
        now["published_total"] = totals["published"]
        now["delivered_total"] = totals["delivered"]
        now["slow_drops_total"] = totals["slow_drops"]
        now["refused_total"] = totals["refused"] + totals["publish_refused"]
        return {
            "interval": self.interval,
            "process": self.process,
            "build": self.build,
            "now": now,
            "queues": [{"name": name, **q} for name, q in sorted(totals["queues"].items())],
            "processes": [
                {
                    "process": s.process,
                    "started": s.started,
                    "at": s.at,
                    "connections": sum(s.connections.values()),
                    "store": s.store,
                    "broker": s.broker,
                    "version": s.build.get("version"),
                }
                for s in samples
            ],
            "series": series,
        }


class _ProbeCollector:
    """The probe's latest results as gauges, read at scrape time (no ping on a scrape)."""

    def __init__(self, probe: HealthProbe) -> None:
        self.probe = probe

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        checks = self.probe.checks
        for name in ("store", "broker"):
            up = GaugeMetricFamily(f"herald_{name}_up", f"1 when the {name} answered the last probe (every 2 s)")
            up.add_metric([], 1.0 if checks[name].up else 0.0)
            yield up
            rtt = GaugeMetricFamily(f"herald_{name}_rtt_seconds", f"Round-trip time of the last {name} ping")
            if (seconds := checks[name].rtt) is not None:
                rtt.add_metric([], seconds)
            yield rtt
        depth = GaugeMetricFamily(
            "herald_queue_depth",
            "Executions waiting for a worker (the store's count: max across processes)",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "herald_queue_workers", "Workers connected to this process (sum across processes)", labels=["queue"]
        )
        for queue, q in sorted(self.probe.queues.items()):
            depth.add_metric([queue], q["pending"])
            workers.add_metric([queue], q["workers"])
        yield depth
        yield workers
        info = InfoMetricFamily("herald_build", "What this process runs")
        info.add_metric([], self.probe.build)
        yield info


def start_health_probe(core: Core, queues: QueueSource | None) -> HealthProbe:
    """Create and start the probe for ``core`` (in the running event loop); call
    ``stop()`` on shutdown. ``queues`` is the dispatcher, for queue depth and workers."""
    probe = HealthProbe(core, queues)
    probe.start()
    return probe
