"""The dashboard feed: a live view of a caller's execution summaries.

The feed is *state*, not a log: a client gets a ``snapshot`` of its newest executions,
then one ``execution`` message per change (the whole summary, so a message can be
applied on its own and applying one twice is harmless). A change is a new execution or
a change of status, progress or stage; tokens and logs move no dashboard row, so they
make no feed message. ``Feed.observe`` hangs on ``Core.observers``.

Long-poll clients need a position: every change gets a version ``<epoch>.<n>`` (epoch
is this process's life), and the last ``HISTORY`` changes are kept so a poller can ask
for what came after its version. An unknown epoch or a version older than the history
answers a fresh snapshot instead: nothing is ever silently skipped.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from core.auth import Principal
from core.model import Execution

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

    def observe(self, execution: Execution, events: list[Any]) -> None:
        """``Core.observers`` callback: after every create and every append."""
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
