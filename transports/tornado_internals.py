"""Everything in Herald that touches Tornado's private internals, in one file.

Four reasons. Three are measured (docs/performance.md): a fan-out writes the same bytes
to thousands of sockets, and Tornado's public write path costs a Future, a buffer
append and a callback per write (``FastWriter`` sends straight to the socket when
nothing is queued); a held connection keeps Tornado's request objects for hours,
of which the header maps and parsed query (a token in it, too) can go once they were
read (``shed_handshake``, ``shed_arguments``); and a long-poll is one whole request per
answer, which Tornado's HTTP/1 connection makes cost more than the rest of the poll, so
``transports.poll_server`` reads polls itself and lends every other request's socket to
Tornado and takes it back (``lend_to_tornado``, ``LendingConnection``). The fourth is
RFC 6455: Tornado's server handles a client's unmasked frames, which the RFC says must
close the connection (``ClientFramesMasked``). If a Tornado upgrade moves any of these
attributes, this is the file to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import tornado.web
import tornado.websocket
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.httputil import HTTPHeaders, HTTPServerConnectionDelegate, HTTPServerRequest, _normalize_header
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError, UnsatisfiableReadError
from tornado.log import gen_log

from core.closecodes import CloseCode


class FastWriter:
    """Writes bytes to a connection's socket directly when Tornado has nothing queued
    for it, and through ``IOStream.write`` otherwise (so order is kept).

    This is what makes a fan-out cheap: no per-write Future, no buffer append, no
    callback per subscriber on the common path. A connection whose unsent bytes exceed
    ``limit`` is slow: ``write`` returns False and the caller disconnects it. The test
    is on what is *already* waiting: one batch of any size may be queued behind a
    reader that keeps up (a 1,000-event publish can exceed ``limit`` by itself), so the
    most a connection holds is ``limit`` plus one batch. ``IOStream.write``'s Future
    retrieves its own exception, so a write to a peer that reset logs nothing.
    """

    __slots__ = ("buffer", "limit", "send", "stream")

    def __init__(self, stream: IOStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        # Tornado keeps one buffer object for the stream's life.
        self.buffer: Any = stream._write_buffer  # noqa: SLF001 - see the module docstring
        # TLS streams must go through the SSL layer: a buffer that never looks empty
        # sends everything through ``queue``.
        sock: socket.socket | None = None if isinstance(stream, SSLIOStream) else stream.socket
        self.send = sock.send if sock is not None else _never_sent
        if sock is None:
            self.buffer = _ALWAYS_BUSY

    def write(self, data: bytes) -> bool:
        """Send now if Tornado has nothing queued, else queue behind it; False when the
        connection is too slow (the caller then disconnects it)."""
        if not self.buffer._size:  # noqa: SLF001 - see the module docstring
            try:
                sent = self.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.stream.close()  # its close callback ends the session
                return True
            if sent == len(data):
                return True
            data = data[sent:]
        return self.queue(data)

    def queue(self, data: bytes) -> bool:
        """Append behind Tornado's buffer (it flushes when the socket drains)."""
        stream = self.stream
        buffered = stream._write_buffer  # noqa: SLF001 - see the module docstring
        if buffered is None or stream.closed():
            return True
        if len(buffered) > self.limit:
            return False
        with contextlib.suppress(StreamClosedError):
            stream.write(data)
        return True

    def pending(self) -> int:
        """Bytes queued in Tornado's buffer, not yet taken by the socket."""
        buffered = self.stream._write_buffer  # noqa: SLF001 - see the module docstring
        return 0 if buffered is None else len(buffered)


class _Busy:
    """Stands in for the write buffer of a TLS stream: never empty."""

    __slots__ = ()
    _size = 1


_ALWAYS_BUSY = _Busy()


def _never_sent(data: bytes) -> int:
    return 0


