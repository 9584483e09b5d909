"""Several executions' streams over one connection (``/api/streams``).

A browser opens at most six HTTP/1.1 connections per host, so with SSE or long-poll
the seventh tab that follows an execution starves. One connection therefore carries
the streams of up to ``MAX_STREAMS`` executions: ``MultiStream`` on WebSocket and SSE,
``MultiPage`` for a long-poll. Each followed execution is an ordinary ``Subscription``
(the same cursor rules, the same exactly-once delivery as the single-stream URL)
whose sink is a small per-execution adapter under the one ``Session``:

- a ``StreamLeg`` frames events with the session's encoding and writes them through
  the session; its ``writer`` is the session itself, so the hub's fan-out fast path
  (``Subscription.take_fast`` and the bytes shared per encoding) works for
  multiplexed subscribers too: the envelope already names the execution, so the
  shared bytes are the same as a single stream's;
- a ``PageLeg`` gathers one long-poll answer's share of one execution.

Per-execution refusals (``not_found``, ``forbidden``, ``cursor_out_of_range``) and
ends never close the connection: they are reported with the ``execution_id`` and the
other executions go on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from core.auth import Principal, may_read
from core.codec import Encoded, control, dumps, frame_events
from core.errors import ErrorCode, HeraldError, StoreUnavailable, bad_request, store_unavailable
from core.model import Execution
from core.subscription import CATCH_UP_PAGE, DirectWriter, Subscription
from core.transport import ANSWERED, NORMAL, Disconnect, TransportName

if TYPE_CHECKING:
    from core.service import Core
    from core.session import Session

log = logging.getLogger("herald.multiplex")

#: Executions one connection may follow at once (more is a ``400``).
MAX_STREAMS = 100


def too_many(execution_id: str | None = None) -> HeraldError:
    """The refusal for a connection past ``MAX_STREAMS`` executions."""
    details: dict[str, Any] = {"max_streams": MAX_STREAMS}
    if execution_id is not None:
        details["execution_id"] = execution_id
    return bad_request(f"one connection follows at most {MAX_STREAMS} executions", **details)


def error_fields(exc: HeraldError) -> dict[str, Any]:
    """What a per-execution refusal says: its code, message and details."""
    fields: dict[str, Any] = {"code": exc.code.value, "message": exc.message}
    if exc.details:
        fields["details"] = exc.details
    return fields


def as_refusal(exc: Exception) -> HeraldError:
    """A failure while following one execution, as the error reported for it."""
    if isinstance(exc, HeraldError):
        return exc
    if isinstance(exc, StoreUnavailable):
        return store_unavailable()
    log.error("following an execution failed", exc_info=exc)
    return HeraldError(ErrorCode.INTERNAL, 500, "internal error; the server log has the details")


class StreamLeg:
    """One execution's share of a multiplexed stream: the ``Sink`` of its
    ``Subscription``, writing through the connection's session."""

    __slots__ = ("execution", "owner", "session", "subscription", "transport_name", "writer")

    def __init__(self, owner: MultiStream, session: Session, execution: Execution) -> None:
        self.owner = owner
        self.session = session
        self.execution = execution
        self.transport_name = session.transport_name.value
        #: The session itself: the hub writes this execution's live batches straight to it.
        self.writer: DirectWriter | None = session.writer
        self.subscription: Subscription | None = None

    def send_events(self, batch: list[Encoded]) -> None:
        self.session.send(frame_events(batch, self.session.encoding))

    def send_reset(self, execution: Execution) -> None:
        self.session.send_control(control("reset", execution_id=execution.id, execution=execution.to_public()))

    def end_stream(self) -> None:
        """The terminal event was written: this execution ends, the connection goes on."""
        self.owner.ended(self)

    def close(self) -> None:
        subscription, self.subscription = self.subscription, None  # it refers back here
        if subscription is not None:
            subscription.close()


