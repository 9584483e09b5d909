"""The worker API (PROTOCOL.md section 6): a worker connects out over WebSocket, or
long-polls over HTTP; and the per-queue view the dashboard renders.

``GET /api/workers/connect?queue=NAME&name=WORKER`` (scope ``workers``). Server to
worker: ``{"control": "ready", ...}`` first, then ``{"op": "execute", "execution"}``,
``{"op": "cancel", "execution_id", "reason"}``, ``{"control": "ack", "execution_id",
"seq"}`` after each batch is durable, ``{"control": "error", ...}`` for a refused event,
``{"control": "pong"}``. Worker to server: ``{"op": "event", "execution_id", "event",
"data", "key?"}``, ``{"op": "ready", "capacity"}``, ``{"op": "ping"}``, ``{"op": "auth",
"token"}``. Authentication is the stream socket's (header or subprotocol), and
refusals come after the upgrade as an error control frame and a close code.

Events a worker sends in one read-loop turn (Tornado reads every frame already
buffered before it yields) are gathered and published as one ``Core.publish`` per
execution: a burst of token frames costs one store append, not one per token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import tornado.web

from core.auth import Principal, Scope, require
from core.codec import control
from core.dispatch import Dispatcher
from core.errors import ErrorCode, HeraldError, bad_request
from core.model import QUEUE_NAME, TERMINAL_EVENTS, Execution, PublishItem, validate_item
from core.service import Core
from core.session import Ops, Session, Source
from core.transport import Disconnect, TransportName
from handlers.base import ApiHandler
from transports.tornado_internals import connection_stream
from transports.websocket import HeraldSocket

log = logging.getLogger("herald.workers")
MAX_CAPACITY = 1000
MAX_CLAIM_WAIT = 60


def _queue_and_name(handler: tornado.web.RequestHandler, default_name: str | None = None) -> tuple[str, str]:
    queue = handler.get_query_argument("queue", "")
    name = handler.get_query_argument("name", "") or (default_name or "")
    if not QUEUE_NAME.match(queue):
        raise bad_request("queue must be a name of 1..64 letters, digits or _.:-")
    if not QUEUE_NAME.match(name):
        raise bad_request("name must be a worker name of 1..64 letters, digits or _.:-")
    return queue, name


class WorkerSocket(HeraldSocket):
    """One connected worker: the dispatcher's ``WorkerLink``, and the ``Ops`` of its
    session (events and capacity). Its session follows a ``WorkerDuty``: connected to
    the dispatcher while the socket lives, given back to the queue on every exit."""

    transport_name = TransportName.WORKER
    cookie_allowed = False  # workers authenticate with a bearer token, never a cookie
    refresh_scope = Scope.WORKERS

    def initialize(self, core: Core, dispatcher: Dispatcher) -> None:  # type: ignore[override]
        super().initialize(core)
        self.dispatcher = dispatcher
        self.queue = ""
        self.name = ""
        self._outbox: dict[str, list[PublishItem]] = {}
        self._flushing: asyncio.Task[None] | None = None

    async def follow(self, principal: Principal, *args: str) -> Source | None:
        require(principal, Scope.WORKERS)
        self.queue, self.name = _queue_and_name(self)
        await self.dispatcher.connect(self)  # 409 (4409) when the name is taken, before ``ready``
        return WorkerDuty(self)

    def ready(self) -> dict[str, Any]:
        return control(
            "ready",
            transport=self.transport_name.value,
            queue=self.queue,
            worker=self.name,
            heartbeat=self.core.settings.heartbeat,
        )

    def ops(self) -> Ops | None:
        return self

    # --- WorkerLink -----------------------------------------------------------------------
    def execute(self, execution: Execution) -> bool:
        return self.session is not None and self.session.send_control(
            {"op": "execute", "execution": execution.to_public()}
        )

    def cancel(self, execution_id: str, reason: str) -> None:
        if self.session is not None:
            self.session.send_control({"op": "cancel", "execution_id": execution_id, "reason": reason})

    # --- Ops: the worker's messages ---------------------------------------------------------
    def on_op(self, name: str, op: dict[str, Any]) -> None:
        if name == "event":
            self._take_event(op)
        elif name == "ready":
            capacity = op.get("capacity", 1)
            if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
                raise bad_request(f"capacity must be an integer from 1 to {MAX_CAPACITY}")
            self.dispatcher.set_capacity(self, capacity)
        else:
            raise bad_request(f"unknown op '{name}'")

    def on_refused_op(self, exc: HeraldError, op: dict[str, Any]) -> None:
        """A refused message: say so, keep the connection (its other executions go on)."""
        if op.get("op") == "event":
            self.core.metrics.publish_refused.labels(exc.code.value).inc()
        self._report(exc, op.get("execution_id"))

    def _take_event(self, op: dict[str, Any]) -> None:
        """Validate like ``POST .../events`` (strict JSON: ``Session.receive``) and
        queue it for this turn's publish. A worker's events are not charged to a
        ``--publish-rate``: it publishes only to what the dispatcher handed it, as fast
        as its model streams (docs/security.md)."""
        execution_id = op.get("execution_id")
        if not isinstance(execution_id, str):
            raise bad_request("an event needs an 'execution_id'")
        item = validate_item({k: op[k] for k in ("event", "data", "key") if k in op})
        self.core.check_size([item])
        if not self.dispatcher.holds(self, execution_id):
            raise HeraldError(
                ErrorCode.CONFLICT,
                409,
                "this worker does not hold that execution",
                {"execution_id": execution_id},
            )
        if item.event in TERMINAL_EVENTS:
            self.dispatcher.ending(self, execution_id)
        self._outbox.setdefault(execution_id, []).append(item)
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Publish what the read loop gathered, one publish per execution, until empty."""
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, {}
                await asyncio.gather(*(self._publish(eid, items) for eid, items in batch.items()))
        finally:
            self._flushing = None

    async def _publish(self, execution_id: str, items: list[PublishItem]) -> None:
        try:
            seqs = await self.core.publish(execution_id, items)
        except HeraldError as exc:
            self.core.metrics.publish_refused.labels(exc.code.value).inc()
            self._report(exc, execution_id)
            self.dispatcher.refused(self, execution_id, exc)
            return
        except Exception:
            log.exception("publishing a worker's events failed")
            self._report(HeraldError(ErrorCode.INTERNAL, 500, "internal error"), execution_id)
            return
        if self.session is not None:
            self.session.send_control(control("ack", execution_id=execution_id, seq=seqs[-1]))

    def _report(self, exc: HeraldError, execution_id: Any = None) -> None:
        """A refused message: say so, keep the connection."""
        extra = {"execution_id": execution_id} if isinstance(execution_id, str) else {}
        if self.session is not None:
            self.session.send_control(control("error", code=exc.code.value, message=exc.message, **extra))

    async def settle(self) -> None:
        """Wait for what the worker sent before it went to be published."""
        flushing = self._flushing
        if flushing is not None:
            await asyncio.gather(flushing, return_exceptions=True)