class _SentHeaders(HTTPHeaders):
    """Stands in for header maps a long-lived stream holds after they went on the wire;
    any later change is a bug, so it fails loudly instead of writing into shared state."""

    def __setitem__(self, name: str, value: str) -> None:
        raise RuntimeError("these headers were already sent")

    def add(self, name: str, value: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("these headers were already sent")


SENT_HEADERS = _SentHeaders()


class PollHeaders(HTTPHeaders):
    """The header map of a request read by ``transports.poll_server``: ``get`` is one
    lookup in Tornado's normalized dict. ``HTTPHeaders`` inherits ``Mapping.get``,
    which raises and catches a ``KeyError`` for every absent header, and routing a poll
    asks for absent ones (``Upgrade``, ``Accept``) at every rule: a tenth of a poll.
    It is made empty, once per request, without ``HTTPHeaders``' ``update()`` of nothing."""

    def __init__(self) -> None:
        # What HTTPHeaders.__init__ sets (Tornado 6.5-6.6), not calling it: see the class.
        self._as_list: dict[str, list[str]] = {}
        self._combined_cache: dict[str, str] = {}

    def get(self, name: str, default: Any = None) -> Any:
        header = _normalize_header(name)
        return self[header] if header in self._as_list else default


#: Stands in for a request's parsed arguments once they were read (read-only, shared).
NO_ARGUMENTS: Mapping[str, list[bytes]] = MappingProxyType({})


def shed_arguments(request: HTTPServerRequest) -> None:
    """Drop a request's parsed query once it was read. Tornado keeps it twice
    (``query_arguments`` and a deep copy in ``arguments``), and a token in the query
    (``?access_token=``, what proxies and the shared bench use) is ~250 bytes in each:
    ~1.5-2 KB per held long-poll or stream. The token also leaves memory."""
    request.query_arguments = request.arguments = NO_ARGUMENTS  # type: ignore[assignment]
    request.body_arguments = request.files = NO_ARGUMENTS  # type: ignore[assignment]
    request.__dict__.pop("_cookies", None)  # parsed on demand again, from the headers


def break_cycles(handler: tornado.web.RequestHandler) -> None:
    """What ``RequestHandler.finish`` does last, for a handler whose socket Herald took
    and that is never finished: drop the handler's UI namespace, which refers back to
    the handler, so that it is freed by reference counting at once."""
    handler._break_cycles()  # noqa: SLF001 - Tornado's own cycle breaker, no public name


def shed_handshake(handler: tornado.web.RequestHandler) -> None:
    """Drop what a stream no longer needs once its response headers are written: the
    response header map, the request's parsed headers and arguments, and the query
    (with any token in it) from the URI it keeps. A held connection is mostly Tornado's
    own objects (~16 KB); these are 2-4 KB of it that Herald can free."""
    request = handler.request
    handler._headers = SENT_HEADERS  # noqa: SLF001 - RequestHandler has no public way
    request.headers = SENT_HEADERS
    shed_arguments(request)
    request.uri = request.path
    request.query = ""


def connection_stream(request: HTTPServerRequest) -> IOStream:
    """The IOStream under a request's HTTP/1 connection (Tornado types it as the
    abstract ``HTTPConnection``, which has none)."""
    stream: IOStream = request.connection.stream  # type: ignore[union-attr]
    return stream


class ClientFramesMasked(tornado.websocket.WebSocketProtocol13):
    """Tornado's server side of RFC 6455, closing ``1002`` on an unmasked client frame
    (section 5.1: "a server MUST close the connection upon receiving a frame that is
    not masked"); Tornado reads the mask bit and handles the frame either way.

    A frame starts with a two-byte read (``_receive_frame``); its second byte carries
    the mask bit. An unmasked frame marks the client terminated, so Tornado hands
    nothing of it, or of any later frame, to the handler; the close frame goes out
    and the connection ends."""

    _frame_begins = False

    async def _receive_frame(self) -> None:
        self._frame_begins = True
        await super()._receive_frame()

    async def _read_bytes(self, n: int) -> bytes:
        data = await super()._read_bytes(n)
        if self._frame_begins:
            self._frame_begins = False
            if not data[1] & 0x80:
                self.client_terminated = True
                self.close(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        return data


def masked_frames_protocol(
    handler: tornado.websocket.WebSocketHandler,
) -> tornado.websocket.WebSocketProtocol | None:
    """The protocol Tornado would choose for ``handler``'s upgrade, as
    ``ClientFramesMasked`` (for ``WebSocketHandler.get_websocket_protocol``)."""
    protocol = tornado.websocket.WebSocketHandler.get_websocket_protocol(handler)
    if not isinstance(protocol, tornado.websocket.WebSocketProtocol13):
        return protocol
    return ClientFramesMasked(handler, False, protocol.params)


#: What takes a socket back from Tornado between two requests (the address is the peer's).
GiveBack = Callable[[socket.socket, Any], None]


def lend_to_tornado(server: HTTPServer, sock: socket.socket, address: Any, give_back: GiveBack) -> None:
    """Serve the requests waiting on ``sock`` with Tornado (``server``'s application, its
    timeouts and limits), as its own accept path would (``HTTPServer.handle_stream``,
    with the private request context that gives the request its ``remote_ip``), until
    ``LendingConnection`` gives the socket back. Nothing was read from ``sock``: Tornado
    reads the request from its first byte."""
    stream = IOStream(sock, max_buffer_size=server.max_buffer_size, read_chunk_size=server.read_chunk_size)
    context = _HTTPRequestContext(stream, address, server.protocol, server.trusted_downstream)
    connection = LendingConnection(stream, server.conn_params, context, give_back)
    server._connections.add(connection)  # noqa: SLF001 - as handle_stream; close_all_connections reads it
    connection.start_serving(server)


class LendingConnection(HTTP1ServerConnection):
    """Tornado's HTTP/1 server connection (its request loop, copied from Tornado 6.5),
    giving its socket back after a request once nothing more was read and nothing is
    left to write: the next request (a long-poll, usually) may not be Tornado's. A
    connection that ends, is upgraded (WebSocket) or has a pipelined request waiting
    stays with Tornado as before."""

    def __init__(self, stream: IOStream, params: Any, context: Any, give_back: GiveBack) -> None:
        super().__init__(stream, params, context)
        self.give_back = give_back

    async def _server_request_loop(self, delegate: HTTPServerConnectionDelegate) -> None:
        try:
            while True:
                conn = HTTP1Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (StreamClosedError, UnsatisfiableReadError, asyncio.CancelledError):
                    return
                except Exception:  # noqa: BLE001 - as Tornado's loop: logged, and the connection ends
                    gen_log.error("Uncaught exception", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                stream = self.stream
                if not stream.closed() and not stream.writing() and not stream._read_buffer_size:  # noqa: SLF001
                    self.give_back(_detach(stream), self.context.address)  # type: ignore[attr-defined]
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


def take_socket(stream: IOStream) -> tuple[socket.socket, bytes]:
    """The socket of a stream whose HTTP exchange is over (a WebSocket once admitted, an
    SSE response once its preamble is written; nothing left to write), with the bytes
    Tornado already read from it. The stream is left closed without closing the socket:
    Tornado's own clean-up of it afterwards (the WebSocket protocol's abort) touches
    nothing Herald now owns."""
    already_read = bytes(stream._read_buffer[: stream._read_buffer_size])  # noqa: SLF001
    sock = _detach(stream)
    stream._closed = True  # noqa: SLF001 - closed for Tornado; the socket lives on
    return sock, already_read


def _detach(stream: IOStream) -> socket.socket:
    """Take a socket from an idle IOStream: its handler leaves the loop (any event of it
    already queued is cancelled with it), and the stream is never used again."""
    sock = stream.socket
    if stream._state is not None:  # noqa: SLF001 - registered with the loop
        stream.io_loop.remove_handler(sock)
        stream._state = None  # noqa: SLF001
    return sock
