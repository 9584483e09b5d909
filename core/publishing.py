"""Publishing: appends are durable before they are acknowledged, and group-committed.

Concurrent publishes to one execution are appended by one ``store.append`` (one seq
range, one insert), then handed to the broker in seq order: under a token stream this
turns N round trips into about one per store latency. A request of a group that the
store refuses (a publish after the terminal event) makes the group fall back to one
append per request, so every caller gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from core.broker.base import Broker
from core.changes import ChangeChannel
from core.codec import dumps
from core.errors import ErrorCode, HeraldError, StoreUnavailable, bad_request, store_unavailable
from core.hub import Hubs
from core.metrics import Metrics
from core.model import Event, Execution, PublishItem
from core.store.base import Store

log = logging.getLogger("herald.publish")
T = TypeVar("T")

#: Bytes of envelope around an event's data (ids, seq, timestamp, field names).
ENVELOPE_OVERHEAD = 160


async def guard(awaitable: Awaitable[T]) -> T:
    """Map a store outage to 503 with ``Retry-After``."""
    try:
        return await awaitable
    except StoreUnavailable as exc:
        raise store_unavailable(str(exc) or "the store did not answer") from None


class _AppendQueue:
    """Publishes to one execution waiting for the one append in flight."""

    __slots__ = ("busy", "task", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[list[PublishItem], asyncio.Future[list[int]]]] = []
        self.busy = False
        #: The append loop, held here (the event loop keeps tasks weakly).
        self.task: asyncio.Task[None] | None = None


class Publisher:
    """Appends events durably, then hands them to the broker and the change channel."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        hubs: Hubs,
        metrics: Metrics,
        changes: ChangeChannel,
        max_event_bytes: int,
    ) -> None:
        self.store = store
        self.broker = broker
        self.hubs = hubs
        self.metrics = metrics
        self.changes = changes
        self.max_event_bytes = max_event_bytes
        self._queues: dict[str, _AppendQueue] = {}

    def check_size(self, items: list[PublishItem]) -> None:
        """413 for an event whose envelope would exceed ``max_event_bytes``; 400 for
        data that is not strict JSON (``core.jsonstrict`` refuses it on the way in, so
        this is the second line: nothing unserialisable is ever stored)."""
        limit = self.max_event_bytes
        for i, item in enumerate(items):
            try:
                size = len(dumps(item.data).encode()) + len(item.event) + ENVELOPE_OVERHEAD
            except ValueError:  # NaN or Infinity (allow_nan=False), a lone surrogate
                raise bad_request("event data is not strict JSON", ErrorCode.BAD_JSON, index=i) from None
            if size > limit:
                raise HeraldError(
                    ErrorCode.EVENT_TOO_LARGE,
                    413,
                    f"event is {size} bytes; the limit is {limit}",
                    {"index": i, "max_event_bytes": limit},
                )

    async def publish(self, execution_id: str, items: list[PublishItem]) -> list[int]:
        """Append ``items`` durably and fan them out; return each item's seq. Returns
        only after the store acknowledged the write."""
        self.check_size(items)
        queue = self._queues.get(execution_id)
        if queue is None:
            queue = self._queues[execution_id] = _AppendQueue()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        queue.waiting.append((items, future))
        if not queue.busy:
            queue.busy = True
            queue.task = asyncio.ensure_future(self._drain(execution_id, queue))
        return await future

    @property
    def in_flight(self) -> bool:
        """Whether a publish is still waiting for the store."""
        return bool(self._queues)

    async def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the publishes in flight to be stored and
        answered, so a shutdown never turns an accepted publish into a 500."""
        deadline = time.monotonic() + timeout
        while self._queues and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _drain(self, execution_id: str, queue: _AppendQueue) -> None:
        try:
            while queue.waiting:
                group, queue.waiting = queue.waiting, []
                if len(group) == 1:
                    await self._append_one(execution_id, *group[0])
                    continue
                merged = [item for items, _ in group for item in items]
                try:
                    plan = await guard(self.store.append(execution_id, merged))
                except HeraldError:
                    for items, future in group:
                        await self._append_one(execution_id, items, future)
                    continue
                at = 0
                for items, future in group:
                    if not future.done():
                        future.set_result(plan.seqs[at : at + len(items)])
                    at += len(items)
                await self._announce(plan.execution, plan.events)
        finally:
            queue.busy = False
            if not queue.waiting:
                self._queues.pop(execution_id, None)

    async def _append_one(self, execution_id: str, items: list[PublishItem], future: asyncio.Future[list[int]]) -> None:
        try:
            plan = await guard(self.store.append(execution_id, items))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who renders it
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(plan.seqs)
        await self._announce(plan.execution, plan.events)

    async def _announce(self, execution: Execution, events: list[Event]) -> None:
        """Hand freshly stored events to this process's subscribers at once, then to
        the other processes through the broker, and to the change channel."""
        if not events:
            return
        self.metrics.published.inc(len(events))
        self.hubs.deliver(execution.id, events)
        try:
            await self.broker.publish(execution.id, events)
        except Exception:
            log.exception("broker publish failed for %s", execution.id)
        if self.changes.moves(events):
            await self.changes.announce(execution, events[-1])
