"""WebSocket transport: one JSON text frame per event, control frames without ``seq``.

``WebSocketTransport`` is the write side a ``Session`` owns: frames pre-encoded by
``core.codec`` written below ``write_message`` (``FastWriter``), the close frame of a
``Disconnect``. ``HeraldSocket`` is what every Herald WebSocket handler shares (the
stream's, the dashboard feed's, the worker's): authentication *after* the upgrade (a
browser cannot read the HTTP status of a refused handshake and would take it for a
blocked network), so a refusal is an ``error`` control message then a close code; the
JWT in the ``Authorization`` header or the subprotocol list (``herald.bearer.<jwt>``,
never echoed back); a cookie only from this server's own origin. A subclass says what
its connection follows (``follow``); the session does the rest.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket
from tornado.routing import Rule

from core.auth import PROTOCOL_NAME, Principal, Scope
from core.closecodes import CloseCode
from core.codec import control, dumps
from core.errors import HeraldError, forbidden
from core.multiplex import MultiStream
from core.service import Core
from core.session import Ops, Session, Source
from core.sources import ExecutionStream
from core.transport import CLIENT_GONE, Disconnect, Encoding, Heartbeat, TransportName
from transports.access_log import log_failure
from transports.request import (
    STREAM_PATH,
    STREAMS_PATH,
    RequestMatches,
    authenticate_request,
    cursor,
    request_credentials,
    stream_cursors,
    wants_websocket,
)
from transports.tornado_internals import FastWriter, masked_frames_protocol, shed_handshake

NAME = TransportName.WEBSOCKET


class WebSocketTransport:
    """A ``Transport`` over an accepted WebSocket."""

    encoding = Encoding.WS
    heartbeat = Heartbeat.PROTOCOL_PING
    __slots__ = ("name", "handler", "writer", "write")

    def __init__(self, handler: tornado.websocket.WebSocketHandler, name: TransportName, limit: int) -> None:
        connection = handler.ws_connection
        assert connection is not None and connection.stream is not None, "an accepted WebSocket has a stream"
        self.name = name
        self.handler = handler
        self.writer = FastWriter(connection.stream, limit)
        self.write = self.writer.write

    def pending_bytes(self) -> int:
        return self.writer.pending()

    def close(self, disconnect: Disconnect) -> None:
        self.handler.close(disconnect.code, disconnect.reason)


class HeraldSocket(tornado.websocket.WebSocketHandler):
    """Base of Herald's WebSocket handlers: sign-in after the upgrade, then a Session."""

    transport_name = NAME
    #: Whether the ``herald_token`` cookie may authenticate this socket.
    cookie_allowed = True
    #: A scope a refreshed token must keep (beyond the same ``sub``).
    refresh_scope: Scope | None = None

    #: What the access line names besides the request (a JSON log's fields).
    log_subject: str | None = None

    @property
    def log_transport(self) -> str:
        return self.transport_name.value

    def initialize(self, core: Core) -> None:
        self.core = core
        self.session: Session | None = None
        self._offered: list[str] = []
        self._life: asyncio.Task[None] | None = None

    def cursor(self) -> int:
        """``after``, as on the other transports."""
        return cursor(self.request)

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

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        return masked_frames_protocol(self)  # an unmasked client frame closes 1002

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log_failure(self.request, typ, value, tb)  # Tornado's own would log the raw URI and headers

    # --- opening ----------------------------------------------------------------------
    async def sign_in(self) -> Principal:
        """The caller's Principal, with the cookie rules applied; raises HeraldError."""
        creds = request_credentials(self.request, self.core.settings.cookie_name, self._offered)
        if creds is not None and creds.kind == "cookie":
            if not self.cookie_allowed:
                raise forbidden("this socket takes a bearer token, not a cookie")
            if not self._same_origin():
                raise forbidden("a cookie-authenticated WebSocket must come from this origin")
        return await authenticate_request(self.core, self.request, self._offered, stream=True)

    async def follow(self, principal: Principal, *args: str) -> Source | None:
        """What this connection follows (authorised here; raises HeraldError)."""
        raise NotImplementedError

    def ready(self) -> dict[str, Any]:
        """The ``ready`` control message this socket opens with."""
        return control("ready", transport=self.transport_name.value)

    def ops(self) -> Ops | None:
        """The socket's own client ops beyond ``ping`` and ``auth``, if any."""
        return None

    async def open(self, *args: str, **kwargs: str) -> None:
        try:
            principal = await self.sign_in()
            self.log_subject = principal.sub
            source = await self.follow(principal, *args, *kwargs.values())
            transport = WebSocketTransport(self, self.transport_name, self.core.settings.max_buffer_bytes)
            try:
                self.session = self.core.sessions.open(
                    transport, principal, refresh_scope=self.refresh_scope, ops=self.ops()
                )
            except HeraldError as exc:
                if source is not None:  # prepared but not admitted: undo what it took
                    await source.finish(Disconnect.refusal(exc))
                raise
        except HeraldError as exc:
            self.refuse(exc)
            return
        self.set_nodelay(True)  # small frames must not wait for Nagle behind an unacked one
        shed_handshake(self)  # the 101 answer is sent; nothing reads these again
        self.session.send_control(self.ready())
        self._life = asyncio.ensure_future(self.session.run(source))

    def refuse(self, exc: HeraldError) -> None:
        """Refused before a session exists: an ``error`` control message, then the close
        code of the refusal (one frame: nothing can pile up)."""
        self.core.sessions.refused(self.transport_name.value, exc.code.value)
        try:
            self.write_message(dumps(control("error", code=exc.code.value, message=exc.message)))
        except tornado.websocket.WebSocketClosedError:
            return
        self.close(CloseCode.for_status(exc.status), exc.code.value)

    # --- client messages and the end ----------------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        if self.session is not None:
            self.session.receive(message)

    def on_pong(self, data: bytes) -> None:
        if self.session is not None:
            self.session.heard()

    def on_ping(self, data: bytes) -> None:
        if self.session is not None:
            self.session.heard()

    def on_close(self) -> None:
        if self.session is not None:
            self.session.close(CLIENT_GONE)


class StreamSocket(HeraldSocket):
    """Follows one execution's stream over a WebSocket."""

    after = 0

    async def follow(self, principal: Principal, *args: str) -> Source | None:
        (execution_id,) = args
        after = self.after = self.cursor()
        execution = await self.core.authorize_follow(principal, execution_id, after)
        return ExecutionStream(self.core, execution, after)

    def ready(self) -> dict[str, Any]:
        """``ready`` with the cursor the stream starts after (as SSE's first ``id:``
        line and the long-poll page's ``next_after``): the first frame says where it is."""
        return {**super().ready(), "after": self.after}


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_websocket), StreamSocket, {"core": core})


class StreamsSocket(HeraldSocket):
    """Follows several executions over one WebSocket (``/api/streams``): the ones named
    in the URL (``s=ID:AFTER``, optional), then ``subscribe`` and ``unsubscribe`` ops."""

    multiplex: MultiStream | None = None

    async def follow(self, principal: Principal, *args: str) -> Source | None:
        requested = stream_cursors(self.request, required=False)
        self.multiplex = MultiStream(self.core, requested, closes_when_empty=False)
        return self.multiplex

    def ops(self) -> Ops | None:
        return self.multiplex


def streams_rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAMS_PATH, wants_websocket), StreamsSocket, {"core": core})
