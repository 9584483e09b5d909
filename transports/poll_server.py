"""PollServer: Herald's HTTP server. It answers long-polls itself and lends every other
request to Tornado, on the same port.

A long-poll is one whole HTTP request per answer, so what the HTTP/1 connection costs
is what long-poll costs. Profiled under steady polls (docs/performance.md, issue 18),
Tornado's connection was most of a poll: the head read through ``IOStream`` futures and
parsed in Python, a request loop coroutine step per request, the close callback's epoll
change, the answer through ``write_headers`` and a write Future. Here a connection's
socket is read directly: when a complete request head is waiting in the socket, it is
peeked at (``MSG_PEEK``: nothing is taken yet) and parsed with ``httptools``; a ``GET``
without a body that Tornado's own rules route to a long-poll (``LongPollRouter``) is
taken off the socket and served as ``transports.longpoll.Poll`` — the same
authentication, source, session, errors, CORS headers and access line as through
Tornado — and its answer goes out in one ``send``. Anything else, and any head that is
not whole in the socket yet (a slow client, whom Tornado's timeouts are for), is lent to
Tornado untouched (``tornado_internals.lend_to_tornado``), which gives the socket back
after a request with nothing more to read (``LendingConnection``): a client that reads
the execution document and then polls on one keep-alive connection has its polls
served here. WebSocket and SSE connections stay with Tornado once upgraded or streaming.

While a poll is held, the socket stays registered for reading (no epoll change per
request): an end of file is the client leaving; bytes are a pipelined request, which
waits (unread) until the answer is written. An idle keep-alive connection is closed
after ``idle_connection_timeout`` by one timer for all of them, as Tornado would.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from enum import Enum
from typing import Any

import httptools
import tornado.web
from tornado.escape import parse_qs_bytes
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, HTTPInputError, HTTPServerRequest, RequestStartLine, responses
from tornado.iostream import IOStream

from transports.cors import Header
from transports.longpoll import CONTENT_TYPE, LongPollRouter, Poll, http_date
from transports.tornado_internals import PollHeaders, lend_to_tornado

#: Longest request head read here (Tornado's default ``max_header_size``); a longer one
#: is lent to Tornado, which refuses it.
MAX_HEAD = 65536
#: Bytes peeked at first: a poll's head is well under it (a 64 KiB buffer per read
#: would cost more than the parse).
FIRST_PEEK = 8192
#: Most query fields a poll may have (Tornado's default for a query: ``ParseBodyConfig``).
MAX_QUERY_FIELDS = 1000
#: Seconds between sweeps for idle keep-alive connections.
SWEEP_EVERY = 1.0
_FIXED_HEADERS = b"Content-Type: %s\r\nCache-Control: no-store\r\n" % CONTENT_TYPE.encode()


class State(Enum):
    """Where a connection served here is."""

    IDLE = "idle"  # waiting for a request
    SERVING = "serving"  # a poll is open; its answer is not written yet
    WRITING = "writing"  # the answer did not fit in the socket; the rest waits for it
    GONE = "gone"  # closed, or lent to Tornado


class _Head:
    """What ``httptools`` reports of one request head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers = PollHeaders()
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_message_complete(self) -> None:
        self.complete = True


