"""The embedded store: everything in this process's memory.

The default for ``python server.py``: no setup, fast, and a real implementation of
the Store contract (it passes the same suite as MongoDB). Its limits are the obvious
ones: state is lost when the process stops and it cannot be shared between processes.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from core.errors import not_found
from core.model import AppendPlan, Event, Execution, PublishItem, Status, plan_append

#: Past this many stored tickets, the dead ones are swept when the next is issued.
TICKETS_SWEEP_FROM = 1000


@dataclass(slots=True)
class _Log:
    """One execution's retained events; ``events[i].seq == first + i``."""

    events: list[Event] = field(default_factory=list)
    first: int = 1
    keys: dict[str, int] = field(default_factory=dict)


class MemoryStore:
    """Store protocol over dicts and lists. Appends are atomic because the event loop
    runs one at a time and ``append`` does not await in the middle."""

    def __init__(self) -> None:
        self._executions: dict[str, Execution] = {}
        self._order: list[str] = []  # creation order, oldest first
        self._logs: dict[str, _Log] = {}
        #: Worker dispatch indexes, kept by ``_reindex`` after every change: per queue
        #: a heap of (created_at, id) of claimable executions (stale entries are
        #: skipped when popped) and the set of them; and queued executions in hand.
        self._claimable_heap: dict[str, list[tuple[float, str]]] = {}
        self._claimable: dict[str, set[str]] = {}
        self._in_hand: set[str] = set()
        #: ticket -> [claims, redeem_by, valid_until, stream it was redeemed for]
        self._tickets: dict[str, list[Any]] = {}
        #: key -> (holder, data, expires_at)
        self._leases: dict[str, tuple[str, dict[str, Any], float]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def create_execution(self, execution: Execution) -> None:
        self._executions[execution.id] = execution.copy()
        self._order.append(execution.id)
        self._logs[execution.id] = _Log()
        self._reindex(execution)

    async def get_execution(self, execution_id: str) -> Execution | None:
        found = self._executions.get(execution_id)
        return found.copy() if found else None

    async def list_executions(
        self,
        *,
        owner: str | None,
        status: Status | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Execution]:
        found: list[Execution] = []
        start = len(self._order) - 1
        if before is not None:
            ex = self._executions.get(before)
            start = self._order.index(before) - 1 if ex else -1
        for i in range(start, -1, -1):
            ex = self._executions[self._order[i]]
            if owner is not None and ex.owner != owner:
                continue
            if status is not None and ex.status is not status:
                continue
            if kind is not None and ex.kind != kind:
                continue
            if queue is not None and ex.queue != queue:
                continue
            found.append(ex.copy())
            if len(found) >= limit:
                break
        return found

    async def append(self, execution_id: str, items: list[PublishItem]) -> AppendPlan:
        current = self._executions.get(execution_id)
        if current is None:
            raise not_found()
        log = self._logs[execution_id]
        plan = plan_append(current, items, log.keys)
        if plan.events:
            if not log.events:
                log.first = plan.events[0].seq
            log.events.extend(plan.events)
            for event in plan.events:
                if event.key is not None:
                    log.keys[event.key] = event.seq
            self._executions[execution_id] = plan.execution.copy()
            self._reindex(plan.execution)
        return plan

    async def events_after(self, execution_id: str, after: int, limit: int) -> list[Event]:
        log = self._logs.get(execution_id)
        if log is None or not log.events:
            return []
        start = max(0, after + 1 - log.first)
        return log.events[start : start + limit]

    async def prune(self, older_than: float) -> int:
        dropped = 0
        for log in self._logs.values():
            n = 0
            for event in log.events:
                if event.timestamp >= older_than:
                    break
                n += 1
            if n:
                del log.events[:n]
                log.first += n
                dropped += n
        self._sweep_tickets(time.time())  # dead tickets go with the events, not only when many
        return dropped

    async def changed_since(self, *, owner: str | None, since: float, limit: int = 200) -> list[Execution]:
        found = [
            ex for ex in self._executions.values() if ex.updated_at > since and (owner is None or ex.owner == owner)
        ]
        found.sort(key=lambda ex: ex.updated_at)
        return [ex.copy() for ex in found[:limit]]

    # --- tickets and leases ---------------------------------------------------------------
    async def put_ticket(self, ticket: str, claims: dict[str, Any], redeem_by: float, valid_until: float) -> None:
        if len(self._tickets) > TICKETS_SWEEP_FROM:
            self._sweep_tickets(time.time())
        self._tickets[ticket] = [claims, redeem_by, valid_until, None]

    def _sweep_tickets(self, now: float) -> None:
        """Forget tickets past their token's exp, or never redeemed in time."""
        for key in [k for k, t in self._tickets.items() if t[2] <= now or (t[3] is None and t[1] < now)]:
            del self._tickets[key]

    async def redeem_ticket(self, ticket: str, stream: str, reconnect: bool, now: float) -> dict[str, Any] | None:
        found = self._tickets.get(ticket)
        if found is None or found[2] <= now:
            return None
        claims, redeem_by, _, bound = found
        if bound is None and now <= redeem_by:
            found[3] = stream
            return dict(claims)
        if reconnect and bound == stream:
            return dict(claims)
        return None

    async def acquire_lease(self, key: str, holder: str, data: dict[str, Any], expires_at: float, now: float) -> bool:
        current = self._leases.get(key)
        if current is not None and current[0] != holder and current[2] > now:
            return False
        self._leases[key] = (holder, dict(data), expires_at)
        return True

    async def release_lease(self, key: str, holder: str) -> None:
        current = self._leases.get(key)
        if current is not None and current[0] == holder:
            del self._leases[key]

    async def leases(self, prefix: str, now: float) -> list[dict[str, Any]]:
        for key in [k for k, (_, _, until) in self._leases.items() if until <= now]:
            del self._leases[key]
        return [
            {**data, "key": key, "holder": holder}
            for key, (holder, data, _) in sorted(self._leases.items())
            if key.startswith(prefix)
        ]

    # --- worker dispatch ----------------------------------------------------------------
    def _reindex(self, ex: Execution) -> None:
        """Keep the dispatch indexes in step with one document."""
        if ex.queue is None:
            return
        claimable = self._claimable.setdefault(ex.queue, set())
        if ex.status is Status.PENDING and ex.worker is None:
            if ex.id not in claimable:
                claimable.add(ex.id)
                heapq.heappush(self._claimable_heap.setdefault(ex.queue, []), (ex.created_at, ex.id))
        else:
            claimable.discard(ex.id)
        if not ex.status.terminal and (ex.worker is not None or ex.status is Status.RUNNING):
            self._in_hand.add(ex.id)
        else:
            self._in_hand.discard(ex.id)

    async def claim_pending(self, queue: str, worker: str, now: float) -> Execution | None:
        heap = self._claimable_heap.get(queue)
        claimable = self._claimable.get(queue, set())
        while heap:
            _, execution_id = heapq.heappop(heap)
            if execution_id not in claimable:
                continue  # a stale entry: claimed, finished or requeued since
            ex = self._executions[execution_id]
            ex.worker = worker
            ex.attempts += 1
            ex.last_event_at = now
            self._reindex(ex)
            return ex.copy()
        return None

    async def release(self, execution_id: str, worker: str) -> bool:
        ex = self._executions.get(execution_id)
        if ex is None or ex.worker != worker:
            return False
        ex.worker = None
        self._reindex(ex)
        return True

    async def pending_counts(self) -> dict[str, int]:
        return {queue: len(ids) for queue, ids in self._claimable.items() if ids}

    async def stale_executions(self, older_than: float, limit: int = 100) -> list[Execution]:
        found: list[Execution] = []
        for execution_id in self._in_hand:
            ex = self._executions[execution_id]
            if (ex.last_event_at or ex.created_at) < older_than:
                found.append(ex.copy())
                if len(found) >= limit:
                    break
        return found
