"""Session: the one owner of an open connection.

Every connection Herald holds open — an execution's stream on WebSocket, SSE or
long-poll, the dashboard feed on the same three, a worker's socket — is a ``Session``
over a write-only ``Transport`` (``core.transport``). The session owns everything that
is not framing and writing bytes, as Centrifuge's ``Client`` does:

- admission and limits (through ``Sessions.open``, which counts it and may refuse it),
- the token's expiry and the in-band ``auth`` refresh,
- heartbeats (asked of the transport: protocol pings, control messages, or none),
- drain (``close(SHUTDOWN)`` from ``Sessions.drain``),
- the ``Source`` it follows (an execution's subscription, a long-poll page, the feed),
- and one exit path: ``run()``'s ``finally`` stops the source, lets it say its last
  words, closes the transport and releases the slot, whatever ended the connection.

Every write, control frames and pongs included, goes through the transport's bounded
``write``: a client that does not read is disconnected at the bound, never buffered
without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from core import jsonstrict
from core.auth import Principal, Scope
from core.codec import WS_PING, Encoded, control, frame_control, frame_events, frame_message
from core.errors import ErrorCode, HeraldError, bad_request, forbidden
from core.model import Execution
from core.transport import (
    ANSWERED,
    CLIENT_GONE,
    HEARTBEAT_TIMEOUT,
    NORMAL,
    SLOW,
    TOKEN_EXPIRED,
    Disconnect,
    Encoding,
    Heartbeat,
    Transport,
)

if TYPE_CHECKING:
    from core.sessions import Sessions

log = logging.getLogger("herald.session")

#: A pong is skipped while this much is already waiting to be sent: a client that
#: floods pings and does not read must not grow the server's memory with pongs.
PONG_BACKLOG = 64 * 1024
_PINGS = {enc: frame_control(control("ping"), enc) for enc in (Encoding.WS, Encoding.SSE, Encoding.SSE_CHUNK)}
_PONGS = {enc: frame_control(control("pong"), enc) for enc in (Encoding.WS, Encoding.SSE, Encoding.SSE_CHUNK)}


class Source(Protocol):
    """What a session follows: it delivers through the session's send methods."""

    async def start(self, session: Session) -> None:
        """Begin delivering (may read the store; raises HeraldError to refuse)."""

    def stop(self) -> None:
        """Stop delivering at once (idempotent; called on every exit path)."""

    async def finish(self, disconnect: Disconnect) -> None:
        """Last words after ``stop``: a long-poll writes its page here."""

    def allows(self, principal: Principal) -> bool:
        """Whether a refreshed token may go on following this source."""


class Ops(Protocol):
    """A connection's own client messages beyond ``ping`` and ``auth`` (the worker's)."""

    def on_op(self, name: str, op: dict[str, Any]) -> None:
        """Handle one op; raise HeraldError to refuse it."""

    def on_refused_op(self, exc: HeraldError, op: dict[str, Any]) -> None:
        """A refused op: say so (and keep the connection, or ``session.fail``)."""


