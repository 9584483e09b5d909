"""Sessions: every open connection of this process — admission, the shared timer's
ticks and the drain.

Admission refuses a connection over ``max_connections`` (the process) or over
``max_connections_per_subject`` (one token subject, every transport counted), ``429``
/ ``4429`` with ``Retry-After``; while draining, every new connection is refused
``503`` so the client reconnects to another process. One shared timer (the Core's)
calls ``tick``: expiry, long-poll deadlines and heartbeats for all sessions, with no
timer per connection.

A drain (``drain_over``, on ``SIGTERM``) spreads the reconnects it causes: ending
10,000 connections in one go sends 10,000 clients, each with a store lookup to make,
to the other processes in the same millisecond. So the connections end in a random
order over a short window, workers first (their executions go back to the queue while
the other processes have all the time to take them), and each stream is told when to
come back (``drain_hint``): a well-behaved client waits that long instead of its
exponential backoff, which a drain is no reason to lengthen.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

from core.auth import Authenticator, Principal
from core.codec import http_chunk
from core.errors import ErrorCode, HeraldError
from core.metrics import Metrics
from core.session import Session
from core.settings import Settings
from core.timing import heartbeat_due
from core.transport import SHUTDOWN, Disconnect, Encoding, Transport, TransportName

#: Seconds a client refused for a connection limit should wait before trying again.
LIMIT_RETRY_AFTER = 5
#: Seconds over which a drain ends this process's connections (at most a quarter of
#: ``--drain-timeout``): long enough that a storm of reconnects arrives as a stream
#: the other processes absorb, short enough that a rolling restart stays quick.
DRAIN_SPREAD = 1.0
#: The drain ends its connections in this many slices of the window (one every 50 ms).
DRAIN_SLICES = 20


def drain_window(drain_timeout: float) -> float:
    """Seconds a drain spreads its ends over, for a given ``--drain-timeout``."""
    return max(0.0, min(DRAIN_SPREAD, drain_timeout / 4))


def drain_slices(count: int, window: float, slices: int = DRAIN_SLICES) -> list[tuple[float, int, int]]:
    """The drain's schedule for ``count`` connections: ``(at, start, stop)`` — at
    ``at`` seconds into the window, end connections ``start:stop`` of the drain's order.
    Every connection is in exactly one slice; slices are evenly spaced from 0 to
    ``window`` (one slice, at 0, when there is no window)."""
    if count <= 0:
        return []
    n = 1 if window <= 0 else max(1, min(slices, count))
    step = window / n
    return [(i * step, count * i // n, count * (i + 1) // n) for i in range(n)]


def drain_hint(window: float, rng: random.Random | None = None) -> int:
    """Milliseconds a drained client waits before reconnecting: uniform in
    ``[0, window]``, so that the clients of one slice do not come back together."""
    return round((rng or random).uniform(0, window) * 1000)


def shutdown_with_hint(retry_ms: int) -> Disconnect:
    """``SHUTDOWN`` with the retry hint in its reason: WebSocket close ``1001`` reason
    ``server_shutdown retry=<ms>`` (the error code, then the hint)."""
    return Disconnect(SHUTDOWN.code, f"{SHUTDOWN.reason} retry={retry_ms}", SHUTDOWN.outcome)


def sse_retry(retry_ms: int, encoding: Encoding) -> bytes:
    """An event-stream ``retry:`` field on its own (it dispatches no message): sent after
    ``ready``, it is the drain's hint, and a plain ``EventSource`` honours it too."""
    block = b"retry: %d\n\n" % retry_ms
    return http_chunk(block) if encoding is Encoding.SSE_CHUNK else block


class Sessions:
    """The open sessions of this process."""

    def __init__(self, settings: Settings, auth: Authenticator, metrics: Metrics) -> None:
        self.settings = settings
        self.auth = auth
        self.metrics = metrics
        self.draining = False
        self._open: set[Session] = set()
        self._per_subject: Counter[str] = Counter()
        self._last_beat = 0.0

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Session]:
        return iter(tuple(self._open))

    def open(self, transport: Transport, principal: Principal, **options: Any) -> Session:
        """Admit a connection and make its session; raises HeraldError when refused."""
        name = transport.name.value
        if self.draining:
            self.refused(name, "draining")
            raise HeraldError(
                ErrorCode.STORE_UNAVAILABLE, 503, "this server is shutting down; reconnect", retry_after=1
            )
        if len(self._open) >= self.settings.max_connections:
            self.refused(name, "too_many_connections")
            raise HeraldError(
                ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections", retry_after=LIMIT_RETRY_AFTER
            )
        limit = self.settings.max_connections_per_subject
        if limit and self._per_subject[principal.sub] >= limit:
            self.refused(name, "subject_limit")
            raise HeraldError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                429,
                f"this token's subject already has {limit} open connections",
                {"max_connections_per_subject": limit},
                retry_after=LIMIT_RETRY_AFTER,
            )
        session = Session(self, transport, principal, **options)
        self._open.add(session)
        self._per_subject[principal.sub] += 1
        self.metrics.connections[name] += 1
        self.metrics.connections_opened.labels(name).inc()
        return session

    def release(self, session: Session, disconnect: Disconnect) -> None:
        """The session ended (its ``run`` calls this once)."""
        if session not in self._open:
            return
        self._open.discard(session)
        sub = session.principal.sub
        self._per_subject[sub] -= 1
        if self._per_subject[sub] <= 0:
            del self._per_subject[sub]
        name = session.transport_name.value
        self.metrics.connections[name] -= 1
        self.metrics.connections_closed.labels(name, disconnect.outcome).inc()

    def refused(self, transport: str, reason: str) -> None:
        """Count a connection refused before it had a session."""
        self.metrics.connections_refused.labels(transport, reason).inc()

    def tick(self, wall: float, mono: float) -> None:
        """The shared timer: expiry, deadlines, and heartbeats when one is due."""
        interval = self.settings.heartbeat
        beat = heartbeat_due(last_sent=self._last_beat, interval=interval, now=mono)
        if beat:
            self._last_beat = mono
        for session in tuple(self._open):
            session.tick(wall, mono, beat, interval)

    def drain(self) -> None:
        """Refuse new connections and end every open one at once (``1001``, SSE end,
        polls answered) so clients resume elsewhere with their cursors."""
        self.draining = True
        for session in tuple(self._open):
            session.close(SHUTDOWN)

    async def drain_over(self, window: float, timeout: float, rng: random.Random | None = None) -> None:
        """Refuse new connections at once, then end every open one within ``window``
        seconds, in a random order, workers first, each stream with a retry hint; return
        when every session has gone through its exit path, or after ``timeout``."""
        self.draining = True
        rng = rng or random.Random()
        order = list(self._open)
        rng.shuffle(order)
        order.sort(key=lambda s: s.transport_name is not TransportName.WORKER)  # stable: workers first
        loop = asyncio.get_running_loop()
        began = loop.time()
        for at, start, stop in drain_slices(len(order), window):
            delay = began + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for session in order[start:stop]:
                self._end_for_drain(session, drain_hint(window, rng))
        deadline = began + max(timeout, window)
        while self._open and loop.time() < deadline:
            await asyncio.sleep(0.02)

    def _end_for_drain(self, session: Session, retry_ms: int) -> None:
        if session.closed:
            return
        if session.encoding in (Encoding.SSE, Encoding.SSE_CHUNK):
            session.send(sse_retry(retry_ms, session.encoding))
            session.close(SHUTDOWN)
        elif session.encoding is Encoding.WS:
            session.close(shutdown_with_hint(retry_ms))
        else:
            session.close(SHUTDOWN)