def poll_request(uri: str, version: str, headers: HTTPHeaders) -> HTTPServerRequest | None:
    """The ``HTTPServerRequest`` Tornado would make of a head (its checks of ``Host``
    included), or None when Tornado would refuse it (it is lent to Tornado, which
    answers). The query is parsed once: Tornado's constructor also deep-copies it, and a
    poll reads its arguments once and drops them (``shed_arguments``)."""
    path, _, query = uri.partition("?")
    try:
        request = HTTPServerRequest(start_line=RequestStartLine("GET", path, version), headers=headers)
        arguments = parse_qs_bytes(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except (HTTPInputError, ValueError):
        return None
    request.uri, request.query = uri, query
    request.arguments = request.query_arguments = arguments
    return request


def keeps_alive(version: str, headers: HTTPHeaders) -> bool:
    """Whether a GET's connection stays open after its answer, by Tornado's rule
    (``HTTP1Connection._can_keep_alive``): HTTP/1.1 unless ``Connection: close``,
    HTTP/1.0 only with ``Connection: keep-alive``."""
    connection = headers.get("Connection", "").lower()
    return connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"


class PollServer(HTTPServer):
    """Tornado's ``HTTPServer`` whose connections come here first (see the module).

    Polls are served here only for a plain HTTP ``tornado.web.Application`` without
    ``xheaders`` (the peer address is the socket's) that has a long-poll route (not with
    ``--transports`` without ``longpoll``); otherwise every connection is Tornado's, as
    with ``HTTPServer``."""

    def initialize(self, request_callback: Any, *args: Any, **kwargs: Any) -> None:
        super().initialize(request_callback, *args, **kwargs)
        self.polls_here = (
            isinstance(request_callback, tornado.web.Application)
            and not self.xheaders
            and not self.ssl_options
            and any(isinstance(rule.target, LongPollRouter) for rule in request_callback.wildcard_router.rules)
        )
        self.connections: set[PollConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    # --- connections ------------------------------------------------------------------
    def handle_stream(self, stream: IOStream, address: Any) -> None:
        """A new connection: served here (Tornado's fresh stream is left unused)."""
        if not self.polls_here:
            super().handle_stream(stream, address)
            return
        self.adopt(stream.socket, address)

    def adopt(self, sock: socket.socket, address: Any) -> None:
        """Serve ``sock``'s requests here from now on (a new connection, or one Tornado
        gives back)."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Tornado turns it off after a request
        connection = PollConnection(self, sock, address)
        self.connections.add(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_EVERY, self._sweep)

    def lend(self, connection: PollConnection) -> None:
        """Hand ``connection``'s socket, unread, to Tornado until it gives it back."""
        self.connections.discard(connection)
        lend_to_tornado(self, connection.sock, connection.address, self.adopt)

    def forget(self, connection: PollConnection) -> None:
        self.connections.discard(connection)

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than Tornado would keep them."""
        loop = asyncio.get_running_loop()
        timeout = self.conn_params.header_timeout or 3600.0
        oldest = loop.time() - timeout
        for connection in [c for c in self.connections if c.state is State.IDLE and c.idle_since < oldest]:
            connection.close()
        self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep) if self.connections else None

    async def close_all_connections(self) -> None:
        """Close the connections served here, then Tornado's (``TCPServer.stop`` first)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections):
            connection.close()
        await super().close_all_connections()

    # --- routing ----------------------------------------------------------------------
    def poll_route(self, request: HTTPServerRequest) -> tuple[LongPollRouter, dict[str, str]] | None:
        """The long-poll route Tornado would give ``request``, with its path arguments;
        None when its first matching rule is anything else."""
        application: tornado.web.Application = self.request_callback  # type: ignore[assignment]
        for rule in application.wildcard_router.rules:
            match = rule.matcher.match(request)
            if match is None:
                continue
            if not isinstance(rule.target, LongPollRouter):
                return None
            kwargs = match.get("path_kwargs", {})
            return rule.target, {k: v.decode() if isinstance(v, bytes) else v for k, v in kwargs.items()}
        return None


class PollConnection:
    """One client connection while it is served here (see the module)."""

    __slots__ = (
        "address",
        "fd",
        "idle_since",
        "keep_alive",
        "loop",
        "poll",
        "reading",
        "server",
        "sock",
        "state",
        "unsent",
        "version",
    )

    def __init__(self, server: PollServer, sock: socket.socket, address: Any) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.state = State.IDLE
        self.idle_since = self.loop.time()
        self.poll: Poll | None = None
        self.keep_alive = True
        self.version = "HTTP/1.1"
        self.unsent = memoryview(b"")
        self.reading = True
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(FIRST_PEEK, socket.MSG_PEEK)
            if len(data) == FIRST_PEEK and b"\r\n\r\n" not in data:
                data = self.sock.recv(MAX_HEAD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) its side
            self.close()
            return
        if self.state is not State.IDLE:
            # A pipelined request while a poll is open: it waits, unread, for the answer.
            self.loop.remove_reader(self.fd)
            self.reading = False
            return
        if not data.startswith(b"GET "):
            self._lend()
            return
        end = data.find(b"\r\n\r\n")
        if end < 0:  # not whole yet: Tornado reads it, within its header timeout
            self._lend()
            return
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(data[: end + 4])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, HTTPInputError):
            self._lend()  # Tornado answers what it makes of it (a header it refuses, too)
            return
        if not head.complete:  # a body follows
            self._lend()
            return
        version = "HTTP/" + parser.get_http_version()
        request = poll_request(head.url.decode("latin-1"), version, head.headers)
        route = self.server.poll_route(request) if request is not None else None
        if request is None or route is None:
            self._lend()
            return
        try:
            self.sock.recv(end + 4)  # the head, now read; a pipelined request stays in the socket
        except OSError:
            self.close()
            return
        request.remote_ip = self.address[0] if isinstance(self.address, tuple) else "0.0.0.0"
        self.state = State.SERVING
        self.keep_alive = keeps_alive(version, request.headers)
        self.version = version
        router, path = route
        self.poll = Poll(router.core, request, router.opener, path, self.reply)
        self.poll.start()

    def reply(self, status: int, body: bytes, extra: Sequence[Header]) -> None:
        """The poll's one answer, written in one ``send`` when the socket takes it."""
        if self.state is not State.SERVING:
            return
        self.poll = None
        keep_alive = self.keep_alive and not self.server.conn_params.no_keep_alive  # no_keep_alive: a drain
        self.keep_alive = keep_alive
        head = [
            b"%s %d %s\r\n" % (self.version.encode(), status, responses.get(status, "Unknown").encode()),
            _FIXED_HEADERS,
            b"Content-Length: %d\r\nDate: %s\r\n" % (len(body), http_date().encode()),
        ]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in extra]
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        elif self.version == "HTTP/1.0":
            head.append(b"Connection: Keep-Alive\r\n")
        head += (b"\r\n", body)
        self._send(b"".join(head))

    def _send(self, data: bytes | memoryview) -> None:
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            if self.state is not State.WRITING:
                self.state = State.WRITING
                self.loop.add_writer(self.fd, self._writable)
            self.unsent = memoryview(data)[sent:]
            return
        if self.state is State.WRITING:
            self.loop.remove_writer(self.fd)
        self.unsent = memoryview(b"")
        self._answered()

    def _writable(self) -> None:
        self._send(self.unsent)

    def _answered(self) -> None:
        """The answer is in the socket: the next request, or the end."""
        if not self.keep_alive:
            self.close()
            return
        self.state = State.IDLE
        self.idle_since = self.loop.time()
        if not self.reading:  # a pipelined request is waiting: it is read now
            self.reading = True
            self.loop.add_reader(self.fd, self._readable)

    def _lend(self) -> None:
        self._unregister()
        self.server.lend(self)

    def _unregister(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if self.state is State.WRITING:
            self.loop.remove_writer(self.fd)
        self.state = State.GONE

    def close(self) -> None:
        """End the connection; a poll still open learns that its client is gone."""
        if self.state is State.GONE:
            return
        self._unregister()
        self.server.forget(self)
        poll, self.poll = self.poll, None
        if poll is not None:
            poll.client_gone()
        self.sock.close()
