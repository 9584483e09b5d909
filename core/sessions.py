"""Sessions: every open connection of this process — admission, the shared timer's
ticks and the drain.

Admission refuses a connection over ``max_connections`` (the process) or over
``max_connections_per_subject`` (one token subject, every transport counted), ``429``
/ ``4429`` with ``Retry-After``; while draining, every new connection is refused
``503`` so the client reconnects to another process. One shared timer (the Core's)
calls ``tick``: expiry, long-poll deadlines and heartbeats for all sessions, with no
timer per connection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from core.auth import Authenticator, Principal
from core.errors import ErrorCode, HeraldError
from core.metrics import Metrics
from core.session import Session
from core.settings import Settings
from core.timing import heartbeat_due
from core.transport import SHUTDOWN, Disconnect, Transport

#: Seconds a client refused for a connection limit should wait before trying again.
LIMIT_RETRY_AFTER = 5


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
        """Refuse new connections and end every open one (``1001``, SSE end, polls
        answered) so clients resume elsewhere with their cursors."""
        self.draining = True
        for session in tuple(self._open):
            session.close(SHUTDOWN)
