"""Server-Sent Events transport.

The response opens with an ``id:`` line holding the request's cursor (an execution's
stream; so a browser that reconnects before any event arrived still sends the right
``Last-Event-ID``), ``retry:``, a 2 KiB comment (old proxies flush after a threshold)
and the ``ready`` control message; each event is ``id``/``event``/``data``; control
messages are ``event: control`` without ``id`` so ``Last-Event-ID`` only ever names a
real event. With ``?events=message`` events have no ``event:`` line, so a plain
``EventSource``'s ``onmessage`` sees them all. Heartbeats are ``ping`` control
messages, visible to the page. Errors before the stream starts are ordinary JSON
errors; after it, the session writes an ``error`` control message and the response
ends. A request whose cursor is at or past the end of a finished execution is answered
``204 No Content``, which stops an ``EventSource`` for good.
"""

from __future__ import annotations

import asyncio
import re
from enum import StrEnum
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.routing import Rule

from core.auth import Principal
from core.codec import control, frame_control, http_chunk
from core.errors import bad_request
from core.model import Execution
from core.multiplex import MultiStream
from core.service import Core
from core.session import Session, Source
from core.sources import ExecutionStream
from core.transport import CLIENT_GONE, Disconnect, Encoding, Heartbeat, TransportName
from transports.access_log import log_access
from transports.errors import as_herald_error
from transports.handler import HeraldRequestHandler
from transports.owned_socket import OwnedSocket
from transports.request import STREAM_PATH, STREAMS_PATH, RequestMatches, stream_cursors, wants_event_stream
from transports.tornado_internals import (
    FastWriter,
    break_cycles,
    connection_stream,
    shed_handshake,
    take_socket,
)

NAME = TransportName.SSE
RETRY_MS = 1000
PADDING = b":" + b" " * 2048 + b"\n\n"


class EventNames(StrEnum):
    """How events are named on an execution's stream (``?events=``)."""

    NAMED = "named"  # ``event: <name>``: a page listens with addEventListener(name)
    MESSAGE = "message"  # no ``event:`` line: every event reaches ``onmessage``


def event_names(raw: str) -> EventNames:
    """``?events=`` (empty: the default, named events); a 400 for anything else."""
    try:
        return EventNames(raw or EventNames.NAMED)
    except ValueError:
        raise bad_request("events must be 'named' or 'message'", events=raw) from None


#: The ``event:`` line of an event block (blocks with an ``id:`` are events; control
#: blocks have none). Data is one line of JSON, which escapes every newline.
_EVENT_LINE = re.compile(rb"^(id: \d+\n)event: [^\n]*\n", re.MULTILINE)


def unnamed_events(data: bytes, chunked: bool) -> bytes:
    """``data`` (SSE blocks, in HTTP/1.1 chunks when ``chunked``) with the ``event:``
    line of every event removed, so a browser dispatches each as ``message``.

    Events are framed once per fan-out for every subscriber (``core.codec``), so this
    opt-in costs its subscriber a rewrite per write instead of another frame cache."""
    if not chunked:
        return _EVENT_LINE.sub(rb"\1", data)
    out = bytearray()
    at = 0
    while at < len(data):  # every write is whole chunks: size CRLF payload CRLF
        eol = data.index(b"\r\n", at)
        start = eol + 2
        end = start + int(data[at:eol], 16)
        out += http_chunk(_EVENT_LINE.sub(rb"\1", data[start:end]))
        at = end + 2
    return bytes(out)


def nothing_left(execution: Execution, after: int) -> bool:
    """The execution has ended and a client at ``after`` has every event of it: an
    ``EventSource`` reconnecting after ``complete`` is answered ``204``, its last."""
    return execution.status.terminal and after >= execution.last_seq


#: The end of a chunked response body.
LAST_CHUNK = b"0\r\n\r\n"


