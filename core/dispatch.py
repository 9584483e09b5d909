"""Worker dispatch: who runs which queued execution, and what happens when they stop.

Workers connect out to serve a queue (PROTOCOL.md section 6). The ``Dispatcher`` keeps
this process's workers per queue and hands each pending execution to one of them:

- **Claims are the store's.** An execution is taken with ``store.claim_pending``, an
  atomic compare-and-set, so several Herald processes sharing one MongoDB never hand
  it out twice. This class only decides *which local worker* asks next: the one with
  the fewest executions in hand, then the one that waited longest.
- **Lost workers give executions back.** When a worker's connection ends, each
  execution it held goes back to ``pending`` — a server ``status`` event, then the
  store clears the worker — unless it was already handed out ``max_attempts`` times:
  then it fails with ``error_type: "worker_lost"``.
- **Silence fails.** A queued execution held by a worker (or running) with no event
  for ``execution_timeout`` seconds fails with ``error_type: "timeout"``.
- **Ends reach the worker.** A terminal event the worker did not send itself (a
  cancel, a timeout, an operator's ``error``) is passed on as ``{"op": "cancel"}``.

It learns of new executions and terminal events through the change channel, and sweeps
every second for what another process created or failed to announce. It never touches
sockets: a worker is a ``WorkerLink`` (the WebSocket handler), or a one-shot
``ClaimWaiter`` for ``POST /api/workers/claim``. The bookkeeping of each worker
(capacity, executions in hand, when it last got one) is the dispatcher's alone: the
socket tells it what happened (``ending``, ``refused``) and asks (``holds``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import ErrorCode, HeraldError
from core.model import TERMINAL_EVENTS, Event, Execution, PublishItem, Status, rfc3339
from core.publishing import guard
from core.service import Core
from core.transport import TransportName

log = logging.getLogger("herald.dispatch")

#: How often the dispatcher looks for stale executions and work other processes queued.
SWEEP_SECONDS = 1.0
#: How long a worker's name (and a process's waiting claims) stays taken without a
#: renewal: a process that dies frees its workers' names after this.
LEASE_SECONDS = 10.0
#: How often leases are renewed.
RENEW_SECONDS = 3.0
#: Lease keys: a worker's name on a queue, a process's HTTP claims on a queue.
WORKER_LEASE = "worker:"
CLAIMS_LEASE = "claims:"


class WorkerLink(Protocol):
    """A connected worker as the dispatcher sees it: where it serves, and how to tell
    it something. Its bookkeeping (``_Worker``) is the dispatcher's alone."""

    queue: str
    name: str

    def execute(self, execution: Execution) -> bool:
        """Send ``{"op": "execute"}``; False when the connection is already gone."""

    def cancel(self, execution_id: str, reason: str) -> None:
        """Send ``{"op": "cancel", "execution_id", "reason"}``."""


@dataclass(eq=False)
class _Worker:
    """The dispatcher's bookkeeping of one connected worker."""

    link: WorkerLink
    since: float = field(default_factory=time.time)
    capacity: int = 1
    #: Executions in hand, and those among them the worker itself just ended.
    held: set[str] = field(default_factory=set)
    finishing: set[str] = field(default_factory=set)
    last_assigned: float = 0.0

    @property
    def queue(self) -> str:
        return self.link.queue

    @property
    def name(self) -> str:
        return self.link.name


class ClaimWaiter:
    """A ``POST /api/workers/claim`` waiting for an execution (long-poll)."""

    def __init__(self, queue: str, name: str) -> None:
        self.queue = queue
        self.name = name
        self.since = time.time()
        self.future: asyncio.Future[Execution] = asyncio.get_running_loop().create_future()