class WorkerDuty:
    """What a worker's session follows: its place among the queue's workers (taken
    when the socket signed in; given back on every exit)."""

    def __init__(self, socket: WorkerSocket) -> None:
        self.socket = socket
        self.connected = True

    async def start(self, session: Session) -> None:
        return None

    def stop(self) -> None:
        return None

    async def finish(self, disconnect: Disconnect) -> None:
        """Publish what the worker sent before it went, then give back what it held."""
        if self.connected:
            self.connected = False
            await self.socket.settle()
            await self.socket.dispatcher.disconnect(self.socket)

    def allows(self, principal: Principal) -> bool:
        return principal.has(Scope.WORKERS)


class ClaimHandler(ApiHandler):
    """``POST /api/workers/claim?queue=NAME&wait=N[&name=WORKER]``: one execution for a
    worker without WebSocket, or ``{"execution": null}`` after ``wait`` seconds. The
    worker then publishes with the ordinary ``POST .../events`` call."""

    def initialize(self, core: Core, dispatcher: Dispatcher) -> None:  # type: ignore[override]
        super().initialize(core)
        self.dispatcher = dispatcher

    async def post(self) -> None:
        require(self.principal, Scope.WORKERS)
        queue, name = _queue_and_name(self, default_name=self.principal.sub)
        wait = self.int_argument("wait", 0, 0, MAX_CLAIM_WAIT)
        execution = await self.dispatcher.claim(queue, name, wait)
        if execution is not None and connection_stream(self.request).closed():
            await self.dispatcher.unclaim(execution, name)
            return
        self.answer(200, {"execution": execution.to_public() if execution is not None else None})


class QueuesHandler(ApiHandler):
    """``GET /api/queues``: each queue's pending count and workers (docs/workers.md)."""

    def initialize(self, core: Core, dispatcher: Dispatcher) -> None:  # type: ignore[override]
        super().initialize(core)
        self.dispatcher = dispatcher

    async def get(self) -> None:
        self.answer(200, {"queues": await self.dispatcher.describe()})


def routes(core: Core, dispatcher: Dispatcher) -> list[Any]:
    """The worker routes, for ``server.make_app``; one Dispatcher per Core."""
    deps = {"core": core, "dispatcher": dispatcher}
    return [
        (r"/api/workers/connect", WorkerSocket, deps),
        (r"/api/workers/claim", ClaimHandler, deps),
        (r"/api/queues", QueuesHandler, deps),
    ]