class MultiStream:
    """The executions a WebSocket or SSE connection follows, and, on a WebSocket, the
    ``Ops`` that change them: ``{"op": "subscribe", "execution_id", "after"}`` and
    ``{"op": "unsubscribe", "execution_id"}``.

    ``requested`` is the set named in the URL (``s=ID:AFTER``). A connection opened
    with a set only (SSE: ``closes_when_empty``) ends normally once every execution in
    it has ended or was refused; a WebSocket stays open for further subscriptions.
    """

    def __init__(self, core: Core, requested: dict[str, int], *, closes_when_empty: bool) -> None:
        self.core = core
        self.requested = requested
        self.closes_when_empty = closes_when_empty
        self.session: Session | None = None
        self.legs: dict[str, StreamLeg] = {}
        #: Subscriptions being authorised, by execution; an unsubscribe cancels one.
        self.pending: dict[str, asyncio.Task[None]] = {}
        self._started = asyncio.Event()
        self._opening = True  # the URL's set is being opened: not empty yet
        self._stopped = False

    # --- Source ---------------------------------------------------------------------
    async def start(self, session: Session) -> None:
        self.session = session
        self._started.set()
        await asyncio.gather(*(self._subscribe(eid, after) for eid, after in self.requested.items()))
        self._opening = False
        self._end_if_empty()

    def stop(self) -> None:
        self._stopped = True
        for task in self.pending.values():
            task.cancel()
        self.pending.clear()
        for leg in self.legs.values():
            leg.close()
        self.legs.clear()

    async def finish(self, disconnect: Disconnect) -> None:
        return None

    def allows(self, principal: Principal) -> bool:
        """A refreshed token must still read every execution this connection follows."""
        return all(may_read(principal, leg.execution) for leg in self.legs.values())

    # --- Ops (WebSocket) ----------------------------------------------------------------
    def on_op(self, name: str, op: dict[str, Any]) -> None:
        if name == "subscribe":
            execution_id = op_execution_id(op)
            after = op.get("after", 0)
            if isinstance(after, bool) or not isinstance(after, int) or after < 0:
                raise bad_request(
                    "after must be a non-negative integer", ErrorCode.CURSOR_OUT_OF_RANGE, execution_id=execution_id
                )
            known = execution_id in self.legs or execution_id in self.pending
            if not known and len(self.legs) + len(self.pending) >= MAX_STREAMS:
                raise too_many(execution_id)
            self._cancel_pending(execution_id)
            task = asyncio.ensure_future(self._subscribe(execution_id, after))
            if not task.done():
                self.pending[execution_id] = task
        elif name == "unsubscribe":
            execution_id = op_execution_id(op)
            self._cancel_pending(execution_id)
            leg = self.legs.pop(execution_id, None)
            if leg is not None:
                leg.close()
            if self.session is not None:
                self.session.send_control(control("unsubscribed", execution_id=execution_id))
        else:
            raise bad_request(f"unknown op '{name}'")

    def on_refused_op(self, exc: HeraldError, op: dict[str, Any]) -> None:
        """A refused subscribe or unsubscribe is an ``error`` for that execution and the
        connection goes on; anything else (an unknown op) ends it, as on a single stream."""
        if self.session is None:
            return
        if op.get("op") in ("subscribe", "unsubscribe"):
            execution_id = op.get("execution_id")
            extra = {"execution_id": execution_id} if isinstance(execution_id, str) else {}
            self.session.send_control(control("error", **extra, **error_fields(exc)))
        else:
            self.session.fail(exc)

    # --- following one execution ------------------------------------------------------------
    async def _subscribe(self, execution_id: str, after: int) -> None:
        try:
            await self._started.wait()  # an op may come in before ``start`` ran
            session = self.session
            assert session is not None, "started sessions have a session"
            try:
                execution = await self.core.authorize_follow(session.principal, execution_id, after)
            except Exception as exc:  # noqa: BLE001 - each refusal is reported for its execution
                self.refused(execution_id, as_refusal(exc))
                return
            if self._stopped or session.closed:
                return
            old = self.legs.pop(execution_id, None)
            if old is not None:  # subscribed again: from the new cursor
                old.close()
            leg = self.legs[execution_id] = StreamLeg(self, session, execution)
            session.send_control(control("subscribed", execution_id=execution_id))
            subscription = leg.subscription = self.core.follow(execution_id, after, leg)
            try:
                await subscription.start(execution)
            except Exception as exc:  # noqa: BLE001 - as above
                if self.legs.get(execution_id) is leg:
                    del self.legs[execution_id]
                leg.close()
                self.refused(execution_id, as_refusal(exc))
        finally:
            if self.pending.get(execution_id) is asyncio.current_task():
                del self.pending[execution_id]

    def _cancel_pending(self, execution_id: str) -> None:
        task = self.pending.pop(execution_id, None)
        if task is not None:
            task.cancel()

    def refused(self, execution_id: str, exc: HeraldError) -> None:
        """One execution refused: an ``error`` carrying its id; the others go on."""
        if self.session is not None and not self._stopped:
            self.session.send_control(control("error", execution_id=execution_id, **error_fields(exc)))
            self._end_if_empty()

    def ended(self, leg: StreamLeg) -> None:
        """An execution's terminal event (or reset to a finished document) was sent."""
        execution_id = leg.execution.id
        if self.legs.get(execution_id) is leg:
            del self.legs[execution_id]
        if not self._stopped:
            leg.session.send_control(control("ended", execution_id=execution_id))
            self._end_if_empty()

    def _end_if_empty(self) -> None:
        session = self.session
        if not self.closes_when_empty or session is None or self._opening or self._stopped:
            return
        if not self.legs and not self.pending:
            session.close(NORMAL)


def op_execution_id(op: dict[str, Any]) -> str:
    """The ``execution_id`` of a subscribe/unsubscribe op; 400 when missing."""
    execution_id = op.get("execution_id")
    if not isinstance(execution_id, str) or not execution_id:
        raise bad_request("the op needs an 'execution_id'")
    return execution_id


