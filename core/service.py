"""Core: the domain service behind every handler and transport.

It composes the parts, each in its own module: the store and the broker; publishing
with group commit (``core.publishing``); the change channel (``core.changes``); the
hubs that fan live events out (``core.hub``); subscriptions that own delivery order
(``core.subscription``); and the open connections (``core.sessions``, each a
``core.session.Session``). Itself it keeps execution CRUD, the authorisation cache,
and the one shared timer (heartbeats, expiry, long-poll deadlines, idle hubs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any

from core.auth import Authenticator, Principal, may_read
from core.broker.base import Broker
from core.changes import ChangeChannel
from core.codec import EncodedCache
from core.errors import ErrorCode, bad_request, forbidden, not_found
from core.hub import Hubs
from core.metrics import Metrics
from core.model import Execution, PublishItem, new_execution_id
from core.publishing import Publisher, guard
from core.ratelimit import PublishLimits
from core.sessions import Sessions
from core.settings import Settings
from core.sources import PageAnswers
from core.store.base import Store
from core.subscription import CATCH_UP_PAGE, Sink, Subscription
from core.tickets import TicketBook

log = logging.getLogger("herald.core")

#: The shared timer's period at most (heartbeats, token expiry, long-poll deadlines).
TICK = 1.0
#: Execution documents remembered for permission checks (owner and queue never change).
OWNERS_CACHE = 100_000


class Core:
    """The domain service behind every handler and transport."""

    def __init__(self, settings: Settings, store: Store, broker: Broker, authenticator: Authenticator):
        self.settings = settings
        self.store = store
        self.broker = broker
        self.auth = authenticator
        self.tickets = TicketBook(store)
        self.metrics = Metrics()
        #: Events encoded once for the hub and every catch-up (long-poll re-polls).
        self.encoded = EncodedCache()
        self.changes = ChangeChannel(broker)
        self.hubs = Hubs(broker, self.encoded, self.metrics, settings.coalesce_ms / 1000.0)
        self.publisher = Publisher(store, broker, self.hubs, self.metrics, self.changes, settings.max_event_bytes)
        self.sessions = Sessions(settings, authenticator, self.metrics)
        self.page_answers = PageAnswers(self.metrics)
        #: ``--publish-rate``: one token bucket per subject, for every client publish.
        self.publish_limits = PublishLimits(settings.publish_rate, settings.publish_burst)
        self._owners: dict[str, Execution] = {}
        self._timer_task: asyncio.Task[None] | None = None
        self._store_reader: asyncio.Task[None] | None = None
        #: The newest retention horizon applied (``prune``).
        self._pruned_before = 0.0
        self._prune_task: asyncio.Task[None] | None = None
        self.draining = False
        #: This process, among the processes sharing the store (leases name it).
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # --- life cycle -------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        self.broker.on_resync = self._resync
        await self.broker.start()
        self.changes.start()
        self._timer_task = asyncio.ensure_future(self._tick_forever())
        self._prune_task = asyncio.ensure_future(self._prune_forever())

    def _resync(self) -> None:
        """The broker is back after an outage in which messages were lost: every
        subscription re-reads the store, change observers learn of the gap."""
        self.hubs.resync()
        self.changes.lost()

    async def drain(self, timeout: float = 5.0) -> None:
        """End every connection (clients resume elsewhere with their cursors) and wait
        up to ``timeout`` for the publishes in flight to be stored and answered."""
        self.draining = True
        self.sessions.drain()
        self.page_answers.flush()
        await self.publisher.settle(timeout)

    async def stop(self) -> None:
        self.draining = True
        self.page_answers.flush()
        for task in (self._timer_task, self._prune_task):
            if task is not None:
                task.cancel()
        self.hubs.stop()
        await self.broker.close()
        await self.store.close()

    # --- executions ---------------------------------------------------------------
    async def create_execution(self, owner: str, kind: str, input_: dict[str, Any], queue: str | None) -> Execution:
        now = time.time()
        execution = Execution(
            id=new_execution_id(), owner=owner, kind=kind, queue=queue, input=input_, created_at=now, updated_at=now
        )
        await guard(self.store.create_execution(execution))
        await self.changes.announce(execution, None)
        return execution

    async def get_execution(self, execution_id: str) -> Execution:
        """The document, or 404."""
        found = await guard(self.store.get_execution(execution_id))
        if found is None:
            raise not_found()
        return found

    async def execution_for_auth(self, execution_id: str) -> Execution:
        """The document for a permission check. Owner and queue never change, so a
        cached copy serves publishes without a store round trip."""
        cached = self._owners.get(execution_id)
        if cached is not None:
            return cached
        found = await self.get_execution(execution_id)
        if len(self._owners) > OWNERS_CACHE:
            self._owners.clear()
        self._owners[execution_id] = found
        return found

    async def list_executions(self, **query: Any) -> list[Execution]:
        return await guard(self.store.list_executions(**query))

    # --- publishing -----------------------------------------------------------------
    def check_size(self, items: list[PublishItem]) -> None:
        """413 for an event whose envelope would exceed ``max_event_bytes``."""
        self.publisher.check_size(items)

    async def publish(self, execution_id: str, items: list[PublishItem]) -> list[int]:
        """Append ``items`` durably and fan them out; return each item's seq."""
        return await self.publisher.publish(execution_id, items)

    async def publish_server_event(self, execution_id: str, event: str, data: Any) -> list[int]:
        """Publish an event on the server's own behalf (cancel, timeouts)."""
        return await self.publish(execution_id, [PublishItem(event, data)])

    # --- following --------------------------------------------------------------
    async def authorize_follow(self, principal: Principal, execution_id: str, after: int) -> Execution:
        """The execution a caller asks to follow from ``after``: 404, 403 or a 400 for
        a cursor past its newest event, before any connection is admitted."""
        execution = await self.get_execution(execution_id)
        if not may_read(principal, execution):
            raise forbidden("this token may not read that execution")
        self.check_cursor(execution, after)
        return execution

    def follow(self, execution_id: str, after: int, sink: Sink, limit: int = CATCH_UP_PAGE) -> Subscription:
        """A subscription; call ``await sub.start(execution)``, ``close()`` on exit."""
        return Subscription(self, execution_id, after, sink, limit)

    @staticmethod
    def check_cursor(execution: Execution, after: int) -> None:
        if after < 0:
            raise bad_request("after must be a non-negative integer", ErrorCode.CURSOR_OUT_OF_RANGE)
        if after > execution.last_seq:
            raise bad_request(
                f"after={after} is past the newest event ({execution.last_seq})",
                ErrorCode.CURSOR_OUT_OF_RANGE,
                last_seq=execution.last_seq,
            )

    # --- the shared timer ------------------------------------------------------------
    async def _tick_forever(self) -> None:
        """One timer for every connection: heartbeats, expiry, deadlines; idle hubs."""
        while True:
            await asyncio.sleep(min(TICK, self.settings.heartbeat / 2))
            try:
                mono = time.monotonic()
                self.hubs.drop_idle(mono)
                self.auth.forget_idle(mono)
                self.sessions.tick(time.time(), mono)
                if not self.broker.healthy and (self._store_reader is None or self._store_reader.done()):
                    # Other processes' events come from the store until the broker is back.
                    self._store_reader = asyncio.ensure_future(self.hubs.read_store(self.store))
            except Exception:
                log.exception("the shared timer's tick failed")

    def retained_since(self) -> float:
        """Events stored before this time are gone by retention (from memory too)."""
        return max(time.time() - self.settings.retention, self._pruned_before)

    async def prune(self, older_than: float) -> int:
        """Drop events stored before ``older_than`` from the store, and stop serving
        them from memory."""
        self._pruned_before = max(self._pruned_before, older_than)
        return await self.store.prune(older_than)

    async def _prune_forever(self) -> None:
        """Retention for stores that do not expire events by themselves."""
        interval = max(1.0, min(60.0, self.settings.retention / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.prune(time.time() - self.settings.retention)
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("pruning events failed: %s", exc)
