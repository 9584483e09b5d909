"""The Store protocol: where executions and their event logs live.

Two implementations sit side by side and pass one contract suite
(``tests/test_store_contract.py``): ``memory.MemoryStore``, the embedded default, and
``mongo.MongoStore``. Both apply the pure rules of ``core.model.plan_append``; a store's
own job is to make each append atomic and durable, and to allocate ``seq`` so that
the log has no gap and no duplicate even with several Herald processes writing.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.model import AppendPlan, Event, Execution, PublishItem, Status


class Store(Protocol):
    """Executions and their append-only event logs."""

    async def start(self) -> None:
        """Connect and create indexes; must not fail when the backend is down
        (Herald starts anyway and reports it on ``/readyz``)."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> None:
        """Return when the backend answers; raise ``StoreUnavailable`` otherwise."""

    async def create_execution(self, execution: Execution) -> None:
        """Store a new execution document."""

    async def get_execution(self, execution_id: str) -> Execution | None:
        """The document, or None."""

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
        """Newest first; ``owner=None`` lists everyone's; ``before`` is the id of the
        last execution of the previous page (exclusive)."""

    async def append(self, execution_id: str, items: list[PublishItem]) -> AppendPlan:
        """Append the events ``plan_append`` decides, atomically and durably.

        Raises ``not_found`` for an unknown id and ``stream_closed`` (409) when a new
        event would follow a terminal one. Returns the plan that was stored.
        """

    async def events_after(self, execution_id: str, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` stored events with ``seq > after``, in order. When retention
        dropped some, the first one returned has ``seq > after + 1``."""

    async def prune(self, older_than: float) -> int:
        """Drop events published before ``older_than`` (epoch seconds); return how many.
        (MongoDB does it with a TTL index and may return 0.)"""

    async def changed_since(self, *, owner: str | None, since: float, limit: int = 200) -> list[Execution]:
        """Executions whose ``updated_at`` is after ``since``, oldest change first
        (``owner=None``: everyone's): the dashboard feed's cursor, which any process
        can answer from."""

    # --- state every process shares (tickets, worker names) ---------------------------
    async def put_ticket(self, ticket: str, claims: dict[str, Any], redeem_by: float, valid_until: float) -> None:
        """Store a stream ticket: the token's claims, the last moment it may first be
        redeemed, and the moment it dies (its token's ``exp``)."""

    async def redeem_ticket(self, ticket: str, stream: str, reconnect: bool, now: float) -> dict[str, Any] | None:
        """Atomically redeem ``ticket`` for ``stream``: its claims when it was never
        redeemed (and ``now <= redeem_by``), or, for a ``reconnect``, when it was
        redeemed for this same ``stream``; None otherwise or once it died."""

    async def acquire_lease(self, key: str, holder: str, data: dict[str, Any], expires_at: float, now: float) -> bool:
        """Take or renew ``key`` for ``holder`` until ``expires_at`` (with ``data``):
        True when it was free, expired, or already ``holder``'s; atomic across
        processes."""

    async def release_lease(self, key: str, holder: str) -> None:
        """Free ``key`` if ``holder`` holds it."""

    async def leases(self, prefix: str, now: float) -> list[dict[str, Any]]:
        """The unexpired leases whose key starts with ``prefix``: their ``data`` with
        ``key`` and ``holder``."""

    # --- worker dispatch (core/dispatch.py) -----------------------------------------
    async def claim_pending(self, queue: str, worker: str, now: float) -> Execution | None:
        """Atomically take the oldest ``pending`` execution of ``queue`` that no worker
        holds: set ``worker``, add one to ``attempts`` and restart its timeout clock
        (``last_event_at = now``). None when there is none. Two Herald processes
        sharing the backend never receive the same execution."""

    async def release(self, execution_id: str, worker: str) -> bool:
        """Clear ``worker`` if ``worker`` still holds the execution (a lost worker's
        ``status: pending`` event is appended first, so no one can claim it in
        between). Returns whether it was released."""

    async def pending_counts(self) -> dict[str, int]:
        """Per queue, how many executions wait (``pending``, held by no worker)."""

    async def stale_executions(self, older_than: float, limit: int = 100) -> list[Execution]:
        """Queued executions that are held by a worker or ``running``, not terminal, and
        have had no event (nor claim) since ``older_than``: candidates for ``timeout``."""