class PageLeg:
    """One execution's share of a multiplexed long-poll answer: the sink of its
    subscription, gathering events (up to ``limit``), a reset, or its end."""

    transport_name = TransportName.LONGPOLL.value
    writer: DirectWriter | None = None
    __slots__ = ("after", "ended", "events", "execution", "page", "reset", "subscription")

    def __init__(self, page: MultiPage, execution: Execution, after: int) -> None:
        self.page = page
        self.execution = execution
        self.after = after
        self.events: list[Encoded] = []
        self.reset: dict[str, Any] | None = None
        self.ended = False
        self.subscription: Subscription | None = None

    @property
    def cursor(self) -> int:
        """Where this execution stands after the answer: the client's next ``after``."""
        if self.events:
            return self.events[-1].seq
        if self.reset is not None:
            return int(self.reset["last_seq"])
        return self.after

    def send_events(self, batch: list[Encoded]) -> None:
        room = self.page.limit - len(self.events)
        if room > 0:
            self.events.extend(batch[:room])
        if len(self.events) >= self.page.limit:
            self.close()  # its share is full: stop the catch-up before it reads the rest
            self.page.has_news(live=False)
            return
        subscription = self.subscription
        self.page.has_news(live=subscription is not None and subscription.live)

    def send_reset(self, execution: Execution) -> None:
        self.reset = execution.to_public()
        self.page.has_news(live=False)

    def end_stream(self) -> None:
        # Ended only if the terminal event made it into this answer (or was before it).
        if not self.events or self.events[-1].terminal:
            self.ended = True
        self.page.has_news(live=False)

    def close(self) -> None:
        subscription, self.subscription = self.subscription, None  # it refers back here
        if subscription is not None:
            subscription.close()


class MultiPage:
    """One long-poll answer for several executions: ``{"events", "cursors", "ended",
    "resets", "errors"}``, answered as soon as any of them has something (an event, a
    reset, its end, a refusal), or, after ``wait``, with nothing. Answers to live
    events go through ``PageAnswers`` like a single execution's page, so that under
    load events published together share one answer."""

    def __init__(self, core: Core, requested: dict[str, int], limit: int = CATCH_UP_PAGE) -> None:
        self.core = core
        self.requested = requested
        self.limit = limit
        self.legs: dict[str, PageLeg] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.session: Session | None = None
        self._starting = True
        self._news = False
        self._stopped = False

    async def start(self, session: Session) -> None:
        self.session = session
        await asyncio.gather(*(self._open(eid, after) for eid, after in self.requested.items()))
        self._starting = False
        # Catch-ups answer together, once every execution had its turn; a plain page
        # (no ``wait``) answers what there is.
        if self._news or self.errors or session.deadline is None:
            self._answer()

    async def _open(self, execution_id: str, after: int) -> None:
        session = self.session
        assert session is not None, "started pages have a session"
        try:
            execution = await self.core.authorize_follow(session.principal, execution_id, after)
            if self._stopped:
                return
            leg = self.legs[execution_id] = PageLeg(self, execution, after)
            leg.subscription = self.core.follow(execution_id, after, leg, limit=self.limit)
            await leg.subscription.start(execution)
        except Exception as exc:  # noqa: BLE001 - each refusal is reported for its execution
            refused = self.legs.pop(execution_id, None)
            if refused is not None:
                refused.close()
            self.errors[execution_id] = error_fields(as_refusal(exc))
            if not self._starting:
                self._answer()

    def has_news(self, *, live: bool) -> None:
        """A leg has something to answer with: now, or (a live event under load) soon."""
        self._news = True
        if self._starting:
            return
        if live:
            self.core.page_answers.soon(self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        if self.session is not None:
            self.session.close(ANSWERED)

    def stop(self) -> None:
        self._stopped = True
        for leg in self.legs.values():
            leg.close()

    async def finish(self, disconnect: Disconnect) -> None:
        """Write the answer, unless the connection ended in an error (rendered by the
        transport) or the client left."""
        session = self.session
        try:
            if session is None or disconnect.error is not None or disconnect.outcome == "client":
                return
            session.write(self.body())  # the one answer
        finally:
            self.legs.clear()  # each refers back here: freed by reference counting, not the collector

    def body(self) -> bytes:
        """The answer, splicing the pre-encoded envelopes (in the order the executions
        were named; each execution's events in seq order)."""
        legs = [self.legs[eid] for eid in self.requested if eid in self.legs]
        events = b",".join(e.json_bytes() for leg in legs for e in leg.events)
        rest = {
            "cursors": {leg.execution.id: leg.cursor for leg in legs},
            "ended": [leg.execution.id for leg in legs if leg.ended],
            "resets": {leg.execution.id: leg.reset for leg in legs if leg.reset is not None},
            "errors": self.errors,
        }
        return b'{"events":[' + events + b"]," + dumps(rest)[1:].encode()

    def allows(self, principal: Principal) -> bool:
        return all(may_read(principal, leg.execution) for leg in self.legs.values())
