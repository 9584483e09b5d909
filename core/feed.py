"""The dashboard feed: a live view of a caller's execution summaries.

The feed is *state*, not a log: a client gets a ``snapshot`` of its newest executions,
then one ``execution`` message per change (the whole summary, so a message can be
applied on its own and applying one twice is harmless). A change is a new execution or
a change of status, progress or stage; tokens and logs move no dashboard row, so they
make no feed message. ``Feed.observe`` hangs on the change channel (``core.changes``).

Long-poll clients need a position that any process of a deployment can answer from:
a version is a time, the ``updated_at`` of the newest change the client has (seconds,
as text). Every process hears every change through the change channel, so each keeps
the last ``HISTORY`` row changes and answers a poll from them when they cover its
version (``changes_since``); when they do not — the process started after that time,
the history overflowed, or a broker outage left a hole — the store answers
(executions whose ``updated_at`` is after it). A version that is not a time answers a
fresh snapshot: nothing is ever silently skipped. Processes of one deployment need
clocks in step (NTP), as the versions are their timestamps.
"""

from __future__ import annotations

import asyncio
import time
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

    def __init__(self, history: int = HISTORY, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        #: Every row change after this time is in the history (this process heard it).
        self.complete_since = clock()
        self._history: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=history)
        self._shown: dict[str, tuple[Any, ...]] = {}
        self._listeners: dict[Listener, Principal] = {}
        #: Called when changes may have been missed (see ``lost_changes``).
        self._gap_listeners: dict[Listener, Callable[[], None]] = {}

    def now_version(self) -> str:
        """A version for "everything until now" (a snapshot taken next)."""
        return version_of(self._clock())

    def lost_changes(self) -> None:
        """Changes may have been missed (the broker was down): the history no longer
        answers for what came before now; the store does."""
        self.complete_since = self._clock()
        self._history.clear()
        for on_gap in list(self._gap_listeners.values()):
            on_gap()

    def observe(self, execution: Execution, events: list[Event]) -> None:
        """Change-channel observer: after every create and every move."""
        row = (execution.status, execution.progress, execution.stage, execution.worker)
        if events and self._shown.get(execution.id) == row:
            return
        if len(self._shown) > 10 * HISTORY:
            self._shown.clear()
        self._shown[execution.id] = row
        entry = summary(execution)
        self._history.append((execution.updated_at, execution.owner, entry))
        version = version_of(execution.updated_at)
        for listener, principal in list(self._listeners.items()):
            if sees(principal, execution.owner):
                listener(version, entry)

    def listen(self, principal: Principal, listener: Listener, on_gap: Callable[[], None] | None = None) -> None:
        self._listeners[listener] = principal
        if on_gap is not None:
            self._gap_listeners[listener] = on_gap

    def forget(self, listener: Listener) -> None:
        self._listeners.pop(listener, None)
        self._gap_listeners.pop(listener, None)

    def changes_since(self, principal: Principal, since: float) -> list[tuple[float, dict[str, Any]]] | None:
        """The caller's row changes after ``since`` (each with its time), oldest first;
        None when this process's history cannot tell (ask the store)."""
        if since < self.complete_since:
            return None
        history = self._history
        if len(history) == history.maxlen and history[0][0] > since:
            return None
        return [(at, entry) for at, owner, entry in history if at > since and sees(principal, owner)]


def version_of(at: float) -> str:
    """A feed version: a time, as text (microseconds)."""
    return f"{at:.6f}"


def parse_version(version: str) -> float | None:
    """The time a version names; None when it is not one (answer a snapshot)."""
    try:
        at = float(version)
    except ValueError:
        return None
    return at if at == at and 0 <= at < 1e11 else None  # not NaN, not absurd


def change(version: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One ``execution`` message of the feed."""
    return {"type": "execution", "version": version, "execution": entry}


async def snapshot(core: Core, feed: Feed, principal: Principal) -> dict[str, Any]:
    """The caller's newest executions, newest first, with the feed version they reflect."""
    version = feed.now_version()
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
        self._gap_task: asyncio.Task[None] | None = None

    async def start(self, session: Session) -> None:
        self._session = session
        self.feed.listen(session.principal, self._on_change, self._on_gap)
        await self._send_snapshot()

    async def _send_snapshot(self) -> None:
        session = self._session
        if session is None or session.closed:
            return
        self._held = []
        session.send_message("snapshot", await snapshot(self.core, self.feed, session.principal))
        held, self._held = self._held or [], None
        for version, entry in held:
            session.send_message("execution", change(version, entry))

    def _on_gap(self) -> None:
        """Changes from other processes may have been missed: a fresh snapshot."""
        self._gap_task = asyncio.ensure_future(self._send_snapshot())

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
    is one, up to the session's deadline), answered from this process's history or,
    when it cannot tell, from the store; or a snapshot when ``since`` is absent or is
    not a version.

    A poll is held whenever the answer would be empty, wherever the answer came from:
    after a broker outage the history cannot tell for a while, and an idle dashboard
    must not then be answered "nothing" at once, poll after poll."""

    def __init__(self, core: Core, feed: Feed, since: str) -> None:
        self.core = core
        self.feed = feed
        self.since = parse_version(since) if since else None
        self._session: Session | None = None
        self._answer: dict[str, Any] | None = None

    async def start(self, session: Session) -> None:
        self._session = session
        since = self.since
        if since is None or session.deadline is None:
            session.close(ANSWERED)
            return
        # Listen first: a change made while the store is read still wakes the poll.
        self.feed.listen(session.principal, self._on_change, self._on_gap)
        answer = await self._changes(session.principal, since)
        if answer["executions"]:
            self._answer = answer
            session.close(ANSWERED)

    def _on_change(self, version: str, entry: dict[str, Any]) -> None:
        at = parse_version(version)
        if self._session is not None and (self.since is None or at is None or at > self.since):
            self._session.close(ANSWERED)  # a change the client has not seen

    def _on_gap(self) -> None:
        if self._session is not None:
            self._session.close(ANSWERED)  # the store answers for what may have been missed

    def stop(self) -> None:
        self.feed.forget(self._on_change)

    async def finish(self, disconnect: Disconnect) -> None:
        session = self._session
        if session is None or disconnect.error is not None or disconnect.outcome == "client":
            return
        principal = session.principal
        since = self.since
        if since is None:
            body = await snapshot(self.core, self.feed, principal)
        else:
            body = self._answer or await self._changes(principal, since)
        session.write(dumps(body).encode())  # the one answer

    async def _changes(self, principal: Principal, since: float) -> dict[str, Any]:
        changes = self.feed.changes_since(principal, since)
        if changes is None:
            owner = None if principal.admin else principal.sub
            rows = await self.core.store.changed_since(owner=owner, since=since, limit=SNAPSHOT_SIZE)
            changes = [(e.updated_at, summary(e)) for e in rows]
        newest = max([since, *(at for at, _ in changes)])
        return {"type": "changes", "version": version_of(newest), "executions": [entry for _, entry in changes]}

    def allows(self, principal: Principal) -> bool:
        return principal.has(Scope.EXECUTIONS_READ)
