"""HeraldSocket: what every Herald WebSocket shares — the stream transport, the
dashboard feed and the worker socket.

Authentication happens *after* the upgrade (a browser cannot read the HTTP status of a
refused handshake and would take it for a blocked network): a refusal is an ``error``
control message, then a close code. The JWT rides in the ``Authorization`` header or in
the subprotocol list (``herald.bearer.<jwt>``, never echoed back); a cookie counts only
from this server's own origin. The Core's shared timer drives heartbeats (a protocol
ping each ``heartbeat`` seconds; a peer silent for three is closed) and token expiry;
``{"op": "ping"}`` and the in-band ``{"op": "auth"}`` refresh are answered here.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket

from core.auth import PROTOCOL_NAME, Principal, Scope, require
from core.closecodes import CloseCode
from core.codec import control, dumps
from core.errors import ErrorCode, HeraldError, bad_request, forbidden
from core.stream import Core
from transports.base import HeraldRequestHandler, shed_handshake


class HeraldSocket(tornado.websocket.WebSocketHandler):
    """Base of Herald's WebSocket handlers; subclasses write ``open`` and the ops
    of their own protocol (``on_op``)."""

    transport = "websocket"
    #: Whether the ``herald_token`` cookie may authenticate this socket.
    cookie_allowed = True
    #: A scope a refreshed token must still hold (beyond the same ``sub``).
    refresh_scope: Scope | None = None

    def initialize(self, core: Core) -> None:
        self.core = core
        self.expires_at = float("inf")
        self.principal: Principal | None = None
        self._offered: list[str] = []
        self._last_heard = time.monotonic()
        self._admitted = False

    # The HTTP side's credential and cursor parsing, unchanged.
    credentials = HeraldRequestHandler.credentials
    authenticate = HeraldRequestHandler.authenticate
    cursor = HeraldRequestHandler.cursor

    def check_origin(self, origin: str) -> bool:
        # Bearer tokens (header or subprotocol) are not ambient, so any origin may use
        # them; a cookie is, so cookie-authenticated sockets are checked in sign_in().
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
        return None  # frames are small, or pre-encoded once for all subscribers

    # --- opening ----------------------------------------------------------------------
    def sign_in(self) -> Principal:
        """The caller's Principal, with the cookie rules applied; raises HeraldError."""
        creds = self.credentials(self._offered)
        if creds is not None and creds.kind == "cookie":
            if not self.cookie_allowed:
                raise forbidden("this socket takes a bearer token, not a cookie")
            if not self._same_origin():
                raise forbidden("a cookie-authenticated WebSocket must come from this origin")
        self.principal = self.authenticate(self._offered)
        return self.principal

    def admit(self) -> None:
        """Count the connection against the limit (429 → 4429) and start its clocks."""
        if not self.core.admit(self):
            raise HeraldError(ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections")
        self._admitted = True
        assert self.principal is not None
        self.expires_at = self.principal.exp
        self.set_nodelay(True)  # small frames must not wait for Nagle behind an unacked one
        shed_handshake(self)  # the 101 answer is sent; nothing reads these again

    # --- sending ----------------------------------------------------------------------
    def send_control(self, message: dict[str, Any]) -> bool:
        """Send one JSON message; False when the socket is closing or closed."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return False
        try:
            self.write_message(dumps(message))
        except tornado.websocket.WebSocketClosedError:
            return False
        return True

    def refuse(self, exc: HeraldError) -> None:
        """An ``error`` control message, then the close code of the refusal."""
        reason = "token_expired" if exc.code is ErrorCode.TOKEN_EXPIRED else exc.code.value
        self.send_control(control("error", code=exc.code.value, message=exc.message))
        self.close(CloseCode.for_status(exc.status), reason)

    # --- client messages ----------------------------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        self._last_heard = time.monotonic()
        try:
            op = json.loads(message)
        except ValueError:
            self.refuse(bad_request("messages must be JSON", ErrorCode.BAD_JSON))
            return
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            self.refuse(bad_request("messages must be objects with an 'op'"))
            return
        name = op["op"]
        try:
            if name == "ping":
                self.send_control(control("pong"))
            elif name == "auth":
                self.refresh(op.get("token"))
            else:
                self.on_op(name, op)
        except HeraldError as exc:
            self.on_refused_op(exc, op)

    def on_op(self, name: str, op: dict[str, Any]) -> None:
        """A subclass's own ops; the default knows none."""
        raise bad_request(f"unknown op '{name}'")

    def on_refused_op(self, exc: HeraldError, op: dict[str, Any]) -> None:
        """A refused op closes the socket by default (a worker's socket stays open)."""
        self.refuse(exc)

    def refresh(self, token: Any) -> None:
        """In-band token refresh: same ``sub`` (and scope), and the socket goes on."""
        if not isinstance(token, str) or not token:
            raise bad_request("auth needs a 'token'")
        fresh = self.core.auth.decode(token)
        if self.principal is None or fresh.sub != self.principal.sub:
            raise forbidden("a refreshed token must have the same sub")
        if self.refresh_scope is not None:
            require(fresh, self.refresh_scope)
        self.principal = fresh
        self.expires_at = fresh.exp
        self.send_control(control("auth_ok", exp=int(fresh.exp)))

    def on_pong(self, data: bytes) -> None:
        self._last_heard = time.monotonic()

    def on_ping(self, data: bytes) -> None:
        self._last_heard = time.monotonic()

    # --- Connection (the Core's shared timer) ---------------------------------------------
    def heartbeat(self, now: float) -> None:
        if now - self._last_heard > 3 * self.core.settings.heartbeat:
            self.close(CloseCode.GOING_AWAY, "heartbeat_timeout")
            return
        try:
            self.ping()
        except tornado.websocket.WebSocketClosedError:
            pass

    def expire(self) -> None:
        self.send_control(control("error", code="token_expired", message="the token has expired"))
        self.close(CloseCode.UNAUTHORIZED, "token_expired")

    def going_away(self) -> None:
        self.close(CloseCode.GOING_AWAY, "server_shutdown")

    def on_close(self) -> None:
        if self._admitted:
            self.core.release(self)
            self._admitted = False
