"""WebSocket transport: one JSON text frame per event, control frames without ``seq``.

Auth failures are reported *after* the upgrade (control ``error`` frame, then close
4401/4403), because a browser cannot read the HTTP status of a refused handshake and
would take it for a blocked network. Heartbeats come from the Core's shared timer:
a protocol ping frame each ``heartbeat`` seconds, and a connection that answered
nothing (no pong, no message) for three heartbeats is closed as dead.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket
from tornado.routing import Rule

from core.auth import PROTOCOL_NAME, Principal, may_read
from core.closecodes import CloseCode
from core.codec import Encoded, control, dumps
from core.errors import ErrorCode, HeraldError, bad_request, forbidden
from core.model import Execution
from core.stream import Core, Subscription
from transports.base import STREAM_PATH, FastWriter, HeraldRequestHandler, RequestMatches, wants_websocket

NAME = "websocket"
log = logging.getLogger("herald.websocket")


class WebSocketTransport(tornado.websocket.WebSocketHandler):
    """Follows one execution's stream over a WebSocket."""

    transport = NAME

    def initialize(self, core: Core) -> None:
        self.core = core
        self.expires_at = float("inf")
        self.principal: Principal | None = None
        self.subscription: Subscription | None = None
        self.writer: FastWriter | None = None
        self._offered: list[str] = []
        self._last_heard = time.monotonic()
        self._admitted = False

    # Reuse the HTTP side's credential and cursor parsing.
    credentials = HeraldRequestHandler.credentials
    authenticate = HeraldRequestHandler.authenticate
    cursor = HeraldRequestHandler.cursor

    def check_origin(self, origin: str) -> bool:
        # Bearer tokens (header or subprotocol) are not ambient, so any origin may
        # use them; a cookie is, so cookie-authenticated sockets are checked in open().
        return True

    def _same_origin(self) -> bool:
        """For cookie auth. Since Tornado 6.6 ``check_origin`` only consults the
        ``trusted_origins`` setting (the Origin/Host comparison runs before it), so
        the same-origin test is made here; no Origin means no browser, no CSRF."""
        origin = self.request.headers.get("Origin")
        if origin is None or urlsplit(origin).netloc.lower() == self.request.headers.get("Host", "").lower():
            return True
        return super().check_origin(origin)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        self._offered = subprotocols
        # Never echo the bearer entry: the token must not come back in a header.
        return PROTOCOL_NAME if PROTOCOL_NAME in subprotocols else None

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # frames are pre-encoded once for all subscribers

    async def open(self, execution_id: str) -> None:  # type: ignore[override]
        try:
            creds = self.credentials(self._offered)
            if creds is not None and creds.kind == "cookie" and not self._same_origin():
                raise forbidden("a cookie-authenticated WebSocket must come from this origin")
            self.principal = self.authenticate(self._offered)
            execution = await self.core.get_execution(execution_id)
            if not may_read(self.principal, execution):
                raise forbidden("this token may not read that execution")
            after = self.cursor()
            self.core.check_cursor(execution, after)
            if not self.core.admit(self):
                raise HeraldError(ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections")
            self._admitted = True
            self.set_nodelay(True)  # small frames must not wait for Nagle behind an unacked one
            self.expires_at = self.principal.exp
            assert self.ws_connection is not None
            self.writer = FastWriter(
                self.ws_connection.stream, self.core.settings.max_buffer_bytes, "ws", self._close_slow
            )
            self._send_control(control("ready", transport=NAME))
            self.subscription = self.core.follow(execution_id, after, self)
            await self.subscription.start(execution)
        except HeraldError as exc:
            self._refuse(exc)
        except Exception:
            log.exception("opening a stream failed")
            self._refuse(HeraldError(ErrorCode.INTERNAL, 500, "internal error"))

    # --- Sink -----------------------------------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        data = batch[0].ws() if len(batch) == 1 else b"".join(e.ws() for e in batch)
        writer = self.writer
        if writer is not None and not writer.write(data):
            self._close_slow()

    def send_reset(self, execution: Execution) -> None:
        self._send_control(control("reset", execution=execution.to_public()))

    def end_stream(self) -> None:
        self.close(CloseCode.NORMAL, "complete")

    # --- Connection (shared timer) ----------------------------------------------------
    def heartbeat(self, now: float) -> None:
        if now - self._last_heard > 3 * self.core.settings.heartbeat:
            self.close(CloseCode.GOING_AWAY, "heartbeat_timeout")
            return
        try:
            self.ping()
        except tornado.websocket.WebSocketClosedError:
            pass

    def going_away(self) -> None:
        self.close(CloseCode.GOING_AWAY, "server_shutdown")

    def expire(self) -> None:
        self._send_control(control("error", code="token_expired", message="the token has expired"))
        self.close(CloseCode.UNAUTHORIZED, "token_expired")

    # --- client messages ----------------------------------------------------------------
    def on_pong(self, data: bytes) -> None:
        self._last_heard = time.monotonic()

    def on_ping(self, data: bytes) -> None:
        self._last_heard = time.monotonic()

    def on_message(self, message: str | bytes) -> None:
        self._last_heard = time.monotonic()
        try:
            op = json.loads(message)
            if not isinstance(op, dict) or not isinstance(op.get("op"), str):
                raise bad_request("messages must be objects with an 'op'")
            name = op["op"]
            if name == "ping":
                self._send_control(control("pong"))
            elif name == "auth":
                self._refresh(op.get("token"))
            else:
                raise bad_request(f"unknown op '{name}'")
        except ValueError:
            self._refuse(bad_request("messages must be JSON", ErrorCode.BAD_JSON))
        except HeraldError as exc:
            self._refuse(exc)

    def _refresh(self, token: Any) -> None:
        """In-band token refresh: same ``sub``, and the stream goes on."""
        if not isinstance(token, str) or not token:
            raise bad_request("auth needs a 'token'")
        fresh = self.core.auth.decode(token)
        if self.principal is None or fresh.sub != self.principal.sub:
            raise forbidden("a refreshed token must have the same sub")
        self.principal = fresh
        self.expires_at = fresh.exp
        self._send_control(control("auth_ok", exp=int(fresh.exp)))

    # --- closing ----------------------------------------------------------------------
    def _send_control(self, message: dict[str, Any]) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        try:
            self.write_message(dumps(message))
        except tornado.websocket.WebSocketClosedError:
            pass

    def _refuse(self, exc: HeraldError) -> None:
        if exc.code is ErrorCode.TOKEN_EXPIRED:
            reason = "token_expired"
        else:
            reason = exc.code.value
        self._send_control(control("error", code=exc.code.value, message=exc.message))
        self.close(CloseCode.for_status(exc.status), reason)

    def _close_slow(self) -> None:
        """Its buffer overflowed: stop feeding it and close with 1013, so the client
        reconnects with its cursor. The close frame queues behind the unsent bytes;
        Tornado drops the socket if the client has not closed within 5 seconds."""
        log.info("closing a slow WebSocket subscriber")
        if self.subscription is not None:
            self.subscription.close()
        self.writer = None
        self.close(CloseCode.TRY_AGAIN_LATER, "slow_subscriber")

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Nothing may follow the close frame, and the client's answer (which fires
        # on_close) can take a while: leave the stream before sending it.
        if self.subscription is not None:
            self.subscription.close()
        super().close(code, reason)

    def on_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        if self._admitted:
            self.core.release(self)
            self._admitted = False


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_websocket), WebSocketTransport, {"core": core})