class EventStreamTransport:
    """A ``Transport`` over a streaming ``text/event-stream`` response. HTTP/1.1
    responses are chunked, so its frames are SSE blocks inside chunks; an HTTP/1.0
    response is unframed and ends by closing the connection.

    Once the preamble is on the wire, an HTTP/1.1 stream takes its socket from Tornado
    (``own_socket``): the request handler, the HTTP/1 connection and the ``IOStream``
    are freed, writes go to an ``OwnedSocket``, and the stream ends with the last chunk
    and the connection (docs/performance.md, issue 18)."""

    name = NAME
    heartbeat = Heartbeat.CONTROL_MESSAGE
    __slots__ = ("encoding", "handler", "life", "limit", "names", "request", "session", "subject", "writer")

    def __init__(self, handler: HeraldRequestHandler, limit: int, names: EventNames = EventNames.NAMED) -> None:
        self.handler: HeraldRequestHandler | None = handler
        self.request = handler.request
        self.limit = limit
        self.names = names
        # Tornado chunks every HTTP/1.1 response that has no Content-Length.
        self.encoding = Encoding.SSE_CHUNK if handler.request.version == "HTTP/1.1" else Encoding.SSE
        self.writer: FastWriter | OwnedSocket = FastWriter(connection_stream(handler.request), limit)
        self.session: Session | None = None
        self.subject: str | None = None
        #: The session's ``run`` once the socket is owned, held here: the loop keeps tasks weakly.
        self.life: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> bool:
        if self.names is not EventNames.NAMED:
            data = unnamed_events(data, self.encoding is Encoding.SSE_CHUNK)
        return self.writer.write(data)

    def pending_bytes(self) -> int:
        return self.writer.pending()

    def own_socket(self, handler: HeraldRequestHandler, session: Session, source: Source) -> None:
        """Take the socket from Tornado (its preamble is written) and follow ``source``
        on it; ``handler`` returns and is freed."""
        stream = handler.detach()
        sock, _ = take_socket(stream)  # a client sends nothing on an event stream
        self.request.connection = self.request.server_connection = None  # they go with the handler
        break_cycles(handler)  # never finished, so Tornado does not do it
        self.subject = handler.log_subject
        self.handler = None
        self.session = session
        self.writer = OwnedSocket(sock, self.limit, _ignored, self._client_gone)
        self.life = asyncio.ensure_future(session.run(source))

    def _client_gone(self) -> None:
        if self.session is not None:
            self.session.close(CLIENT_GONE)

    def close(self, disconnect: Disconnect) -> None:
        """The session's last call: end the stream, then let go of the session and the
        handler (they hold this transport) so that all are freed by reference counting."""
        try:
            self._end(disconnect)
        finally:
            self.session = None
            self.handler = None

    def _end(self, disconnect: Disconnect) -> None:
        writer = self.writer
        if isinstance(writer, OwnedSocket):
            if disconnect.outcome == "slow":
                writer.abort()  # EventSource reconnects with Last-Event-ID and misses nothing
            elif writer.open:
                writer.close(LAST_CHUNK)
                log_access(200, self.request, NAME.value, self.subject)  # Tornado logs at finish
            return
        stream = writer.stream
        if stream.closed() or self.handler is None:
            return
        if disconnect.outcome == "slow":
            stream.close()  # EventSource reconnects with Last-Event-ID and misses nothing
            return
        sent = self.handler.finish()
        if self.encoding is Encoding.SSE:
            # Neither chunked nor sized: only closing the connection ends the stream.
            sent.add_done_callback(lambda _: stream.close())


def _ignored(data: bytes) -> None:
    """Bytes a client sends on an event stream (a pipelined request): nothing reads them."""


class EventStreamHandler(HeraldRequestHandler):
    """What every Herald SSE response shares: admission, the preamble, the session."""

    session: Session | None = None
    log_transport = NAME.value

    async def stream(
        self, principal: Principal, source: Source, cursor: int | None = None, names: EventNames = EventNames.NAMED
    ) -> None:
        """Admit the connection (errors are still plain HTTP answers), write the
        preamble — headers that stop caches and nginx buffering, ``id: <cursor>`` when
        the stream has one, ``retry:``, padding, ``ready`` — then follow ``source``
        until the connection ends."""
        transport = EventStreamTransport(self, self.core.settings.max_buffer_bytes, names)
        session = self.session = self.core.sessions.open(transport, principal)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        ready = frame_control(control("ready", transport=NAME.value), Encoding.SSE)
        # An ``id:`` line then a blank line sets the browser's last event ID without
        # dispatching anything (WHATWG HTML, "dispatch the event": the ID is taken
        # before an empty data buffer returns), so the first byte carries the cursor.
        position = b"" if cursor is None else b"id: %d\n" % cursor
        self.write(position + b"retry: %d\n\n" % RETRY_MS + PADDING + ready)
        try:
            await self.flush()
        except StreamClosedError:
            session.close(CLIENT_GONE)
        else:
            stream = connection_stream(self.request)
            stream.set_nodelay(True)
            shed_handshake(self)  # headers are on the wire; the stream may last hours
            if transport.encoding is Encoding.SSE_CHUNK and not stream.closed() and not stream.writing():
                transport.own_socket(self, session, source)
                return
        await session.run(source)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.session is None:  # refused before the stream started
            error = as_herald_error(kwargs.get("exc_info", (None, None, None))[1], status_code)
            self.core.sessions.refused(NAME.value, error.code.value)
        super().write_error(status_code, **kwargs)

    def on_connection_close(self) -> None:
        if self.session is not None:
            self.session.close(CLIENT_GONE)


class StreamEvents(EventStreamHandler):
    """Follows one execution's stream as ``text/event-stream``."""

    async def get(self, execution_id: str) -> None:
        names = event_names(self.get_query_argument("events", ""))
        principal = await self.authenticate(stream=True)
        after = self.cursor(header=True)
        execution = await self.core.authorize_follow(principal, execution_id, 0)
        if nothing_left(execution, after):
            self.set_status(204)
            self.finish()
            return
        self.core.check_cursor(execution, after)
        await self.stream(principal, ExecutionStream(self.core, execution, after), after, names)


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_event_stream), StreamEvents, {"core": core})


class StreamsEvents(EventStreamHandler):
    """Follows several executions as one ``text/event-stream`` (``/api/streams``,
    ``s=ID:AFTER`` repeated). ``Last-Event-ID`` cannot carry several cursors: the client
    reopens the request with its own set."""

    async def get(self) -> None:
        principal = await self.authenticate(stream=True)
        requested = stream_cursors(self.request, required=True)
        await self.stream(principal, MultiStream(self.core, requested, closes_when_empty=True))


def streams_rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAMS_PATH, wants_event_stream), StreamsEvents, {"core": core})
