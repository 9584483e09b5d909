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

Once a stream's socket is open and admitted, Tornado's part is over: ``OwnedWebSocket``
takes the socket (``transports.owned_socket``) and reads the client's frames itself
(``ClientFrames``, RFC 6455 section 5, sans I/O), so a held WebSocket keeps neither the
request handler nor Tornado's stream and protocol objects (docs/performance.md, issue
18). A worker's socket stays Tornado's: the dispatcher talks to its handler.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import tornado.websocket
from tornado.routing import Rule

from core.auth import PROTOCOL_NAME, Principal, Scope
from core.closecodes import CloseCode
from core.codec import control, dumps, ws_frame
from core.errors import HeraldError, forbidden
from core.multiplex import MultiStream
from core.service import Core
from core.session import Ops, Session, Source
from core.sources import ExecutionStream
from core.transport import CLIENT_GONE, Disconnect, Encoding, Heartbeat, TransportName
from transports.access_log import log_failure
from transports.cors import origin_trusted
from transports.owned_socket import OwnedSocket
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
from transports.tornado_internals import FastWriter, masked_frames_protocol, shed_handshake, take_socket

NAME = TransportName.WEBSOCKET


class WebSocketTransport:
    """A ``Transport`` over an accepted WebSocket."""

    encoding = Encoding.WS
    heartbeat = Heartbeat.PROTOCOL_PING
    __slots__ = ("handler", "name", "write", "writer")

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


class Opcode:
    """RFC 6455 frame opcodes (section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES = (Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY)
_CONTROL_OPCODES = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)


class FrameError(Exception):
    """A client broke RFC 6455: the connection closes with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def unmask(mask: bytes, payload: bytes) -> bytes:
    """A client payload XORed with its 4-byte mask (section 5.3), as one big integer."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class ClientFrames:
    """A server's reading of client frames, sans I/O: ``feed`` the bytes as they come,
    get back each whole message (fragments joined) and each control frame, as
    ``(opcode, payload)``. Every frame must be masked (section 5.1), no extension is
    negotiated (RSV bits 0), control frames are whole and at most 125 bytes, and a
    message longer than ``max_message`` is refused (1009) before it is buffered."""

    __slots__ = ("buffer", "fragments", "fragments_opcode", "max_message")

    def __init__(self, max_message: int) -> None:
        self.buffer = b""
        self.max_message = max_message
        self.fragments: list[bytes] = []
        self.fragments_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages and control frames ``data`` completes; raises ``FrameError``."""
        buffer = self.buffer + data if self.buffer else data
        out: list[tuple[int, bytes]] = []
        at = 0
        while len(buffer) - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            head = 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if len(buffer) - at < head:
                break
            if head > 2:
                length = int.from_bytes(buffer[at + 2 : at + head], "big")
            self._check(first, second, fin, opcode, length)
            end = at + head + 4 + length
            if len(buffer) < end:
                break
            mask = buffer[at + head : at + head + 4]
            payload = unmask(mask, buffer[at + head + 4 : end])
            at = end
            message = self._frame(bool(fin), opcode, payload)
            if message is not None:
                out.append(message)
        self.buffer = buffer[at:]
        return out

    def _check(self, first: int, second: int, fin: int, opcode: int, length: int) -> None:
        if not second & 0x80:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        if first & 0x70:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "no extension was negotiated")
        if opcode in _CONTROL_OPCODES:
            if not fin or length > 125:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "control frames are whole and short")
        elif opcode not in _DATA_OPCODES:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "unknown opcode")
        elif length + sum(len(f) for f in self.fragments) > self.max_message:
            raise FrameError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode in _CONTROL_OPCODES:
            return opcode, payload
        if opcode == Opcode.CONTINUATION:
            if not self.fragments_opcode:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "a continuation of no message")
        elif self.fragments_opcode:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
        else:
            if fin:
                return opcode, payload
            self.fragments_opcode = opcode
        self.fragments.append(payload)
        if not fin:
            return None
        message = (self.fragments_opcode, b"".join(self.fragments))
        self.fragments, self.fragments_opcode = [], 0
        return message


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked control frame (payload at most 125 bytes)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str) -> bytes:
    return server_frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode()[:123])


#: Seconds the server waits for the client's close frame after sending its own.
CLOSE_WAIT = 5.0