class Dispatcher:
    """Hands queued executions to workers; requeues, times out and cancels them."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.settings = core.settings
        #: Connected workers per queue and name, and by link.
        self._links: dict[str, dict[str, _Worker]] = {}
        self._workers: dict[WorkerLink, _Worker] = {}
        self._waiters: dict[str, list[ClaimWaiter]] = {}
        #: Execution id → the local worker holding it.
        self._holders: dict[str, _Worker] = {}
        #: Executions handed out over HTTP claim: id → (queue, worker name).
        self._claimed: dict[str, tuple[str, str]] = {}
        self._pumping: set[str] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._again: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._renewed = 0.0
        #: Queues for which this process published HTTP claims (to withdraw them).
        self._claim_queues: set[str] = set()
        core.changes.observe(self.observe)

    # --- workers ------------------------------------------------------------------------
    async def connect(self, link: WorkerLink) -> None:
        """Register a worker; 409 (close code 4409) if its name is taken on the queue,
        on this process or any other (a lease in the store, renewed while connected)."""
        taken = HeraldError(
            ErrorCode.CONFLICT,
            409,
            f"a worker named {link.name!r} already serves queue {link.queue!r}",
            {"queue": link.queue, "name": link.name},
        )
        workers = self._links.setdefault(link.queue, {})
        if link.name in workers:
            raise taken
        worker = workers[link.name] = self._workers[link] = _Worker(link)
        try:
            leased = await self._lease(worker, time.time())
        except Exception:
            self._unregister(worker)
            raise
        if not leased:
            self._unregister(worker)
            raise taken
        self._ensure_sweeper()
        self.wake(worker.queue)

    def _unregister(self, worker: _Worker) -> None:
        self._workers.pop(worker.link, None)
        workers = self._links.get(worker.queue, {})
        if workers.get(worker.name) is worker:
            del workers[worker.name]
            if not workers:
                self._links.pop(worker.queue, None)

    async def _lease(self, worker: _Worker, now: float) -> bool:
        """Take or renew the worker's name on its queue for this process, with what
        ``/api/queues`` shows of it on every process."""
        data = {
            "queue": worker.queue,
            "name": worker.name,
            "transport": TransportName.WEBSOCKET.value,
            "since": worker.since,
            "capacity": worker.capacity,
            "executions": sorted(worker.held),
            "process": self.core.process_id,
        }
        key = f"{WORKER_LEASE}{worker.queue}:{worker.name}"
        return await guard(self.core.store.acquire_lease(key, self.core.process_id, data, now + LEASE_SECONDS, now))

    async def disconnect(self, link: WorkerLink) -> None:
        """The worker's connection ended: give back everything it held, and its name."""
        worker = self._workers.get(link)
        if worker is None:
            return
        self._unregister(worker)
        try:
            await self.core.store.release_lease(f"{WORKER_LEASE}{worker.queue}:{worker.name}", self.core.process_id)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("releasing worker name %s failed: %s", worker.name, exc)
        for execution_id in sorted(worker.held):
            await self._give_back(worker, execution_id)

    def set_capacity(self, link: WorkerLink, capacity: int) -> None:
        """The worker takes up to ``capacity`` executions at once."""
        worker = self._workers.get(link)
        if worker is not None:
            worker.capacity = capacity
            self.wake(worker.queue)

    def holds(self, link: WorkerLink, execution_id: str) -> bool:
        """Whether ``link`` holds ``execution_id`` (it may publish to it)."""
        worker = self._workers.get(link)
        return worker is not None and execution_id in worker.held

    def ending(self, link: WorkerLink, execution_id: str) -> None:
        """The worker itself sent ``execution_id``'s terminal event: when it is stored,
        the worker needs no ``cancel``."""
        worker = self._workers.get(link)
        if worker is not None:
            worker.finishing.add(execution_id)

    def refused(self, link: WorkerLink, execution_id: str, error: HeraldError) -> None:
        """A publish of the worker's was refused. An execution that ended elsewhere, or
        is gone, leaves its hands (and the worker is told to stop it)."""
        worker = self._workers.get(link)
        if worker is None:
            return
        worker.finishing.discard(execution_id)
        if error.code in (ErrorCode.STREAM_CLOSED, ErrorCode.NOT_FOUND) and execution_id in worker.held:
            self._forget(worker, execution_id)
            link.cancel(execution_id, "stream_closed")

    def serves(self, queue: str) -> bool:
        """Whether a worker connected to this process would take an execution of
        ``queue`` now or soon (a connected worker, or a waiting HTTP claim)."""
        return bool(self._links.get(queue)) or bool(self._waiters.get(queue))

    def _forget(self, worker: _Worker, execution_id: str) -> None:
        """The worker no longer holds ``execution_id``."""
        worker.held.discard(execution_id)
        worker.finishing.discard(execution_id)
        if self._holders.get(execution_id) is worker:
            del self._holders[execution_id]
        self.wake(worker.queue)

    async def _give_back(self, worker: _Worker, execution_id: str) -> None:
        """Requeue an execution a lost worker held, or fail it after ``max_attempts``."""
        self._forget(worker, execution_id)
        name = worker.name
        try:
            doc = await self.core.store.get_execution(execution_id)
            if doc is None or doc.status.terminal or doc.worker != name:
                return
            if doc.attempts >= self.settings.max_attempts:
                await self._fail(
                    execution_id,
                    "worker_lost",
                    f"the worker was lost {doc.attempts} times (max_attempts={self.settings.max_attempts})",
                    {"worker": name, "attempts": doc.attempts},
                )
                return
            if doc.status is Status.RUNNING:
                # The status event first, while the worker still holds it: no one can
                # claim it before subscribers learn it went back to pending.
                await self.core.publish(execution_id, [PublishItem("status", {"status": Status.PENDING.value})])
            await self.core.store.release(execution_id, name)
        except HeraldError as exc:
            if exc.code is not ErrorCode.STREAM_CLOSED:
                log.warning("giving back %s failed: %s", execution_id, exc.message)
            return
        except Exception:
            log.exception("giving back %s failed", execution_id)
            return
        self.wake(worker.queue)

    # --- HTTP claim ---------------------------------------------------------------------
    async def claim(self, queue: str, name: str, wait: float) -> Execution | None:
        """One execution of ``queue`` for an HTTP worker, waiting up to ``wait`` seconds."""
        self._ensure_sweeper()
        execution = await self.core.store.claim_pending(queue, name, time.time())
        if execution is None and wait > 0:
            waiter = ClaimWaiter(queue, name)
            self._waiters.setdefault(queue, []).append(waiter)
            self.wake(queue)
            try:
                execution = await asyncio.wait_for(waiter.future, wait)
            except TimeoutError:
                execution = None
            finally:
                waiters = self._waiters.get(queue, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(queue, None)
        if execution is not None:
            self._claimed[execution.id] = (queue, name)
        return execution

    async def unclaim(self, execution: Execution, name: str) -> None:
        """Give back an execution claimed for a caller that went away before the answer."""
        self._claimed.pop(execution.id, None)
        if await self.core.store.release(execution.id, name):
            self.wake(execution.queue or "")

    # --- assignment -----------------------------------------------------------------------
    def wake(self, queue: str) -> None:
        """Hand out pending executions of ``queue`` to idle local workers (soon)."""
        if queue in self._pumping:
            self._again.add(queue)
            return
        if not self._links.get(queue) and not self._waiters.get(queue):
            return
        self._pumping.add(queue)
        pump = asyncio.ensure_future(self._pump(queue))
        self._pumps.add(pump)  # held: the loop keeps tasks weakly
        pump.add_done_callback(self._pumps.discard)

    async def _pump(self, queue: str) -> None:
        try:
            while True:
                self._again.discard(queue)
                while (taker := self._idle(queue)) is not None:
                    name = taker.name
                    try:
                        execution = await self.core.store.claim_pending(queue, name, time.time())
                    except Exception as exc:  # noqa: BLE001 - the next wake or sweep tries again
                        log.warning("claiming from queue %s failed: %s", queue, exc)
                        return
                    if execution is None:
                        break
                    await self._hand(taker, execution)
                if queue not in self._again:
                    return
        finally:
            self._pumping.discard(queue)

    def _idle(self, queue: str) -> _Worker | ClaimWaiter | None:
        """The next taker: a waiting HTTP claim, else the connected worker with free
        capacity, fewest executions in hand, longest since its last assignment."""
        for waiter in self._waiters.get(queue, []):
            if not waiter.future.done():
                return waiter
        free = [worker for worker in self._links.get(queue, {}).values() if len(worker.held) < worker.capacity]
        if not free:
            return None
        return min(free, key=lambda worker: (len(worker.held), worker.last_assigned))

    async def _hand(self, taker: _Worker | ClaimWaiter, execution: Execution) -> None:
        if isinstance(taker, ClaimWaiter):
            if taker.future.done():  # the claim timed out while we were claiming
                await self.unclaim(execution, taker.name)
            else:
                taker.future.set_result(execution)
            return
        taker.held.add(execution.id)
        taker.last_assigned = time.monotonic()
        self._holders[execution.id] = taker
        if not taker.link.execute(execution):
            # Its connection is gone and its ``disconnect`` is on the way: hand it
            # nothing more, or the pump would give it the same execution again at once
            # until ``max_attempts`` fails it, then every other one waiting.
            taker.capacity = 0
            await self._give_back(taker, execution.id)

    # --- what the core tells us -----------------------------------------------------------
    def observe(self, execution: Execution, events: list[Event]) -> None:
        """Change-channel observer: new queued executions and terminal events."""
        if execution.queue is None:
            return
        if not events:
            self.wake(execution.queue)
            return
        last = events[-1]
        if last.event not in TERMINAL_EVENTS:
            return
        self._claimed.pop(execution.id, None)
        holder = self._holders.pop(execution.id, None)
        if holder is None:
            return
        holder.held.discard(execution.id)
        if execution.id in holder.finishing:
            holder.finishing.discard(execution.id)
        else:
            holder.link.cancel(execution.id, _end_reason(last))
        self.wake(execution.queue)

    # --- the sweep: timeouts and work queued by other processes ---------------------------
    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        interval = min(SWEEP_SECONDS, max(0.05, self.settings.execution_timeout / 4))
        while not self.core.draining:
            await asyncio.sleep(interval)
            try:
                await self.sweep(time.time())
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("dispatch sweep failed: %s", exc)

    async def sweep(self, now: float) -> None:
        """Fail silent executions with ``timeout``; look for work in every served queue;
        renew this process's leases."""
        if now - self._renewed >= RENEW_SECONDS:
            self._renewed = now
            await self._renew(now)
        cutoff = now - self.settings.execution_timeout
        for stale in await self.core.store.stale_executions(cutoff):
            fresh = await self.core.store.get_execution(stale.id)
            if fresh is None or fresh.status.terminal or (fresh.last_event_at or fresh.created_at) >= cutoff:
                continue
            await self._fail(
                stale.id,
                "timeout",
                f"no event for {self.settings.execution_timeout:g} seconds",
                {"worker": fresh.worker, "execution_timeout": self.settings.execution_timeout},
            )
        for queue in list(self._links) + list(self._waiters):
            self.wake(queue)

    async def _renew(self, now: float) -> None:
        """Keep this process's workers' names, and publish its HTTP claims per queue."""
        for worker in list(self._workers.values()):
            if not await self._lease(worker, now):
                log.warning("worker %s on %s lost its name to another process", worker.name, worker.queue)
        http: dict[str, dict[str, list[str]]] = {}
        for execution_id, (queue, name) in self._claimed.items():
            http.setdefault(queue, {}).setdefault(name, []).append(execution_id)
        for queue in set(http) | set(self._waiters) | self._claim_queues:
            key = f"{CLAIMS_LEASE}{queue}:{self.core.process_id}"
            waiting = len(self._waiters.get(queue, []))
            if not waiting and not http.get(queue):
                await self.core.store.release_lease(key, self.core.process_id)
                self._claim_queues.discard(queue)
                continue
            self._claim_queues.add(queue)
            data = {"queue": queue, "waiting": waiting, "claimed": http.get(queue, {})}
            await self.core.store.acquire_lease(key, self.core.process_id, data, now + LEASE_SECONDS, now)

    async def _fail(self, execution_id: str, error_type: str, message: str, details: dict[str, Any]) -> None:
        data = {"error_type": error_type, "message": message, "details": details}
        try:
            await self.core.publish(execution_id, [PublishItem("error", data)])
        except HeraldError as exc:
            if exc.code is not ErrorCode.STREAM_CLOSED:  # already ended: nothing to fail
                raise

    # --- the dashboard's view -------------------------------------------------------------
    async def describe(self) -> list[dict[str, Any]]:
        """Each queue: pending count, its workers on every process, waiting HTTP claims:
        this process's as they are now, the others' from the leases they keep in the
        store (renewed every few seconds)."""
        now, me = time.time(), self.core.process_id
        counts = await self.core.store.pending_counts()
        workers: dict[str, list[dict[str, Any]]] = {}
        waiting: dict[str, int] = {}
        http: dict[str, dict[str, list[str]]] = {}
        for lease in await self.core.store.leases(WORKER_LEASE, now):
            if lease["holder"] != me:
                workers.setdefault(lease["queue"], []).append(lease)
        for lease in await self.core.store.leases(CLAIMS_LEASE, now):
            if lease["holder"] != me:
                queue = lease["queue"]
                waiting[queue] = waiting.get(queue, 0) + lease["waiting"]
                for name, held in lease["claimed"].items():
                    http.setdefault(queue, {}).setdefault(name, []).extend(held)
        for queue, local in self._links.items():
            for worker in local.values():
                entry = {"name": worker.name, "since": worker.since, "capacity": worker.capacity}
                workers.setdefault(queue, []).append({**entry, "executions": sorted(worker.held)})
        for queue, waiters in self._waiters.items():
            waiting[queue] = waiting.get(queue, 0) + len(waiters)
        for execution_id, (queue, name) in self._claimed.items():
            http.setdefault(queue, {}).setdefault(name, []).append(execution_id)
        out = []
        for queue in sorted(set(counts) | set(workers) | set(waiting) | set(http)):
            listed: list[dict[str, Any]] = [
                {
                    "name": w["name"],
                    "transport": TransportName.WEBSOCKET.value,
                    "since": rfc3339(w["since"]),
                    "capacity": w.get("capacity"),
                    "executions": w.get("executions", []),
                }
                for w in sorted(workers.get(queue, []), key=lambda w: w["since"])
            ]
            for name, held in sorted(http.get(queue, {}).items()):
                listed.append(
                    {"name": name, "transport": "http", "since": None, "capacity": None, "executions": sorted(held)}
                )
            out.append(
                {
                    "name": queue,
                    "pending": counts.get(queue, 0),
                    "workers": listed,
                    "waiting_claims": waiting.get(queue, 0),
                }
            )
        return out


def _end_reason(event: Event) -> str:
    """Why an execution ended, as the worker's cancel message says it."""
    data = event.data if isinstance(event.data, dict) else {}
    if event.event == "cancelled":
        return str(data.get("reason") or "cancelled")
    if event.event == "error":
        return str(data.get("error_type") or "error")
    return event.event