class Session:
    """One open connection: its limits, clocks, source and one exit path."""

    __slots__ = (
        "_closed",
        "_disconnect",
        "_done",
        "_last_heard",
        "deadline",
        "encoding",
        "expires_at",
        "ops",
        "principal",
        "refresh_scope",
        "sessions",
        "source",
        "transport",
        "transport_name",
        "write",
        "writer",
    )

    def __init__(
        self,
        sessions: Sessions,
        transport: Transport,
        principal: Principal,
        *,
        deadline: float | None = None,
        refresh_scope: Scope | None = None,
        ops: Ops | None = None,
    ) -> None:
        self.sessions = sessions
        self.transport = transport
        self.transport_name = transport.name
        self.encoding = transport.encoding
        #: The transport's own write: the hub's fast path calls it with no layer between.
        self.write = transport.write
        #: This session as the hub's ``DirectWriter``, when it streams frames.
        self.writer: Session | None = None if transport.encoding is Encoding.PAGE else self
        self.principal = principal
        self.expires_at = principal.exp
        #: When a bounded connection (a held long-poll) is answered, epoch seconds.
        self.deadline = deadline
        self.refresh_scope = refresh_scope
        self.source: Source | None = None
        self.ops = ops
        self._last_heard = time.monotonic()
        self._closed = False
        self._disconnect = CLIENT_GONE
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- life ---------------------------------------------------------------------------
    async def run(self, source: Source | None = None) -> None:
        """The connection's life: follow ``source`` until the connection ends. The one
        exit path: whatever ended it, the source stops, says its last words, the
        transport closes and the slot is released."""
        answer_at: asyncio.TimerHandle | None = None
        try:
            if source is not None and not self._closed:
                self.source = source
                await source.start(self)
            if not self._closed:
                if self.deadline is not None:
                    # A held page is answered when its ``wait`` runs out, to the
                    # millisecond: the shared timer's second is too coarse for a poll.
                    loop = asyncio.get_running_loop()
                    answer_at = loop.call_at(loop.time() + self.deadline - time.time(), self.close, ANSWERED)
                await self._done
        except HeraldError as exc:
            self.fail(exc)
        except Exception:
            log.exception("a %s connection failed", self.transport_name.value)
            self.fail(HeraldError(ErrorCode.INTERNAL, 500, "internal error; the server log has the details"))
        finally:
            if answer_at is not None:
                answer_at.cancel()
            self.close(CLIENT_GONE)  # no-op when something else ended it
            disconnect = self._disconnect
            try:
                if self.source is not None:
                    await self.source.finish(disconnect)
            except Exception:
                log.exception("ending a %s connection failed", self.transport_name.value)
            finally:
                self.transport.close(disconnect)
                self.sessions.release(self, disconnect)
                self._let_go()

    def _let_go(self) -> None:
        """Drop what refers back to this session (it is its own hub writer; its source
        holds it), so that a finished connection is freed by reference counting at once,
        not at the next full collection of the cycle collector: under churn that garbage
        is what sets the process's memory high-water mark."""
        self.writer = None
        self.source = None
        self.ops = None

    def close(self, disconnect: Disconnect) -> None:
        """End the connection for ``disconnect``; idempotent. Delivery stops at once;
        ``run`` closes the transport and releases the slot."""
        if self._closed:
            return
        self._closed = True
        self._disconnect = disconnect
        if self.source is not None:
            self.source.stop()
        if not self._done.done():
            self._done.set_result(None)

    def fail(self, exc: HeraldError) -> None:
        """Refuse after the connection was accepted: an ``error`` control message (on a
        page transport the error answer itself), then the close code of the refusal."""
        if self._closed:
            return
        self.send_control(control("error", code=exc.code.value, message=exc.message))
        self.close(Disconnect.refusal(exc))

    # --- writing ------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Write framed bytes through the bound; a peer too slow is disconnected."""
        if self._closed:
            return False
        if self.write(data):
            return True
        self.on_slow()
        return False

    def on_slow(self) -> None:
        """More than the bound unsent: end the connection; the client resumes later."""
        log.info("closing a slow %s connection", self.transport_name.value)
        self.close(SLOW)

    def send_control(self, message: dict[str, Any]) -> bool:
        """A control message (no ``seq``); nothing on a page transport."""
        if self.encoding is Encoding.PAGE:
            return False
        return self.send(frame_control(message, self.encoding))

    def send_message(self, name: str, message: dict[str, Any]) -> bool:
        """A JSON message that is not an event (the feed's ``snapshot`` and changes);
        on SSE it is a block named ``name``."""
        if self.encoding is Encoding.PAGE:
            return False
        return self.send(frame_message(name, message, self.encoding))

    # --- the Sink of an execution's subscription -------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        self.send(frame_events(batch, self.encoding))

    def send_reset(self, execution: Execution) -> None:
        self.send_control(control("reset", execution=execution.to_public()))

    def end_stream(self) -> None:
        self.close(NORMAL)

    # --- clocks (the shared timer, through Sessions.tick) -----------------------------------
    def tick(self, wall: float, mono: float, beat: bool, interval: float) -> None:
        """Expiry, the long-poll deadline (a backstop: ``run`` keeps its own timer for
        it) and, when ``beat``, the heartbeat."""
        if self._closed:
            return
        if self.expires_at <= wall:
            self.expire()
            return
        if self.deadline is not None and self.deadline <= wall:
            self.close(ANSWERED)
            return
        if not beat:
            return
        heartbeat = self.transport.heartbeat
        if heartbeat is Heartbeat.PROTOCOL_PING:
            if mono - self._last_heard > 3 * interval:
                self.close(HEARTBEAT_TIMEOUT)
            else:
                self.send(WS_PING)
        elif heartbeat is Heartbeat.CONTROL_MESSAGE:
            self.send(_PINGS[self.encoding])

    def expire(self) -> None:
        """The token expired: streams end with ``token_expired``; a held page is
        answered with what it has (the client needs a new token for the next)."""
        if self.encoding is Encoding.PAGE:
            self.close(ANSWERED)
            return
        self.send_control(control("error", code=ErrorCode.TOKEN_EXPIRED.value, message="the token has expired"))
        self.close(TOKEN_EXPIRED)

    # --- client messages (WebSocket) ---------------------------------------------------------
    def heard(self) -> None:
        """The peer showed it is alive (any frame, a pong)."""
        self._last_heard = time.monotonic()

    def receive(self, message: str | bytes) -> None:
        """One client message: ``ping`` and ``auth`` here, the rest to ``ops``."""
        self._last_heard = time.monotonic()
        if self._closed:
            return
        try:
            op = jsonstrict.loads(message)
        except HeraldError as exc:
            self.fail(exc)
            return
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            self.fail(bad_request("messages must be objects with an 'op'"))
            return
        name = op["op"]
        try:
            if name == "ping":
                self.pong()
            elif name == "auth":
                self.refresh(op.get("token"))
            elif self.ops is not None:
                self.ops.on_op(name, op)
            else:
                raise bad_request(f"unknown op '{name}'")
        except HeraldError as exc:
            if self.ops is not None:
                self.ops.on_refused_op(exc, op)
            else:
                self.fail(exc)

    def pong(self) -> None:
        """Answer ``{"op": "ping"}``, unless the peer is not reading what it was sent."""
        if self.transport.pending_bytes() > PONG_BACKLOG:
            return
        self.send(_PONGS[self.encoding])

    def refresh(self, token: Any) -> None:
        """In-band token refresh: same ``sub``, still allowed to follow what this
        connection follows (and to hold ``refresh_scope``); the connection goes on."""
        if not isinstance(token, str) or not token:
            raise bad_request("auth needs a 'token'")
        fresh = self.sessions.auth.decode(token)
        if fresh.sub != self.principal.sub:
            raise forbidden("a refreshed token must have the same sub")
        if self.refresh_scope is not None and not fresh.has(self.refresh_scope):
            raise forbidden(f"a refreshed token must keep the '{self.refresh_scope.value}' scope")
        if self.source is not None and not self.source.allows(fresh):
            raise forbidden("the refreshed token may not read what this connection follows")
        self.principal = fresh
        self.expires_at = fresh.exp
        self.send_control(control("auth_ok", exp=int(fresh.exp)))