class OwnedWebSocket:
    """A ``Transport`` over a WebSocket whose socket Herald owns after the handshake
    (see the module): frames are written straight to the socket, client frames are
    read here and handed to the session, and the closing handshake is RFC 6455's
    (close frame, then the client's, then TCP; a client that does not answer within
    ``CLOSE_WAIT`` is cut off, a slow one too: its close frame waits behind its backlog)."""

    encoding = Encoding.WS
    heartbeat = Heartbeat.PROTOCOL_PING
    __slots__ = ("close_sent", "frames", "gave_up", "life", "name", "session", "socket", "write")

    def __init__(self, handler: tornado.websocket.WebSocketHandler, name: TransportName, limit: int) -> None:
        protocol = handler.ws_connection
        assert protocol is not None and protocol.stream is not None, "an accepted WebSocket has a stream"
        sock, already_read = take_socket(protocol.stream)
        protocol.client_terminated = True  # Tornado's frame loop ends at once, and its handler with it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames must not wait for Nagle
        self.name = name
        self.socket = OwnedSocket(sock, limit, self._received, self._gone)
        self.write = self.socket.write
        self.frames = ClientFrames(handler.max_message_size)
        self.session: Session | None = None
        #: The session's ``run``, held here: the loop keeps tasks weakly.
        self.life: asyncio.Task[None] | None = None
        self.close_sent = False
        self.gave_up: asyncio.TimerHandle | None = None
        if already_read:  # frames that came with the handshake: read once the session exists
            asyncio.get_running_loop().call_soon(self._received, already_read)

    def run(self, session: Session, source: Source | None) -> None:
        """The admitted session follows ``source`` over this socket."""
        self.session = session
        self.life = asyncio.ensure_future(session.run(source))

    def pending_bytes(self) -> int:
        return self.socket.pending()

    def close(self, disconnect: Disconnect) -> None:
        """The session's last call: the close frame, then let go of the session (it
        holds this transport) so that both are freed by reference counting."""
        self._send_close(disconnect.code, disconnect.reason)
        self.session = None

    def refuse(self, exc: HeraldError) -> None:
        """Refused at admission (no session): ``error``, then the close code."""
        self.write(ws_frame(dumps(control("error", code=exc.code.value, message=exc.message)).encode()))
        self._send_close(CloseCode.for_status(exc.status), exc.code.value)

    def _send_close(self, code: int, reason: str) -> None:
        if self.close_sent:
            return
        self.close_sent = True
        self.socket.push(close_frame(code, reason))  # behind a slow client's backlog, too
        self.gave_up = asyncio.get_running_loop().call_later(CLOSE_WAIT, self.socket.abort)

    # --- the client's frames --------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except FrameError as exc:
            self._end(exc.code, exc.reason)
            return
        for opcode, payload in frames:
            if not self.socket.open:
                return
            session = self.session
            if opcode == Opcode.CLOSE:
                self._closed_by_client(payload)
                return
            if self.close_sent or session is None:
                continue  # closing: only the client's close frame matters now
            if opcode == Opcode.PING:
                session.heard()
                self.write(server_frame(Opcode.PONG, payload))
            elif opcode == Opcode.PONG:
                session.heard()
            elif opcode == Opcode.TEXT:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._end(CloseCode.INVALID_DATA, "text messages are UTF-8")
                    return
                session.receive(text)
            else:
                session.receive(payload)

    def _closed_by_client(self, payload: bytes) -> None:
        """The client's close frame: answered with the same code (unless ours went
        first), then the TCP connection ends."""
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CloseCode.NORMAL
        if not self.close_sent:
            self.close_sent = True
            self.socket.push(close_frame(code, ""))
        if self.gave_up is not None:
            self.gave_up.cancel()
        self.socket.close()
        if self.session is not None:
            self.session.close(CLIENT_GONE)

    def _end(self, code: CloseCode, reason: str) -> None:
        """A broken frame: the close frame with ``code``, then the TCP connection ends
        (nothing more of the client is read, as Tornado does)."""
        if not self.close_sent:
            self.close_sent = True
            self.socket.close(close_frame(code, reason))
        if self.session is not None:
            self.session.close(CLIENT_GONE)

    def _gone(self) -> None:
        if self.gave_up is not None:
            self.gave_up.cancel()
        if self.session is not None:
            self.session.close(CLIENT_GONE)


class HeraldSocket(tornado.websocket.WebSocketHandler):
    """Base of Herald's WebSocket handlers: sign-in after the upgrade, then a Session."""

    transport_name = NAME
    #: Whether the ``herald_token`` cookie may authenticate this socket.
    cookie_allowed = True
    #: A scope a refreshed token must keep (beyond the same ``sub``).
    refresh_scope: Scope | None = None
    #: Whether Herald takes the socket from Tornado once the connection is admitted
    #: (``OwnedWebSocket``): the execution streams, held by the thousand, do; a worker's
    #: socket, whose handler the dispatcher talks to, and the feed's stay Tornado's.
    owns_socket = False

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

    def _trusted_origin(self) -> bool:
        """For cookie auth: the CSRF rule of ``POST``s (``transports.cors``), made here
        because Tornado's ``check_origin`` runs for every socket, bearer ones included;
        no ``Origin`` means no browser page, so no cross-site hijacking."""
        origin = self.request.headers.get("Origin")
        return origin is None or origin_trusted(origin, self.request.headers.get("Host", ""), self.core.settings)

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
            if not self._trusted_origin():
                raise forbidden("a cookie-authenticated WebSocket must come from this origin or an allowed one")
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
        except HeraldError as exc:
            self.refuse(exc)
            return
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        if self.owns_socket and stream is not None and not stream.closed() and not stream.writing():
            await self.hand_over(principal, source)
            return
        try:
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
        self._life.add_done_callback(self._ended)

    def _ended(self, life: asyncio.Task[None]) -> None:
        """The session is over: let go of it (it holds this handler through its
        transport), so that both are freed by reference counting at once."""
        self.session = None

    async def hand_over(self, principal: Principal, source: Source | None) -> None:
        """Admit the connection on a socket Herald owns from now on (``OwnedWebSocket``);
        this handler, and Tornado's objects under it, end when ``open`` returns."""
        transport = OwnedWebSocket(self, self.transport_name, self.core.settings.max_buffer_bytes)
        try:
            session = self.core.sessions.open(transport, principal, refresh_scope=self.refresh_scope, ops=self.ops())
        except HeraldError as exc:
            if source is not None:  # prepared but not admitted: undo what it took
                await source.finish(Disconnect.refusal(exc))
            self.core.sessions.refused(self.transport_name.value, exc.code.value)
            transport.refuse(exc)
            return
        session.send_control(self.ready())
        transport.run(session, source)

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
    owns_socket = True

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
    owns_socket = True

    async def follow(self, principal: Principal, *args: str) -> Source | None:
        requested = stream_cursors(self.request, required=False)
        self.multiplex = MultiStream(self.core, requested, closes_when_empty=False)
        return self.multiplex

    def ops(self) -> Ops | None:
        return self.multiplex


def streams_rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAMS_PATH, wants_websocket), StreamsSocket, {"core": core})
