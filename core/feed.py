"""The dashboard feed: a live view of a caller's execution summaries.

The feed is *state*, not a log: a client gets a ``snapshot`` of its newest executions,
then one ``execution`` message per change (the whole summary, so a message can be
applied on its own and applying one twice is harmless). A change is a new execution or
a change of status, progress or stage; tokens and logs move no dashboard row, so they
make no feed message. ``Feed.observe`` hangs on the change channel (``core.changes``).

Long-poll clients need a position: every change gets a version ``<epoch>.<n>`` (epoch
is this process's life), and the last ``HISTORY`` changes are kept so a poller can ask
for what came after its version. An unknown epoch or a version older than the history
answers a fresh snapshot instead: nothing is ever silently skipped.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.auth import Principal, Scope
from core.codec import dumps
from core.model import Event, Execution
from core.transport import ANSWERED, Disconnect

if TYPE_CHECKING:
    from core.service import Core
    from core.session import Session

HISTORY = 2000
SNAPSHOT_SIZE = 50
SUMMARY_FIELDS = (
    "id",
    "owner",
    "kind",
    "queue",
    "worker",
    "status",
    "progress",
    "stage",
    "error",
    "last_seq",
    "created_at",
    "updated_at",
)

Listener = Callable[[str, dict[str, Any]], None]


def summary(execution: Execution) -> dict[str, Any]:
    """What a dashboard row shows of an execution."""
    doc = execution.to_public()
    return {name: doc[name] for name in SUMMARY_FIELDS}


def sees(principal: Principal, owner: str) -> bool:
    """A caller's feed shows its own executions, or all of them for ``admin``."""
    return principal.admin or principal.sub == owner


class Feed:
    """Summaries that changed, fanned out to listening feed connections."""

    def __init__(self, history: int = HISTORY) -> None:
        self.epoch = secrets.token_hex(4)
        self.count = 0
        self._history: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=history)
        self._shown: dict[str, tuple[Any, ...]] = {}
        self._listeners: dict[Listener, Principal] = {}

    @property
    def version(self) -> str:
        return f"{self.epoch}.{self.count}"

    def observe(self, execution: Execution, events: list[Event]) -> None:
        """Change-channel observer: after every create and every move."""
        row = (execution.status, execution.progress, execution.stage, execution.worker)
        if events and self._shown.get(execution.id) == row:
            return
        if len(self._shown) > 10 * HISTORY:
            self._shown.clear()
        self._shown[execution.id] = row
        self.count += 1
        entry = summary(execution)
        self._history.append((self.count, execution.owner, entry))
        version = self.version
        for listener, principal in list(self._listeners.items()):
            if sees(principal, execution.owner):
                listener(version, entry)

    def listen(self, principal: Principal, listener: Listener) -> None:
        self._listeners[listener] = principal

    def forget(self, listener: Listener) -> None:
        self._listeners.pop(listener, None)

    def changes_since(self, principal: Principal, version: str) -> list[dict[str, Any]] | None:
        """The caller's changes after ``version``, oldest first; None when they cannot
        be told (another process life, or older than the history): take a snapshot."""
        epoch, _, raw = version.partition(".")
        if epoch != self.epoch or not raw.isdigit():
            return None
        since = int(raw)
        if since > self.count:
            return None
        if since < self.count and (not self._history or self._history[0][0] > since + 1):
            return None
        return [entry for n, owner, entry in self._history if n > since and sees(principal, owner)]


def change(version: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One ``execution`` message of the feed."""
    return {"type": "execution", "version": version, "execution": entry}


async def snapshot(core: Core, feed: Feed, principal: Principal) -> dict[str, Any]:
    """The caller's newest executions, newest first, with the feed version they reflect."""
    version = feed.version
    found = await core.list_executions(owner=None if principal.admin else principal.sub, limit=SNAPSHOT_SIZE)
    return {"type": "snapshot", "version": version, "executions": [summary(e) for e in found]}


class FeedStream:
    """The feed on a streaming connection: a ``snapshot``, then one ``execution``
    message per change. Changes that arrive while the snapshot is read are held and
    sent after it, so the order on the wire is snapshot, then changes."""

    def __init__(self, core: Core, feed: Feed) -> None:
        self.core = core
        self.feed = feed
        self._held: list[tuple[str, dict[str, Any]]] | None = []
        self._session: Session | None = None

    async def start(self, session: Session) -> None:
        self._session = session
        self.feed.listen(session.principal, self._on_change)
        session.send_message("snapshot", await snapshot(self.core, self.feed, session.principal))
        held, self._held = self._held or [], None
        for version, entry in held:
            session.send_message("execution", change(version, entry))

    def _on_change(self, version: str, entry: dict[str, Any]) -> None:
        if self._held is not None:
            self._held.append((version, entry))
        elif self._session is not None:
            self._session.send_message("execution", change(version, entry))

    def stop(self) -> None:
        self.feed.forget(self._on_change)

    async def finish(self, disconnect: Disconnect) -> None:
        return None

    def allows(self, principal: Principal) -> bool:
        return principal.has(Scope.EXECUTIONS_READ)


class FeedPage:
    """The feed as one long-poll answer: the changes after ``since`` (held until there
    is one, up to the session's deadline), or a snapshot when ``since`` is absent or
    cannot be answered (another process's version, older than the history)."""

    def __init__(self, core: Core, feed: Feed, since: str) -> None:
        self.core = core
        self.feed = feed
        self.since = since
        self._session: Session | None = None

    async def start(self, session: Session) -> None:
        self._session = session
        changes = self.feed.changes_since(session.principal, self.since) if self.since else None
        if changes == [] and session.deadline is not None:
            self.feed.listen(session.principal, self._on_change)
        else:
            session.close(ANSWERED)

    def _on_change(self, version: str, entry: dict[str, Any]) -> None:
        if self._session is not None:
            self._session.close(ANSWERED)

    def stop(self) -> None:
        self.feed.forget(self._on_change)

    async def finish(self, disconnect: Disconnect) -> None:
        session = self._session
        if session is None or disconnect.error is not None or disconnect.outcome == "client":
            return
        principal = session.principal
        changes = self.feed.changes_since(principal, self.since) if self.since else None
        if changes is None:
            body = await snapshot(self.core, self.feed, principal)
        else:
            body = {"type": "changes", "version": self.feed.version, "executions": changes}
        session.write(dumps(body).encode())  # the one answer

    def allows(self, principal: Principal) -> bool:
        return principal.has(Scope.EXECUTIONS_READ)
